"""The keeper: counts each NF's keys and bytes on every primary for its usage limits.

Redis can count neither per key prefix, and an NF's proxies may not list the keyspace
(SCAN would show them every NF's key names: cogs/acl.py). So an admin process walks
each primary's keyspace (``SCAN MATCH cogs*``, ``MEMORY USAGE`` of every key of an NF
with ``max_keys``/``max_memory``) and writes what it found into the NF's usage record
on that node, ``cogs!usage[@<nf>]:{tag}`` (tag: the node's first slot, the one its
proxies name in their batches), a key the NF's users may read and never write.

A pass notes first how far the library's count of what it created had got
(``<prefix>created:{tag}``); the library adds what it creates after that to the
count (lua/api.lua, usage limits), so an entry created during a pass may be counted
twice until the next one (refused early, never late), and entries that expired,
were deleted or moved to another node are credited at the next pass. A forged count
in the NF's own keys lasts one pass at most: the keeper's count is outside them.

Cost: one ``SCAN`` of every key and one ``MEMORY USAGE`` per key of a limited NF,
per pass; passes are spaced so the walk takes at most ``1/(1+SPACING)`` of the time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from cogs.catalog import Limits
from cogs.coordinator.topology import NodeInfo, Topology
from cogs.errors import CogsError
from cogs.keys import NF_INDEX, Namespace, namespace, nf_problem, slot
from cogs.protocol import LIBRARY

log = logging.getLogger("cogs.keeper")

SCAN_COUNT = 1000
#: a pass waits at least this many times its own length before the next one
SPACING = 4.0
DEFAULT_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Tenant:
    """An NF with usage limits: its names, its states' key prefixes."""

    ns: Namespace
    limits: Limits
    state_prefixes: tuple[bytes, ...]

    def is_entry(self, key: bytes) -> bool:
        """A state entry (its main key), not a marker or replica key next to it or bookkeeping."""
        return key.endswith(b"}") and key.startswith(self.state_prefixes)


@dataclass
class Usage:
    """What one pass found of one NF on one primary."""

    nf: str
    node: str
    keys: int = 0
    bytes: int = 0
    limits: Limits = field(default_factory=Limits)

    def as_dict(self) -> dict[str, Any]:
        return {"nf": self.nf, "node": self.node, "keys": self.keys, "bytes": self.bytes,
                "max_keys": self.limits.max_keys, "max_memory": self.limits.max_memory}  # fmt: skip


