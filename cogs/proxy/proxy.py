"""StateProxy: the library each middlebox embeds to reach the global states.

Paper API -> cogs:

=====================================================  ====================================
``Update(key, op, ΔS)``                                ``proxy.update(state, key, op, delta)``
``SynUp(key, op, ΔS)``                                 ``await proxy.syn_up(state, key, op, delta)``
``SynRetrieve(key, op)``                               ``await proxy.syn_retrieve(state, key, op)``
``Check(key, op)``                                     ``await proxy.syn_check(state, key, op, arg)``
``AsynUp(key, op, ΔS, Callback, Packet)``              ``proxy.asyn_up(state, key, op, delta, callback, packet)``
``AsynRetrieve(key, op, Callback, Packet)``            ``proxy.asyn_retrieve(state, key, op, callback, packet)``
=====================================================  ====================================

``update`` returns at once (the trigger hot path; coalesced and batched). The async
forms return at once too and call ``callback(state, packet)`` when the state is back;
waiting packets sit in the packet buffer table (requests.py), keyed by state key, and
callbacks of one key run in arrival order. Reads of a key already queued or in flight
are shared. Direct states in replica mode are served from the proxy's replica cache
when it holds them; the coordinator discards replicas on update (cache.py).

The rooms: batcher.py (buffers, flushes), delivery.py (ordered exactly-once channels),
requests.py (who waits for what), cache.py + discard.py (replicas), entries.py
(portmap's entry ops), indirect.py + peer/ (values that stay on proxies), registry.py
(heartbeat, cleanup). This module wires them and holds the public API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import anyio
from redis.exceptions import NoPermissionError

from cogs.catalog import Catalog
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Schema
from cogs.errors import CogsError, ConfigError, CoordinatorUnavailable, ProxyClosed, UnknownOp, refuse
from cogs.keys import nf_problem, proxy_id_problem
from cogs.logs import fields
from cogs.protocol import Mode
from cogs.proxy.batcher import Backpressure, Batcher
from cogs.proxy.cache import MISS, ReplicaCache
from cogs.proxy.discard import DiscardHook, DiscardLink
from cogs.proxy.entries import EntryOps
from cogs.proxy.indirect import Indirect, Loader
from cogs.proxy.keylocks import KeyLocks
from cogs.proxy.lanes import Lane, coalesce_kinds
from cogs.proxy.registry import Registry
from cogs.proxy.requests import Callback, ErrorCallback, RequestTable
from cogs.proxy.stats import NO_INDIRECT, ProxyStatistics
from cogs.proxy.submit import Submitter
from cogs.settings import CogsSettings, load_settings
from cogs.values import type_adapter

if TYPE_CHECKING:
    from cogs.metrics.server import MetricsServer

log = logging.getLogger("cogs.proxy")
UpdateFn = Callable[[str, str, str, Any], None]


class StateProxy:
    """``async with StateProxy(url) as proxy:`` — a middlebox's handle on global states.

    ``proxy.update(state, key, op, delta=1)`` is the trigger hot path (an attribute
    bound to the batcher, so a call costs one Python call). It raises
    :class:`Backpressure` when the buffer is full; ``await proxy.aupdate(...)`` waits.
    Errors the coordinator reports for updates go to ``on_error(error, packet)`` (and
    the log, and ``statistics().errors``): never silently dropped.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        nf: str | None = None,
        settings: CogsSettings | None = None,
        catalog: Catalog | str | Path | None = None,
        proxy_id: str | None = None,
        batch_max_ops: int = 2000,
        batch_delay_ms: float = 0.5,
        max_pending: int = 200_000,
        heartbeat_ttl_s: float = 10.0,
        durable: bool | None = None,
        peer_secret: str | None = None,
        on_error: ErrorCallback | None = None,
        metrics_port: int | None = None,
    ) -> None:
        # nf: the NF this proxy works for, on a cluster several share (default: COGS_NF)
        self.settings = settings or load_settings(url=url, nf=nf)
        if nf is not None and self.settings.nf != nf:
            if problem := nf_problem(nf):
                raise ConfigError(f"bad NF name {problem}")
            self.settings = self.settings.model_copy(update={"nf": nf})
        # Prometheus metrics of this proxy's statistics (cogs.metrics.proxy): opt-in
        self._metrics_port = self.settings.metrics_port if metrics_port is None else metrics_port
        self._metrics: MetricsServer | None = None
        if not 0 < batch_delay_ms <= 1000 or batch_max_ops < 1 or max_pending < batch_max_ops:
            raise CogsError("need 0 < batch_delay_ms <= 1000, batch_max_ops >= 1, max_pending >= batch_max_ops")
        host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname()[:24])
        self.id = proxy_id or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if problem := proxy_id_problem(self.id):  # the library refuses batches naming another
            raise ConfigError(f"bad proxy id {problem}")
        self.coord = Coordinator(self.settings)
        # checked against the types of this proxy's settings (their lua_paths), not the default ones
        self._expected = Catalog.from_file(catalog, self.coord.spec) if isinstance(catalog, str | Path) else catalog
        self._opts = (batch_max_ops, batch_delay_ms / 1000, max_pending)
        self._heartbeat_ttl = heartbeat_ttl_s
        # durable: a batch counts as applied only once a replica has it (WAIT), so an
        # acknowledged update survives the loss of its primary
        self._durable = self.settings.durable if durable is None else durable
        self._on_error = on_error or self._log_error
        self._peer_secret = peer_secret
        self.cache = ReplicaCache()
        self.catalog: Catalog
        self.update: UpdateFn
        self.entries: EntryOps
        self._batcher: Batcher
        self._requests: RequestTable
        self._submit: Submitter
        self._discard: DiscardLink
        self._registry: Registry
        self._schema: Schema
        self._indirect: Indirect | None = None
        self._indirect_states: frozenset[str] = frozenset()
        self._async_locks = KeyLocks()  # async indirect ops of one key: callbacks in arrival order
        self._async_ops = 0
        self._async_indirect = 0  # indirect async ops running
        self._open = False
        self._logged_errors = 0
        self._beating: asyncio.Task[Any] | None = None
        self._in_beat = False
        self._last_beat = (0.0, 0)  # (monotonic time, ops sent) at the last heartbeat: its ops/s

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.coord.connect()
        try:
            await self._start()
        except BaseException:
            await self._teardown()
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        self.catalog, token = await self.coord.stored_catalog(self._expected)
        self._schema = Schema(self.catalog)
        self._indirect_states = frozenset(st.name for st in self.catalog if st.state_class == "indirect")
        replicated = [st for st in self.catalog if st.state_class == "direct" and st.mode == "replica"]
        kinds = {st.name: self.catalog.spec.types[st.type] for st in replicated}
        holds = {name: type_adapter(t.name).replicas or t.replicas for name, t in kinds.items()}
        replica_whole = {name: t.whole for name, t in kinds.items() if holds[name] == "whole"}
        self._requests = RequestTable(self.cache, replica_whole, self._on_error)
        bmax, delay, maxp = self._opts
        b = self._batcher = Batcher(
            self.coord, token, self.id, self._requests, batch_max_ops=bmax, delay=delay, max_pending=maxp,
            durable=self._durable, durable_timeout=s.durable_timeout_s, command_timeout=s.command_timeout_s,
            delivery_timeout=s.delivery_timeout_s, reroute_timeout=s.reroute_timeout_s, on_error=self._on_error,
        )  # fmt: skip
        b.lane_factory = self._new_lane
        self.update = b.update
        self._submit = Submitter(b, self._requests, self._schema)
        self.entries = EntryOps(self._submit, self._schema, frozenset(n for n, h in holds.items() if h == "entries"))
        b._loop = asyncio.get_running_loop()
        self._discard = DiscardLink(self.coord, self.id, self.cache)
        ready = asyncio.Event()
        link = b.spawn(self._discard.run(ready))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([waiter, link], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if link.done():  # the discard link could not start: say why
            exc = link.exception()
            if isinstance(exc, NoPermissionError):  # an ACL user of another NF, say
                raise CogsError(
                    f"cannot subscribe to {self._discard.channel}: {exc} (is {self.settings.nf!r}, COGS_NF, the NF "
                    "of this ACL user?)"
                ) from exc
            raise exc or CoordinatorUnavailable("discard link ended")
        b.spawn(b.run())
        b.spawn(b.delivery.watch())
        self._registry = Registry(self.coord, self.id, self._heartbeat_ttl, self._beat_info)
        self._registry.on_superseded = self.cache.drop_all  # its holder entries went with the takeover
        self._discard.own_run = self._registry.run.encode()  # its own release's DROP_ALL is not for it
        await self._registry.release(self.id)  # an earlier process with this id held replicas: not this one
        if self._indirect_states:
            secret = self._peer_secret or (s.peer_secret.get_secret_value() if s.peer_secret else None)
            if secret and self._heartbeat_ttl <= s.peer_timeout_s:
                raise ConfigError(
                    f"indirect states need heartbeat_ttl_s ({self._heartbeat_ttl:g}) > COGS_PEER_TIMEOUT_S "
                    f"({s.peer_timeout_s:g}): an owner's lease must outlast a peer request"
                )
            self._indirect = Indirect(
                self.id, self.catalog, self.coord, self.cache, self._submit, secret=secret, host=s.peer_host,
                port=s.peer_port, timeout=s.peer_timeout_s, max_bytes=s.max_owned_bytes,
                lease_s=self._heartbeat_ttl - s.peer_timeout_s,
            )  # fmt: skip
            self._registry.on_beat = self._indirect.renew
            self._discard.hooks.append(self._indirect.discarded)  # reads under way take nothing older
            if self._indirect.server is not None:
                await self._indirect.server.start()
                b.spawn(self._indirect.server.serve())
        if self._metrics_port is not None:
            from cogs.metrics.proxy import serve

            self._metrics = serve(self, self.settings.metrics_host, self._metrics_port)
        await self._registry.beat(take=True)
        self._open = True
        self._beating = b.spawn(self._heartbeat())

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, *, drain_timeout: float = 5.0) -> None:
        """Send what is pending (up to ``drain_timeout``), unregister, close links.

        Proxies may be closed in any order: their background tasks are plain tasks
        owned by the proxy, cancelled and awaited here.
        """
        if self._open:
            self._open = False
            self._batcher.close_intake()  # ops issued from now on: ProxyClosed; pending ones go on
            with anyio.move_on_after(drain_timeout):
                try:
                    await self._batcher.drain()
                except CogsError as e:
                    log.warning("proxy %s closing: %s", self.id, e, extra=fields(proxy=self.id))
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._stop_beating()
                await self._registry.unregister(list(self._batcher.delivery.channels), self._batcher.delivery.session)
        await self._teardown()

    async def _teardown(self) -> None:
        if self._metrics is not None:
            from cogs.metrics.proxy import unserve

            server, self._metrics = self._metrics, None
            await anyio.to_thread.run_sync(unserve, self, server)  # waits for the server thread
        if hasattr(self, "_batcher"):
            await self._batcher.aclose()
        if self._indirect is not None:
            await self._indirect.aclose()
        await self.coord.aclose()

    # -- heartbeat ---------------------------------------------------------------------------

    def _beat_info(self) -> dict[str, Any]:
        stats = self.statistics()
        now = time.monotonic()
        prev_t, prev_sent = self._last_beat
        rate = (stats.ops_sent - prev_sent) / (now - prev_t) if prev_t else None
        self._last_beat = (now, stats.ops_sent)
        info: dict[str, Any] = {"stats": stats.__dict__, "ops_per_s": rate}
        if self._indirect is not None:  # how other proxies reach the indirect states this one owns
            info.update(peer=self._indirect.address, inc=self._indirect.inc)
        if self._metrics is not None:  # where Prometheus scrapes this proxy
            info["metrics"] = self._metrics.address
        return info

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat_ttl / 3)
            if self._indirect is not None:
                self._indirect.sweep()
            if not self._open:
                return
            self._in_beat = True
            try:
                await self._registry.tick()
            finally:
                self._in_beat = False

    async def _stop_beating(self) -> None:
        """No heartbeat after this: a beat in flight is let finish (cancelled, its ZADD
        might still land after the unregistering ZREM and list a closed proxy again)."""
        task = self._beating
        if task is None:
            return
        if not self._in_beat:
            task.cancel()
        await asyncio.wait([task])

    # -- validation ----------------------------------------------------------------------

    def _new_lane(self, state: str) -> Lane:
        st, ts, sidx = self._schema.state(state)
        kinds = coalesce_kinds(type_adapter(ts.name).coalesce or ts.coalesce, ts.update)
        if st.state_class != "trigger":  # no merging: reads must see each update in order
            kinds = dict.fromkeys(kinds, 0)
        replica = st.state_class == "direct" and st.mode == "replica"
        lane = self._batcher.lanes[state] = Lane(state, sidx, kinds, st, replica=replica)
        return lane

    # -- the paper's operations ---------------------------------------------------------------

    def has_room(self, ops: int = 1) -> bool:
        """False when ``ops`` new ops would not fit (``update`` would raise Backpressure)."""
        return self._batcher.has_room(ops)

    async def wait_room(self, ops: int = 1) -> None:
        """Wait until ``ops`` new ops fit in the buffer (flushes made progress), at most
        ``COGS_DELIVERY_TIMEOUT_S``: then :class:`Backpressure` (the coordinator does not answer)."""
        if not self._batcher.has_room(ops) or self._batcher.closed:
            await self._batcher.wait_room(ops)

    async def aupdate(self, state: str, key: str, op: str, delta: Any = 1) -> None:
        """``update`` that waits for room (for ``key``: on its node's channel too)
        instead of raising Backpressure, at most the delivery bound."""
        if not self._batcher.has_room(1, key) or self._batcher.closed:
            await self._batcher.wait_room(1, key)
        self.update(state, key, op, delta)

    async def syn_up(self, state: str, key: str, op: str, delta: Any = None) -> Any:
        """SynUp: apply the update at the coordinator and return the new state (an
        indirect state: at its owner proxy, or here when it has none yet)."""
        if state in self._indirect_states:
            return await self._indirect_or_fail().update(state, key, op, delta)
        return await self._submit.wait(self._submit.make(Mode.UPDATE_GET, state, key, op, delta))

    async def syn_retrieve(
        self, state: str, key: str, op: str | None = None, arg: Any = None, *, load: Loader | None = None
    ) -> Any:
        """SynRetrieve: the state (``op`` defaults to the whole state), from the replica
        cache when this proxy holds a valid replica.

        ``load`` (indirect states): read through. When nobody has the key, this proxy
        takes it in the same coordinator call and keeps what ``await load()`` returns
        (bytes; None keeps nothing); readers elsewhere wait for that value meanwhile."""
        if self._batcher.closed:
            raise ProxyClosed(f"the proxy is closed: retrieve of {state} refused")
        if state in self._indirect_states:
            if op not in (None, "get") or arg is not None:
                raise refuse(UnknownOp, "indirect states are read whole (op get)", state=state, op=op)
            return await self._indirect_or_fail().retrieve(state, key, load)
        if load is not None:
            raise refuse(UnknownOp, "load= (read-through) is for indirect states", state=state, op=op)
        whole = self._requests.replica_whole.get(state)
        if whole is not None and arg is None and (op is None or op == whole):
            sidx = self._schema.index[state]
            if not self._requests.waiting(sidx, key):  # earlier packets of the key go first
                v = self.cache.get((sidx, key))
                if v is not MISS:
                    return v
        return await self._submit.wait(self._submit.make(Mode.RETRIEVE, state, key, op, arg))

    async def syn_check(self, state: str, key: str, op: str = "checker", arg: Any = None) -> bool:
        """Check: evaluate a predicate, or the state's checker, at the coordinator."""
        return bool(await self._submit.wait(self._submit.make(Mode.CHECK, state, key, op, arg)))

    def asyn_up(self, state: str, key: str, op: str, delta: Any, callback: Callback, packet: Any = None) -> None:
        """AsynUp: returns at once; ``callback(new_state, packet)`` runs when applied."""
        if state in self._indirect_states:
            self._run_indirect(state, key, callback, packet, self._indirect_or_fail().update(state, key, op, delta))
            return
        req = self._submit.make(Mode.UPDATE_GET, state, key, op, delta)
        self._async_ops += 1
        self._requests.hold(req, callback, packet)
        self._batcher.submit(req, now=False)

    def asyn_retrieve(
        self, state: str, key: str, op: str | None, callback: Callback, packet: Any = None, arg: Any = None
    ) -> None:
        """AsynRetrieve: returns at once; ``callback(state, packet)`` runs when the state is
        back (at once on a replica hit, unless packets of the key are still waiting)."""
        if state in self._indirect_states:
            self._run_indirect(state, key, callback, packet, self._indirect_or_fail().retrieve(state, key))
            return
        req = self._submit.make(Mode.RETRIEVE, state, key, op, arg)
        self._async_ops += 1
        requests = self._requests
        if arg is None:
            shared = requests.shared_read(req.sidx, key, req.op)
            if shared is not None:  # wait on the same round trip
                requests.hold(shared, callback, packet)
                return
        if self._submit.replicated(req) and not requests.waiting(req.sidx, key):
            # a replica hit answers at once, unless earlier packets of the key still wait
            v = self.cache.get((req.sidx, key))
            if v is not MISS:
                requests.call(callback, v, packet)
                return
        requests.hold(req, callback, packet)
        self._submit.send(req, now=False)

    def update_ops(self, state: str) -> dict[str, int]:
        """The update ops of ``state`` -> how pending ones merge (lanes.py: SUM, UNION,
        MAPSUM, NONE): for callers that check updates before handing them over."""
        lane = self._batcher.lanes.get(state) or self._new_lane(state)
        return dict(lane.kinds)

    @property
    def peer_address(self) -> str:
        """Where this proxy serves the indirect states it owns ("" when it serves none)."""
        return self._indirect.address if self._indirect is not None else ""

    def cached(self, state: str, key: str) -> Any:
        """The replica this proxy holds for ``state[key]`` (or, indirect, owns), or ``MISS``."""
        sidx = self._schema.index.get(state)
        if sidx is None:
            return MISS
        if self._indirect is not None and state in self._indirect_states:
            own = self._indirect._local((sidx, key))
            if own is not None and own.value is not None:  # (None: being loaded)
                return own.value
        return self.cache.get((sidx, key))

    # -- indirect states -------------------------------------------------------------------

    def _indirect_or_fail(self) -> Indirect:
        if self._batcher.closed:
            raise ProxyClosed("the proxy is closed: indirect op refused")
        if self._indirect is None:
            raise CogsError("the proxy is not open: use `async with StateProxy(...)`")
        return self._indirect

    def _run_indirect(self, state: str, key: str, callback: Callback, packet: Any, op: Awaitable[Any]) -> None:
        """Run an indirect op in the background; callbacks of one key in arrival order."""
        self._async_ops += 1
        k = (self._schema.index[state], key)
        self._async_indirect += 1

        async def run() -> None:
            async with self._async_locks.hold(k):
                try:
                    value = await op
                except CogsError as e:
                    self._on_error(e, packet)
                else:
                    self._requests.call(callback, value, packet)
                finally:
                    self._async_indirect -= 1

        self._batcher.spawn(run())

    async def flush(self) -> None:
        """Wait until every op issued before this call has been applied at the
        coordinator (or failed: errors go to on_error), not for ops issued meanwhile;
        ``COGS_DELIVERY_TIMEOUT_S`` after the call at most: then :class:`DeliveryTimeout`
        (the ops stay queued and apply exactly once). On a closed proxy: :class:`ProxyClosed`."""
        if self._batcher.torn:
            raise ProxyClosed("the proxy is closed: ops pending when it closed were answered with ProxyClosed")
        await self._batcher.drain()

    def report_error(self, err: CogsError, packet: Any = None) -> None:
        """Hand an error to this proxy's on_error (the log and statistics by default)."""
        self._on_error(err, packet)

    def add_discard_listener(self, hook: DiscardHook) -> None:
        """``hook(state_index, key, version)`` for every discard this proxy receives."""
        self._discard.hooks.append(hook)

    def _log_error(self, err: CogsError, packet: Any) -> None:
        self._logged_errors += 1
        n = self._logged_errors
        if n <= 10 or n % 1000 == 0:  # never a line per packet: the first ten, then one in a thousand
            where = fields(proxy=self.id, state=getattr(err, "state", None), key=getattr(err, "key", None),
                           op=getattr(err, "op", None), count=n)  # fmt: skip
            log.warning("proxy %s: %s (%d errors so far)", self.id, err, n, extra=where)

    def statistics(self) -> ProxyStatistics:
        if not hasattr(self, "_batcher"):
            raise CogsError("the proxy is not open: use `async with StateProxy(...)`")
        b, r = self._batcher, self._requests
        sync_ops = self._submit.sync_ops
        async_ops = self._async_ops + self.entries.async_ops
        ind = self._indirect.statistics() if self._indirect is not None else NO_INDIRECT
        req = r.statistics()
        if self._async_indirect:
            req = type(req)(req.pending_packets + self._async_indirect, req.callback_errors)
        return ProxyStatistics.compose(
            self.id, sync_ops, async_ops, b.statistics(), b.delivery.statistics(), self.cache.statistics(), req, ind
        )


__all__ = ["MISS", "Backpressure", "StateProxy"]
