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
waiting packets sit in the packet buffer table, keyed by state key, and callbacks of
one key run in arrival order. Reads of a key already queued or in flight are shared.
Direct states in replica mode are served from the proxy's replica cache when it
holds them; the coordinator discards replicas on update (see cache.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import anyio

from cogs.catalog import Catalog
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Schema, wire_arg
from cogs.errors import BadKey, CogsError, CoordinatorUnavailable, UnknownOp, refuse
from cogs.keys import ALERTS_STREAM_PREFIX, KEY_RULE, PROXY_INDEX, bad_key, once_keys, proxy_key, slot
from cogs.logs import fields
from cogs.proxy.batcher import Backpressure, Batcher, Lane, Req, coalesce_kinds
from cogs.proxy.cache import MISS, ReplicaCache
from cogs.proxy.discard import DiscardHook, DiscardLink
from cogs.proxy.indirect import Indirect, Loader
from cogs.proxy.stats import ProxyStatistics
from cogs.settings import CogsSettings, load_settings
from cogs.values import generic

if TYPE_CHECKING:
    from cogs.metrics.server import MetricsServer

log = logging.getLogger("cogs.proxy")
Callback = Callable[[Any, Any], Any]
ErrorCallback = Callable[[CogsError, Any], Any]
OnFail = ErrorCallback  # per async op: instead of on_error
UPDATE, UPDATE_GET, RETRIEVE, CHECK, RETRIEVE_REPLICA = 0, 1, 2, 3, 4


class StateProxy:
    """``async with StateProxy(url) as proxy:`` — a middlebox's handle on global states.

    ``proxy.update(state, key, op, delta=1)`` is the trigger hot path (an attribute
    bound to the batcher, so a call costs one Python call). It raises
    :class:`Backpressure` when the buffer is full; ``await proxy.aupdate(...)`` waits.
    Errors the coordinator reports for updates go to ``on_error(error, packet)`` (and
    the log, and ``statistics().errors``): never silently dropped.
    """

    update: Callable[..., None]

    def __init__(
        self,
        url: str | None = None,
        *,
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
        self.settings = settings or load_settings(url=url)
        # Prometheus metrics of this proxy's statistics (cogs.metrics.proxy): opt-in
        self._metrics_port = self.settings.metrics_port if metrics_port is None else metrics_port
        self._metrics: MetricsServer | None = None
        if not 0 < batch_delay_ms <= 1000 or batch_max_ops < 1 or max_pending < batch_max_ops:
            raise CogsError("need 0 < batch_delay_ms <= 1000, batch_max_ops >= 1, max_pending >= batch_max_ops")
        self.id = proxy_id or f"{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._opts = (batch_max_ops, batch_delay_ms / 1000, max_pending)
        self._heartbeat_ttl = heartbeat_ttl_s
        self._beating: asyncio.Task[Any] | None = None
        self._in_beat = False
        self._last_beat = (0.0, 0)  # (time, ops sent) at the last heartbeat: its ops/s
        # durable: a batch counts as applied only once a replica has it (WAIT), so an
        # acknowledged update survives the loss of its primary
        self._durable = self.settings.durable if durable is None else durable
        self._on_error = on_error or self._log_error
        self.coord = Coordinator(self.settings)
        # checked against the types of this proxy's settings (their lua_paths), not the default ones
        self._expected = Catalog.from_file(catalog, self.coord.spec) if isinstance(catalog, str | Path) else catalog
        self.cache = ReplicaCache()
        self.catalog: Catalog
        self._batcher: Batcher
        self._discard: DiscardLink
        self._open = False
        self._peer_secret = peer_secret
        self._indirect: Indirect | None = None
        self._indirect_states: frozenset[str] = frozenset()
        self._async_locks: dict[tuple[int, str], anyio.Lock] = {}
        self._schema: Schema
        self._replica_whole: dict[str, str] = {}
        self._replica_entries: frozenset[str] = frozenset()
        self._sync_ops = self._async_ops = self._callback_errors = 0
        # the packet buffer table: packets waiting for their state, per state key
        self._packets: dict[tuple[int, str], int] = {}
        self._entry_reads: dict[tuple[int, str], Req] = {}  # entry ops in flight, shared
        self._entry_modes: dict[tuple[str, str], int] = {}  # (state, op) -> update or retrieve
        self._npackets = 0
        self._logged_errors = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.coord.connect()
        try:
            self.catalog, token = await self.coord.stored_catalog(self._expected)
            self._schema = Schema(self.catalog)
            self._indirect_states = frozenset(st.name for st in self.catalog if st.state_class == "indirect")
            replicated = [st for st in self.catalog if st.state_class == "direct" and st.mode == "replica"]
            types = self.catalog.spec.types
            by_kind = {st.name: types[st.type] for st in replicated}
            self._replica_whole = {name: t.whole for name, t in by_kind.items() if t.replicas == "whole"}
            self._replica_entries = frozenset(name for name, t in by_kind.items() if t.replicas == "entries")
            bmax, delay, maxp = self._opts
            self._batcher = Batcher(
                self.coord, token, self.id, batch_max_ops=bmax, delay=delay, max_pending=maxp,
                durable=self._durable, durable_timeout=self.settings.durable_timeout_s,
                reroute_timeout=self.settings.reroute_timeout_s,
                on_error=self._on_error, on_result=self._resolve, on_failed=self._failed,
            )  # fmt: skip
            self._batcher.lane_factory = self._new_lane
            self.update = self._batcher.update
            self._discard = DiscardLink(self.coord, self.id, self.cache)
            b = self._batcher
            b._loop = asyncio.get_running_loop()
            ready = asyncio.Event()
            link = asyncio.ensure_future(self._discard.run(ready))
            b.tasks.add(link)
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait([waiter, link], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if link.done():  # the discard link could not start: say why
                raise link.exception() or CoordinatorUnavailable("discard link ended")
            b.spawn(b.run())
            s = self.settings
            secret = self._peer_secret or (s.peer_secret.get_secret_value() if s.peer_secret else None)
            self._indirect = Indirect(self, secret, s.peer_host, s.peer_port, s.peer_timeout_s, s.max_owned_bytes)
            if self._indirect.server is not None and any(st.state_class == "indirect" for st in self.catalog):
                await self._indirect.server.start()
                b.spawn(self._indirect.server.serve())
            if self._metrics_port is not None:
                from cogs.metrics.proxy import serve

                self._metrics = serve(self, self.settings.metrics_host, self._metrics_port)
            await self._beat()
            self._open = True
            self._beating = b.spawn(self._heartbeat())
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, *, drain_timeout: float = 5.0) -> None:
        """Send what is pending (up to ``drain_timeout``), unregister, close links.

        Proxies may be closed in any order: their background tasks are plain tasks
        owned by the proxy, cancelled and awaited here.
        """
        if self._open:
            self._open = False
            with anyio.move_on_after(drain_timeout):
                await self._batcher.drain()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._stop_beating()
                await self._unregister()
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

    # -- registry / heartbeat --------------------------------------------------------------

    async def _beat(self) -> None:
        assert self.coord.topology is not None
        node = self.coord.topology.node_of(slot(self.id))
        now = time.time()
        info = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "time": now}
        if self._indirect is not None:  # how other proxies reach the indirect states this one owns
            info.update(peer=self._indirect.address, inc=self._indirect.inc)
        if self._metrics is not None:  # where Prometheus scrapes this proxy
            info["metrics"] = self._metrics.address
        stats = self.statistics()
        info["stats"] = stats.__dict__
        prev_t, prev_sent = self._last_beat
        info["ops_per_s"] = (stats.ops_sent - prev_sent) / (now - prev_t) if prev_t else None
        self._last_beat = (now, stats.ops_sent)
        ttl = int(self._heartbeat_ttl * 1000)
        await self.coord.node_client(node).set(proxy_key(self.id), json.dumps(info), px=ttl)
        index = self.coord.node_client(self.coord.topology.node_of(slot(PROXY_INDEX)))
        now_ms = int(now * 1000)
        async with index.pipeline(transaction=False) as pipe:  # listed for the monitor; a day of history
            pipe.zadd(PROXY_INDEX, {self.id: now_ms})
            pipe.zremrangebyscore(PROXY_INDEX, "-inf", now_ms - 86_400_000)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat_ttl / 3)
            if self._indirect is not None:
                self._indirect.sweep()
            if not self._open:
                return
            self._in_beat = True
            try:
                await self._beat()
            except Exception as e:
                log.warning("proxy %s heartbeat failed: %s", self.id, e, extra=fields(proxy=self.id))
                with contextlib.suppress(CogsError):
                    await self.coord.refresh()
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

    async def _unregister(self) -> None:
        try:
            assert self.coord.topology is not None
            topo = self.coord.topology
            await self.coord.node_client(topo.node_of(slot(self.id))).delete(proxy_key(self.id))
            await self.coord.node_client(topo.node_of(slot(PROXY_INDEX))).zrem(PROXY_INDEX, self.id)
            for stream in self._batcher.node_batches:  # the exactly-once records of a closed proxy
                tag = stream[len(ALERTS_STREAM_PREFIX) + 1 : -1]
                await self.coord.node_client(topo.node_of(slot(tag))).delete(*once_keys(tag, self.id))
        except Exception as e:
            log.warning("proxy %s could not unregister: %s", self.id, e, extra=fields(proxy=self.id))

    # -- validation ----------------------------------------------------------------------

    def _new_lane(self, state: str) -> Lane:
        st, ts, sidx = self._schema.state(state)
        kinds = coalesce_kinds(ts.coalesce, ts.update)
        if st.state_class != "trigger":  # no merging: reads must see each update in order
            kinds = dict.fromkeys(kinds, 0)
        lane = self._batcher.lanes[state] = Lane(state, sidx, kinds, st)
        return lane

    def _req(self, mode: int, state: str, key: str, op: str | None, arg: Any) -> Req:
        st, sidx, name, decode = self._schema.request(state, mode, op)
        if bad_key(key):
            raise refuse(BadKey, KEY_RULE, state=state, key=key)
        req = Req(mode, state, sidx, key, name, wire_arg(arg, st, name), decode)
        if mode in (UPDATE, UPDATE_GET):
            self._batcher.reads.pop((sidx, key), None)  # later reads must see this update
        return req

    def _replicated(self, req: Req) -> bool:
        """A whole-state read of a replica-mode state: served by / filling the cache."""
        return req.arg is None and self._replica_whole.get(req.state) == req.op

    # -- the paper's operations ---------------------------------------------------------------

    def has_room(self, ops: int = 1) -> bool:
        """False when ``ops`` new ops would not fit (``update`` would raise Backpressure)."""
        return self._batcher.has_room(ops)

    async def wait_room(self, ops: int = 1) -> None:
        """Wait until ``ops`` new ops fit in the buffer (flushes made progress)."""
        if not self._batcher.has_room(ops):
            await self._batcher.wait_room(ops)

    async def aupdate(self, state: str, key: str, op: str, delta: Any = 1) -> None:
        """``update`` that waits for room instead of raising Backpressure."""
        if not self._batcher.has_room():
            await self._batcher.wait_room()
        self.update(state, key, op, delta)

    async def syn_up(self, state: str, key: str, op: str, delta: Any = None) -> Any:
        """SynUp: apply the update at the coordinator and return the new state (an
        indirect state: at its owner proxy, or here when it has none yet)."""
        if state in self._indirect_states:
            return await self._indirect_or_fail().update(state, key, op, delta)
        req = self._req(UPDATE_GET, state, key, op, delta)
        return await self._wait(req)

    async def syn_retrieve(
        self, state: str, key: str, op: str | None = None, arg: Any = None, *, load: Loader | None = None
    ) -> Any:
        """SynRetrieve: the state (``op`` defaults to the whole state), from the replica
        cache when this proxy holds a valid replica.

        ``load`` (indirect states): read through. When nobody has the key, this proxy
        takes it in the same coordinator call and keeps what ``await load()`` returns
        (bytes; None keeps nothing); readers elsewhere wait for that value meanwhile."""
        if state in self._indirect_states:
            if op not in (None, "get") or arg is not None:
                raise refuse(UnknownOp, "indirect states are read whole (op get)", state=state, op=op)
            return await self._indirect_or_fail().retrieve(state, key, load)
        if load is not None:
            raise refuse(UnknownOp, "load= (read-through) is for indirect states", state=state, op=op)
        whole = self._replica_whole.get(state)
        if whole is not None and arg is None and (op is None or op == whole):
            sidx = self._schema.index[state]
            if (sidx, key) not in self._packets:  # earlier packets of the key go first
                v = self.cache.get((sidx, key))
                if v is not MISS:
                    return v
        return await self._wait(self._req(RETRIEVE, state, key, op, arg))

    async def syn_check(self, state: str, key: str, op: str = "checker", arg: Any = None) -> bool:
        """Check: evaluate a predicate, or the state's checker, at the coordinator."""
        return bool(await self._wait(self._req(CHECK, state, key, op, arg)))

    def asyn_up(self, state: str, key: str, op: str, delta: Any, callback: Callback, packet: Any = None) -> None:
        """AsynUp: returns at once; ``callback(new_state, packet)`` runs when applied."""
        if state in self._indirect_states:
            self._async_indirect(state, key, callback, packet, self._indirect_or_fail().update(state, key, op, delta))
            return
        req = self._req(UPDATE_GET, state, key, op, delta)
        self._async_ops += 1
        self._hold(req, callback, packet)
        self._batcher.submit(req, now=False)

    def asyn_retrieve(
        self, state: str, key: str, op: str | None, callback: Callback, packet: Any = None, arg: Any = None
    ) -> None:
        """AsynRetrieve: returns at once; ``callback(state, packet)`` runs when the state is
        back (at once on a replica hit, unless packets of the key are still waiting)."""
        if state in self._indirect_states:
            self._async_indirect(state, key, callback, packet, self._indirect_or_fail().retrieve(state, key))
            return
        req = self._req(RETRIEVE, state, key, op, arg)
        self._async_ops += 1
        if arg is None:
            shared = self._batcher.reads.get((req.sidx, key), {}).get(req.op)
            if shared is not None:  # wait on the same round trip
                self._hold(shared, callback, packet)
                return
        if self._replicated(req) and (req.sidx, key) not in self._packets:
            # a replica hit answers at once, unless earlier packets of the key still wait
            v = self.cache.get((req.sidx, key))
            if v is not MISS:
                self._call(callback, v, packet)
                return
        self._hold(req, callback, packet)
        self._send(req, now=False)

    # -- entry ops: types whose ops read or write one entry of a key (portmap) -------------

    def _entry_req(self, state: str, key: str, op: str, arg: Any, entry: str) -> Req:
        mode = self._entry_modes.get((state, op))
        if mode is None:
            _, ts, _ = self._schema.state(state)
            mode = self._entry_modes[(state, op)] = UPDATE_GET if op in ts.update else RETRIEVE
        req = self._req(mode, state, key, op, arg)
        sidx = req.sidx
        req.decode = generic
        req.cache_key = (sidx, entry)
        if state in self._replica_entries:
            if req.mode == RETRIEVE:
                req.mode = RETRIEVE_REPLICA
            req.epoch = self.cache.begin_fetch(req.cache_key)
        return req

    def _entry_hit(self, state: str, entry: str) -> Any:
        if state not in self._replica_entries:
            return MISS
        return self.cache.get((self._schema.index[state], entry))

    async def syn_entry(self, state: str, key: str, op: str, arg: Any, entry: str, *, share: bool = False) -> Any:
        """An op on one entry of ``state[key]`` (the reply is ``{value, version, idle ms}``,
        as portmap's). In replica mode the value is cached under ``entry`` until a
        discard names it or half its idle time passed. ``share``: callers asking for the
        same entry while one op is in flight wait for that one (the op is idempotent)."""
        hit = self._entry_hit(state, entry)
        if hit is not MISS:
            return hit
        if share:
            shared = self._entry_reads.get((self._schema.index[state], entry))
            if shared is not None:
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                shared.waiters.append(fut)
                return await fut
        req = self._entry_req(state, key, op, arg, entry)
        if share:
            self._entry_reads[req.cache_key] = req  # type: ignore[index]
        return await self._wait(req)

    def asyn_entry(
        self,
        state: str,
        key: str,
        op: str,
        arg: Any,
        entry: str,
        callback: Callback,
        packet: Any = None,
        *,
        share: bool = False,
        on_fail: OnFail | None = None,
    ) -> None:
        """``syn_entry`` with a callback: ``callback(value, packet)`` at once on a cache
        hit, else when the reply is back; ``on_fail(error, packet)`` if it is refused
        (default: the proxy's on_error)."""
        self._async_ops += 1
        hit = self._entry_hit(state, entry)
        if hit is not MISS:
            self._call(callback, hit, packet)
            return
        if share:
            shared = self._entry_reads.get((self._schema.index[state], entry))
            if shared is not None:
                self._hold(shared, callback, packet, on_fail)
                return
        req = self._entry_req(state, key, op, arg, entry)
        if share:
            self._entry_reads[req.cache_key] = req  # type: ignore[index]
        self._hold(req, callback, packet, on_fail)
        self._batcher.submit(req, now=False)

    def _hold(self, req: Req, callback: Callback, packet: Any, on_fail: OnFail | None = None) -> None:
        req.waiters.append((callback, packet, on_fail))
        self._npackets += 1
        if req.cache_key is None:  # per key: a replica hit must not overtake these (entry ops cache per entry)
            k = (req.sidx, req.key)
            self._packets[k] = self._packets.get(k, 0) + 1

    def _release(self, req: Req) -> None:
        k = (req.sidx, req.key)
        for w in req.waiters:
            if not isinstance(w, asyncio.Future):
                self._npackets -= 1
                if req.cache_key is not None:
                    continue
                n = self._packets.get(k, 1) - 1
                if n:
                    self._packets[k] = n
                else:
                    self._packets.pop(k, None)

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
        if self._indirect is None:
            raise CogsError("the proxy is not open: use `async with StateProxy(...)`")
        return self._indirect

    async def _indirect_op(self, mode: int, state: str, key: str, op: str, arg: Any) -> Any:
        """A locator op (indirect.py) at the coordinator, through the batcher."""
        if bad_key(key):
            raise refuse(BadKey, KEY_RULE, state=state, key=key)
        return await self._wait(Req(mode, state, self._schema.index[state], key, op, arg, None))

    def _async_indirect(self, state: str, key: str, callback: Callback, packet: Any, op: Awaitable[Any]) -> None:
        """Run an indirect op in the background; callbacks of one key in arrival order."""
        self._async_ops += 1
        k = (self._schema.index[state], key)
        lock = self._async_locks.setdefault(k, anyio.Lock())
        self._npackets += 1

        async def run() -> None:
            async with lock:
                try:
                    value = await op
                except CogsError as e:
                    self._on_error(e, packet)
                else:
                    self._call(callback, value, packet)
                finally:
                    self._npackets -= 1

        self._batcher.spawn(run())

    async def flush(self) -> None:
        """Wait until everything issued so far has been applied at the coordinator."""
        await self._batcher.drain()

    def report_error(self, err: CogsError, packet: Any = None) -> None:
        """Hand an error to this proxy's on_error (the log and statistics by default)."""
        self._on_error(err, packet)

    def add_discard_listener(self, hook: DiscardHook) -> None:
        """``hook(state_index, key, version)`` for every discard this proxy receives."""
        self._discard.hooks.append(hook)

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, req: Req, *, now: bool) -> None:
        if req.mode == RETRIEVE:
            if self._replicated(req):
                req.mode = RETRIEVE_REPLICA
                req.epoch = self.cache.begin_fetch((req.sidx, req.key))
            if req.arg is None:
                self._batcher.reads.setdefault((req.sidx, req.key), {})[req.op] = req
        self._batcher.submit(req, now=now)

    def _queue(self, req: Req, *, now: bool = False) -> asyncio.Future[Any]:
        """Queue ``req`` now, before anything queued after this call; its reply's future
        (``now``: flush at once, a caller waits for it)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        req.waiters.append(fut)
        self._send(req, now=now)
        return fut

    async def _wait(self, req: Req) -> Any:
        if not self._batcher.has_room():
            await self._batcher.wait_room()
        self._sync_ops += 1
        if req.mode == RETRIEVE and req.arg is None:
            shared = self._batcher.reads.get((req.sidx, req.key), {}).get(req.op)
            if shared is not None:
                fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                shared.waiters.append(fut)
                self._batcher.kick()
                return await fut
        return await self._queue(req, now=True)

    def _resolve(self, req: Req, raw: Any) -> None:
        """A reply for a request: decode, cache a replica, wake the waiters in order."""
        reads = self._batcher.reads.get((req.sidx, req.key))
        if reads is not None and reads.get(req.op) is req:
            del reads[req.op]
            if not reads:
                del self._batcher.reads[(req.sidx, req.key)]
        decode = req.decode or (lambda v: v)
        ck = req.cache_key
        if ck is not None:  # an entry op: {value or false, version, idle ms left}
            if self._entry_reads.get(ck) is req:
                del self._entry_reads[ck]
            value = decode(raw[0] if raw[0] is not False else None)
            if req.epoch < 0:
                pass  # not cacheable (singleton mode)
            elif value is None:
                self.cache.abort_fetch(ck)
            else:  # half the idle time: a busy entry is re-read, which keeps it alive
                left = int(raw[2])
                self.cache.end_fetch(ck, req.epoch, value, int(raw[1]), left // 2 if left > 0 else -1)
        elif req.mode == RETRIEVE_REPLICA:
            value = decode(raw[0] if raw[0] is not False else None)
            self.cache.end_fetch((req.sidx, req.key), req.epoch, value, int(raw[1]), int(raw[2]))
        elif req.mode == UPDATE_GET and isinstance(raw, list) and req.state in self._replica_whole:
            value = decode(raw[0] if raw[0] is not False else None)
        else:
            value = decode(None if raw is False else raw)
        self._release(req)
        for w in req.waiters:
            if isinstance(w, asyncio.Future):
                if not w.done():
                    w.set_result(value)
            else:
                self._call(w[0], value, w[1])

    def _failed(self, req: Req, err: CogsError) -> None:
        reads = self._batcher.reads.get((req.sidx, req.key))
        if reads is not None and reads.get(req.op) is req:
            del reads[req.op]
        ck = req.cache_key
        if ck is not None:
            if self._entry_reads.get(ck) is req:
                del self._entry_reads[ck]
            if req.epoch >= 0:
                self.cache.abort_fetch(ck)
        elif req.mode == RETRIEVE_REPLICA:
            self.cache.abort_fetch((req.sidx, req.key))
        self._release(req)
        if not req.waiters:
            self._on_error(err, None)
        for w in req.waiters:
            if isinstance(w, asyncio.Future):
                if not w.done():
                    w.set_exception(err)
            elif w[2] is not None:
                w[2](err, w[1])
            else:
                self._on_error(err, w[1])

    def _call(self, callback: Callback, value: Any, packet: Any) -> None:
        try:
            callback(value, packet)
        except Exception:  # a broken callback must not stall the other packets
            self._callback_errors += 1
            n = self._callback_errors
            if n <= 10 or n % 1000 == 0:  # a callback broken for every packet: not a line per packet
                log.exception("proxy %s: state callback failed (%d so far)", self.id, n, extra=fields(proxy=self.id))

    def _log_error(self, err: CogsError, packet: Any) -> None:
        self._logged_errors += 1
        n = self._logged_errors
        if n <= 10 or n % 1000 == 0:  # never a line per packet: the first ten, then one in a thousand
            where = fields(proxy=self.id, state=getattr(err, "state", None), key=getattr(err, "key", None),
                           op=getattr(err, "op", None), count=n)  # fmt: skip
            log.warning("proxy %s: %s (%d errors so far)", self.id, err, n, extra=where)

    def statistics(self) -> ProxyStatistics:
        b = getattr(self, "_batcher", None)
        c = self.cache
        ind = self._indirect

        def g(name: str) -> int:
            return int(getattr(b, name, 0))

        return ProxyStatistics(
            proxy_id=self.id,
            updates=g("updates"),
            coalesced=g("coalesced"),
            ops_sent=g("ops_sent"),
            ops_applied=g("ops_applied"),
            batches=g("batches"),
            sync_ops=self._sync_ops,
            async_ops=self._async_ops,
            cache_hits=c.hits,
            cache_misses=c.misses,
            cached_entries=len(c),
            discards=c.discards,
            cache_drops=c.drops,
            pending_ops=g("npending"),
            inflight_ops=g("inflight"),
            pending_packets=self._npackets,
            errors=g("errors") + self._callback_errors,
            backpressure=g("backpressure"),
            rerouted=g("rerouted"),
            retried_batches=g("retried"),
            owned=len(ind.owned) if ind else 0,
            owned_bytes=ind.owned.bytes if ind else 0,
            evicted=ind.stats.evicted if ind else 0,
            stale_locators=ind.stats.stale_locators if ind else 0,
            indirect_local_hits=ind.stats.local_hits if ind else 0,
            remote_ops=ind.stats.remote_fetches if ind else 0,
            locator_lookups=ind.stats.coordinator_lookups if ind else 0,
            peer_served=ind.stats.served if ind else 0,
            collapsed_reads=ind.stats.collapsed if ind else 0,
            outages=len(getattr(b, "pauses", ())),
            longest_pause_s=max(getattr(b, "pauses", ()), default=0.0),
        )


__all__ = ["MISS", "Backpressure", "StateProxy"]
