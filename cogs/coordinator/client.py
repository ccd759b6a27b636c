"""The connection to the coordinator: one client per primary, the slot map, the library.

Everything that talks to Redis goes through :class:`Coordinator`, and Redis errors
become cogs errors here, once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis import exceptions as rexc

from cogs.catalog import Catalog, Limits, catalog_diff
from cogs.coordinator.topology import Topology
from cogs.errors import (
    CALL_ERRORS,
    NETWORK_ERRORS,
    CatalogMismatch,
    CogsError,
    ConfigError,
    CoordinatorUnavailable,
    LibraryOutdated,
    from_redis,
)
from cogs.keys import NF_INDEX, Namespace, namespace, nf_problem, slot
from cogs.library import Library, LibrarySpec, assemble, library_spec
from cogs.paths import LOAD_HINT
from cogs.settings import CogsSettings, load_settings

#: NFs besides the default one that ``nfs()`` lists (the monitor shows each)
MAX_NFS = 100


@dataclass(frozen=True, slots=True)
class BatchReply:
    """What one ``cogs_batch`` call returned: per-op errors and results by op index."""

    applied: int
    errors: dict[int, str]
    results: dict[int, Any]


@dataclass(frozen=True)
class NodeLibrary:
    addr: str
    version: str | None
    catalog_digest: str | None
    error: str | None = None


def _pairs(flat: list[Any]) -> dict[int, Any]:
    return {int(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def parse_reply(raw: list[Any]) -> BatchReply:
    errs = {i: (m.decode(errors="replace") if isinstance(m, bytes) else str(m)) for i, m in _pairs(raw[1]).items()}
    return BatchReply(int(raw[0]), errs, _pairs(raw[2]))


class Coordinator:
    """Async connection to a Redis Cluster (or one Redis) running the cogs library.

    Use as ``async with Coordinator(settings) as coord:``. ``topology`` maps slots to
    primaries; ``call_batch`` sends one batch to one primary. ``ns`` names the keys,
    channels and functions of the NF it works for (``settings.nf``).
    """

    def __init__(self, settings: CogsSettings | None = None, **overrides: Any) -> None:
        self.settings = settings or load_settings(**overrides)
        self.ns: Namespace = namespace(self.settings.nf)
        self.load_hint = LOAD_HINT if self.ns.default else f"`cogs catalog load --nf {self.ns.nf} PATH`"
        self.topology: Topology | None = None
        self._clients: dict[str, aioredis.Redis] = {}
        self._seed_pool: aioredis.ConnectionPool | None = None
        self.spec: LibrarySpec = library_spec(self.settings.lua_paths)

    # -- connection ------------------------------------------------------------------

    async def __aenter__(self) -> Coordinator:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        s = self.settings
        try:
            self._seed_pool = aioredis.ConnectionPool.from_url(s.url, **s.connection_kwargs())
        except ValueError as e:
            raise CoordinatorUnavailable(f"bad coordinator URL {s.url!r}: {e}") from e
        await self.refresh()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for c in clients.values():
            await c.aclose(close_connection_pool=True)
        if self._seed_pool is not None:
            await self._seed_pool.disconnect()
            self._seed_pool = None

    def client_at(self, host: str, port: int) -> aioredis.Redis:
        """A client for any node (a replica too), with this coordinator's credentials and TLS."""
        return self._client(host, port)

    def _client(self, host: str, port: int) -> aioredis.Redis:
        addr = f"{host}:{port}"
        c = self._clients.get(addr)
        if c is None:
            assert self._seed_pool is not None, "connect() first"
            kw = {**self._seed_pool.connection_kwargs, "host": host, "port": port}
            pool = aioredis.ConnectionPool(connection_class=self._seed_pool.connection_class, **kw)
            c = self._clients[addr] = aioredis.Redis(connection_pool=pool)
        return c

    async def refresh(self) -> Topology:
        """(Re)read the slot map from the seed or any node known so far."""
        assert self._seed_pool is not None, "connect() first"
        seed_kw = self._seed_pool.connection_kwargs
        seed_host, seed_port = seed_kw.get("host", "127.0.0.1"), int(seed_kw.get("port", 6379))
        candidates = [(seed_host, seed_port)]
        if self.topology:
            candidates += [(n.host, n.port) for n in self.topology.nodes]
            candidates += [r for n in self.topology.nodes for r in n.replicas]
        last: Exception | None = None
        for host, port in dict.fromkeys(candidates):
            try:
                topo = await self._discover(self._client(host, port), host, port)
            except (*NETWORK_ERRORS, CoordinatorUnavailable) as e:
                last = e
                continue
            self.topology = topo
            return topo
        raise CoordinatorUnavailable(
            f"no coordinator node answered at {self.settings.url} (last error: {last})"
        ) from last

    async def _discover(self, c: aioredis.Redis, host: str, port: int) -> Topology:
        try:
            info = await c.info("cluster")
            if not info.get("cluster_enabled"):
                return Topology.standalone(host, port)
            return Topology.from_cluster_slots(await c.execute_command("CLUSTER", "SLOTS"), host)
        except rexc.AuthenticationError as e:
            from cogs.adminauth import describe

            raise CogsError(
                f"coordinator at {host}:{port} refused the connection ({describe(e)}): give credentials "
                "(COGS_USERNAME/COGS_PASSWORD; a locked cluster's admin: COGS_AUTH_FILE=DIR/auth.conf)"
            ) from e
        except rexc.ResponseError as e:
            raise CoordinatorUnavailable(f"{host}:{port}: {e}") from e

    def node_client(self, i: int) -> aioredis.Redis:
        n = self._topo.nodes[i]
        return self._client(n.host, n.port)

    @property
    def _topo(self) -> Topology:
        if self.topology is None:
            raise CoordinatorUnavailable("not connected: use `async with Coordinator(...)`")
        return self.topology

    def alert_stream(self, i: int) -> str:
        """The alert stream that node ``i`` serves (the slot tag of its first slot)."""
        return self.ns.alert_stream(self._topo.nodes[i].first_slot)

    # -- calls ------------------------------------------------------------------------

    async def call_batch(self, node: int, token: str, stream: str, payload: str | bytes) -> BatchReply:
        """One ``FCALL cogs_batch`` on primary ``node``; Redis errors become cogs errors."""
        n = self._topo.nodes[node]
        try:
            raw = await self._client(n.host, n.port).execute_command(
                "FCALL", self.ns.fn_batch, 0, token, stream, payload
            )
        except CALL_ERRORS as e:
            raise self._error(e, n.addr) from e
        return parse_reply(raw)

    def _error(self, e: BaseException, addr: str) -> CogsError:
        err = from_redis(e, addr)
        if isinstance(err, LibraryOutdated) and "not loaded" in str(err) and not self.ns.default:
            return LibraryOutdated(
                f"the library of NF {self.ns.nf} ({self.ns.library}) is not loaded on node {addr}: run {self.load_hint}"
            )
        return err

    async def load_library(self, catalog: Catalog) -> Library:
        """Assemble this NF's library for ``catalog`` (with its limits) and load it on
        every primary; other NFs' libraries are left alone. An NF other than the
        default one is listed in ``cogs!nfs`` (what the monitor shows)."""
        lim = catalog.limits
        lib = assemble(self.spec, catalog.json, catalog.digest, self.ns, lim.ops_per_s,
                       max_keys=lim.max_keys, max_memory=lim.max_memory)  # fmt: skip

        async def load(i: int) -> None:
            n = self._topo.nodes[i]
            try:
                await self.node_client(i).function_load(lib.source, replace=True)
            except rexc.ResponseError as e:
                raise LibraryOutdated(f"node {n.addr} refused the library: {e}") from e
            except NETWORK_ERRORS as e:
                raise CoordinatorUnavailable(f"coordinator node {n.addr}: {e}") from e

        async with anyio.create_task_group() as tg:
            for i in range(len(self._topo.nodes)):
                tg.start_soon(load, i)
        if not self.ns.default:
            index = self.node_client(self._topo.node_of(slot(NF_INDEX)))
            try:
                await index.sadd(NF_INDEX, self.ns.nf)
            except CALL_ERRORS as e:
                raise self._error(e, "holding " + NF_INDEX) from e
        return lib

    async def nfs(self) -> list[str]:
        """The NFs whose libraries were loaded on this cluster (the default one first, then
        at most MAX_NFS others). Only the admin writes the index (``cogs!nfs``); a member
        that is no NF name is left out all the same."""
        index = self.node_client(self._topo.node_of(slot(NF_INDEX)))
        try:
            listed = await index.smembers(NF_INDEX)
        except CALL_ERRORS as e:
            raise self._error(e, NF_INDEX) from e
        names = (m.decode("latin-1") if isinstance(m, bytes) else str(m) for m in listed)  # non-ASCII: no NF
        return ["default", *sorted(nf for nf in names if nf != "default" and nf_problem(nf) is None)[:MAX_NFS]]

    async def unload_library(self, *, delete_keys: bool = False, force: bool = False,
                             progress: Callable[[str], None] = lambda _: None) -> int:  # fmt: skip
        """Take this NF off the cluster (the admin): its library from every primary, its
        name from the NF index and, with ``delete_keys``, every key of its namespace and
        its usage counts (returns how many were deleted). Refused for the default NF, and
        while proxies of the NF beat (in the last minute) unless ``force``."""
        if self.ns.default:
            raise ConfigError("the default NF cannot be unloaded: load another catalog for it instead")
        index = self.node_client(self._topo.node_of(slot(self.ns.proxy_index)))
        try:
            alive = await index.zcount(self.ns.proxy_index, int((time.time() - 60) * 1000), "+inf")
        except CALL_ERRORS as e:
            raise self._error(e, self.ns.proxy_index) from e
        if alive and not force:
            raise CogsError(f"NF {self.ns.nf} has {alive} prox{'y' if alive == 1 else 'ies'} that beat in the last "
                            "minute: stop them first (or --force: they get 'library not loaded' errors)")  # fmt: skip
        deleted = 0
        for i, n in enumerate(self._topo.nodes):
            c = self.node_client(i)
            try:
                await c.execute_command("FUNCTION", "DELETE", self.ns.library)
            except rexc.ResponseError as e:
                if "not found" not in str(e).lower():
                    raise self._error(e, n.addr) from e
            except CALL_ERRORS as e:
                raise self._error(e, n.addr) from e
            if delete_keys:
                for pattern in (f"{self.ns.prefix}*", f"{self.ns.usage_prefix}*"):
                    cursor: Any = 0
                    while True:
                        try:
                            cursor, keys = await c.scan(cursor, match=pattern, count=1000)
                            if keys:  # one UNLINK each: the keys of a page are of many slots
                                async with c.pipeline(transaction=False) as pipe:
                                    for k in keys:
                                        pipe.unlink(k)
                                    deleted += sum(int(x) for x in await pipe.execute())
                        except CALL_ERRORS as e:
                            raise self._error(e, n.addr) from e
                        if int(cursor) == 0:
                            break
                progress(f"{n.addr}: library {self.ns.library} deleted, {deleted:,} key(s) deleted so far")
            else:
                progress(f"{n.addr}: library {self.ns.library} deleted")
        try:
            await self.node_client(self._topo.node_of(slot(NF_INDEX))).srem(NF_INDEX, self.ns.nf)
        except CALL_ERRORS as e:
            raise self._error(e, NF_INDEX) from e
        return deleted

    async def node_info(self, i: int, ns: Namespace | None = None) -> dict[str, Any]:
        """The ``cogs_info`` of primary ``i`` (library version, catalog, types, limits)
        for NF ``ns`` (default: this Coordinator's)."""
        n = self._topo.nodes[i]
        ns = ns or self.ns
        try:
            raw = await self.node_client(i).execute_command("FCALL_RO", ns.fn_info, 0)
        except CALL_ERRORS as e:
            err = from_redis(e, n.addr)
            if isinstance(err, LibraryOutdated) and "not loaded" in str(err) and not ns.default:
                err = LibraryOutdated(
                    f"the library of NF {ns.nf} ({ns.library}) is not loaded on node {n.addr}: "
                    f"run `cogs catalog load --nf {ns.nf} PATH`"
                )
            raise err from e
        info: dict[str, Any] = json.loads(raw)
        return info

    async def library_status(self) -> list[NodeLibrary]:
        """Library version and catalog digest on every primary (None where missing)."""
        out: list[NodeLibrary] = []
        for i, n in enumerate(self._topo.nodes):
            try:
                info = await self.node_info(i)
            except LibraryOutdated as e:
                out.append(NodeLibrary(n.addr, None, None, str(e)))
            else:
                out.append(NodeLibrary(n.addr, info["version"], info["catalog_digest"]))
        return out

    async def stored_catalog(self, expected: Catalog | None = None) -> tuple[Catalog, str]:
        """The catalog every primary runs, and the library token to send with batches.

        Raises :class:`LibraryOutdated` when a node lacks the library, runs another
        library version than this package, or nodes disagree; :class:`CatalogMismatch`
        when ``expected`` differs from the stored catalog.
        """
        infos = [await self.node_info(i) for i in range(len(self._topo.nodes))]
        tokens = {f"{x['version']}:{x['catalog_digest']}" for x in infos}
        hint = self.load_hint
        if len(tokens) > 1:
            raise LibraryOutdated(
                f"coordinator nodes run different cogs libraries {sorted(tokens)}: reload it with " + hint
            )
        info = infos[0]
        if info["version"] != self.spec.version:
            raise LibraryOutdated(
                f"coordinator runs cogs library {info['version']}, this process has "
                f"{self.spec.version}: reload it with {hint} (or upgrade this proxy)"
            )
        stored = Catalog.from_wire(json.loads(info["catalog_json"]), self.spec)
        stored.limits = Limits.model_validate(info.get("limits") or {})
        if stored.digest != info["catalog_digest"]:
            raise LibraryOutdated(
                f"the stored catalog does not rebuild to its digest {info['catalog_digest']} "
                f"(got {stored.digest}): reload it with " + hint
            )
        if expected is not None and expected.digest != stored.digest:
            raise CatalogMismatch(
                f"the catalog given ({expected.digest}) differs from the one the coordinator "
                f"stores ({stored.digest}): {catalog_diff(stored, expected)}. Load it with "
                f"{hint.replace('PATH', 'FILE')} or start without a catalog to use the stored one."
            )
        return stored, f"{self.spec.version}:{stored.digest}"

    @property
    def nodes(self) -> Sequence[str]:
        return [n.addr for n in self._topo.nodes]