@dataclass
class Pass:
    usages: list[Usage]
    seconds: float
    failed: dict[str, str]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Keeper:
    """Counts usage with ``client(host, port)`` admin connections (redis-py, sync)."""

    def __init__(self, client: Callable[[str, int], redis.Redis], seed: tuple[str, int]) -> None:
        self._client, self.seed = client, seed
        self.passes = 0

    def topology(self) -> Topology:
        c = self._client(*self.seed)
        try:
            return Topology.from_cluster_slots(c.execute_command("CLUSTER", "SLOTS"), self.seed[0])
        except redis.ResponseError as e:
            if "cluster support disabled" in str(e):
                return Topology.standalone(*self.seed)
            raise

    def tenants(self, topo: Topology) -> list[Tenant]:
        """The NFs loaded whose catalogs set max_keys or max_memory: those of the NF index
        and of the function libraries on the first primary (an admin's FLUSHALL empties
        the index, never the libraries: their NFs run on and are counted on)."""
        first = topo.nodes[0]
        c = self._client(first.host, first.port)
        names = {"default"}
        try:
            owner = topo.nodes[topo.node_of(slot(NF_INDEX))]
            names |= {_s(n) for n in self._client(owner.host, owner.port).smembers(NF_INDEX)}
        except redis.RedisError as e:
            log.warning("keeper: cannot read the NF index %s: %s", NF_INDEX, e)
        try:
            for raw in c.execute_command("FUNCTION", "LIST"):
                # redis-py parses the reply into a dict, or leaves name, value, ... pairs
                lib = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=False))
                name = _s(lib.get(b"library_name", lib.get("library_name", b"")))
                if name.startswith(LIBRARY + "_"):
                    names.add(name[len(LIBRARY) + 1 :])
        except (redis.RedisError, TypeError) as e:
            log.warning("keeper: cannot list the function libraries on %s: %s", first.addr, e)
        out = []
        for nf in sorted(names):
            if nf_problem(nf):
                continue  # junk in the index: not an NF cogs made
            ns = namespace(nf)
            try:
                info = json.loads(c.execute_command("FCALL_RO", ns.fn_info, 0))
                limits = Limits.model_validate(info.get("limits") or {})
                states = [s["name"] for s in json.loads(info["catalog_json"])["states"]]
            except (redis.RedisError, ValueError, KeyError, TypeError) as e:
                log.debug("keeper: NF %s has no readable library on %s: %s", nf, first.addr, e)
                continue
            if limits.usage:
                prefixes = tuple(f"{ns.prefix}{s}:{{".encode() for s in states)
                out.append(Tenant(ns, limits, prefixes))
        return out

    def count(self) -> Pass:
        """One pass over every primary."""
        t0 = time.monotonic()
        topo = self.topology()
        tenants = self.tenants(topo)
        usages: list[Usage] = []
        failed: dict[str, str] = {}
        if tenants:
            for node in topo.nodes:
                try:
                    usages += self.count_node(node, tenants)
                except (redis.RedisError, OSError) as e:
                    failed[node.addr] = str(e)
                    log.warning("keeper: could not count on %s: %s", node.addr, e)
        self.passes += 1
        return Pass(usages, time.monotonic() - t0, failed)

    def count_node(self, node: NodeInfo, tenants: list[Tenant]) -> list[Usage]:
        c = self._client(node.host, node.port)
        streams = {t.ns.nf: t.ns.alert_stream(node.first_slot) for t in tenants}  # each NF's names
        # how far each library's own count had got: what it creates from now on is added to
        # ours. Read apart: junk one NF's proxy user wrote in its record (another type)
        # counts as 0 for that NF, never stops the count of the others
        pipe = c.pipeline(transaction=False)
        for t in tenants:
            pipe.hmget(t.ns.created_key(streams[t.ns.nf]), "k", "b")
        created = [r if isinstance(r, list) else [None, None] for r in pipe.execute(raise_on_error=False)]
        usage = {t.ns.prefix.encode(): Usage(t.ns.nf, node.addr, limits=t.limits) for t in tenants}
        by_prefix = {t.ns.prefix.encode(): t for t in tenants}
        records = {t.ns.usage_key(streams[t.ns.nf]).encode() for t in tenants}
        stale: list[bytes] = []
        cursor = 0
        while True:
            cursor, keys = c.scan(cursor, match="cogs*", count=SCAN_COUNT)
            names = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
            stale += [k for k in names if k.startswith(b"cogs!usage") and k not in records]
            mine = [(k, by_prefix[p]) for k in names if (p := _prefix_of(k)) is not None and p in by_prefix]
            if mine:
                pipe = c.pipeline(transaction=False)
                for k, _ in mine:
                    pipe.memory_usage(k)
                for (k, t), size in zip(mine, pipe.execute(raise_on_error=False), strict=True):
                    if not isinstance(size, int):
                        continue  # gone since the SCAN
                    u = usage[t.ns.prefix.encode()]
                    u.bytes += size
                    u.keys += t.is_entry(k)
            if int(cursor) == 0:
                break
        sec, usec = c.time()
        now = sec * 1000 + usec // 1000
        pipe = c.pipeline(transaction=False)
        for t, (ck, cb) in zip(tenants, created, strict=True):
            u = usage[t.ns.prefix.encode()]
            pipe.hset(t.ns.usage_key(streams[t.ns.nf]), mapping={
                "k": u.keys, "b": u.bytes, "ck": _count(ck), "cb": _count(cb), "t": now, "pass": self.passes,
            })  # fmt: skip
        for k in stale:  # records of another lowest slot (before a slot move) or of an NF no longer limited
            pipe.delete(k)
        pipe.execute()
        return list(usage.values())

    def run(
        self, stop: threading.Event, interval: float = DEFAULT_INTERVAL_S,
        report: Callable[[Pass], None] | None = None, on_fail: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """Count until ``stop`` is set: every ``interval`` seconds, or SPACING times a
        pass's length if that is longer (so the walk takes a bounded share of the nodes)."""
        while not stop.is_set():
            try:
                p = self.count()
            except (CogsError, redis.RedisError, OSError) as e:
                log.warning("keeper: pass failed: %s", e)
                if on_fail:
                    on_fail()  # e.g. connect again with credentials read again
                stop.wait(interval)
                continue
            if report:
                report(p)
            stop.wait(max(interval - p.seconds, SPACING * p.seconds))


def _count(v: Any) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return 0  # absent, or junk the library resets (lua/api.lua)
    return n if n >= 0 else 0


def _prefix_of(key: bytes) -> bytes | None:
    """``cogs:`` or ``cogs@<nf>:`` (the NF namespace a key is in), else None."""
    if key.startswith(b"cogs:"):
        return b"cogs:"
    if key.startswith(b"cogs@"):
        end = key.find(b":", 5)
        return key[: end + 1] if end > 5 else None
    return None


def summary(usages: Iterable[Usage]) -> dict[str, dict[str, Any]]:
    """Per NF: keys and bytes over all primaries, and the fullest primary against the limits."""
    out: dict[str, dict[str, Any]] = {}
    for u in usages:
        s = out.setdefault(u.nf, {"keys": 0, "bytes": 0, "primaries": 0, "fullest_keys": 0, "fullest_bytes": 0,
                                  "max_keys": u.limits.max_keys, "max_memory": u.limits.max_memory})  # fmt: skip
        s["keys"] += u.keys
        s["bytes"] += u.bytes
        s["primaries"] += 1
        s["fullest_keys"] = max(s["fullest_keys"], u.keys)
        s["fullest_bytes"] = max(s["fullest_bytes"], u.bytes)
    return out


