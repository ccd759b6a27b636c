"""Batching: coalesce, group per node, one FCALL per node batch, dispatch the replies.

Two paths feed a batch:

* **lanes** — trigger updates (``update()``), one lane per state: ``key -> [op, acc,
  op, acc, ...]``. A new update of the op last pending for the key merges into it when
  the type declares the op commutative (``-- coalesce: add=sum`` in the Lua header):
  counters add up, set inserts union. Another op starts a new group, so per-key order
  holds (add, remove, add stay three ops in that order).
* **requests** — sync and async ops with waiters (futures, or callback + packet).

A flush happens after ``delay`` once something is pending, at once when a batch is
full or a sync op waits. Its ops go out per node, lanes first, then requests in
arrival order, on the node's pipelined link (so batches apply in send order). Memory
is bounded: ``max_pending`` ops buffered plus in flight; past it ``update()`` raises
:class:`Backpressure` and the async paths wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

import anyio

from cogs.coordinator.client import Coordinator, parse_reply, translate_error
from cogs.coordinator.ops import wire_arg
from cogs.coordinator.wire import WireOp, expand
from cogs.errors import (
    BadDelta,
    BadKey,
    CogsError,
    CoordinatorUnavailable,
    Moved,
    UnknownOp,
    op_error,
    refuse,
)
from cogs.keys import (
    ALERTS_STREAM_PREFIX,
    KEY_RULE,
    MAX_KEY_BYTES,
    alert_stream,
    bad_key,
    escape,
    slot,
    unescape,
)
from cogs.logs import fields
from cogs.proxy.link import NodeLink

log = logging.getLogger("cogs.proxy")

SUM, UNION, MAPSUM, NONE = 1, 2, 3, 0
_KINDS = {"sum": SUM, "union": UNION, "mapsum": MAPSUM}
MEMBER_CACHE = 1_000_000
FAST_KEY = MAX_KEY_BYTES // 4  # this many chars are valid however they encode or escape
MAX_RETRIES = 20

ErrorHook = Callable[[CogsError, Any], None]


def route(key: str) -> tuple[str, int]:
    """(the escaped key as a JSON string, its slot), computed each time: json's own
    string encoder and crc_hqx cost less than a cache look-up that misses the CPU's caches."""
    ek = escape(key)
    return encode_basestring_ascii(ek), slot(ek)


class Backpressure(CogsError):
    """The proxy's buffer is full (the coordinator is slower than the NF): retry later,
    or use ``await proxy.aupdate(...)`` which waits for room."""


class Lane:
    """Pending trigger updates of one state."""

    __slots__ = ("hot", "hot_kind", "hot_op", "kinds", "name", "pending", "prefix", "sidx", "state_spec")

    def __init__(self, name: str, sidx: int, kinds: dict[str, int], state_spec: Any) -> None:
        self.name, self.sidx, self.kinds, self.state_spec = name, sidx, kinds, state_spec
        #: key -> [op, kind, acc, op, kind, acc, ...]: the ops pending for the key, in order
        self.pending: dict[str, list[Any]] = {}
        #: The hot op (the type's first coalescing op: a counter's add, a set's add) of
        #: keys with nothing else pending: key -> its sum (int), its one member (str) or
        #: members (set). No list per op: every container allocated here is GC work (the
        #: collector's passes cost a quarter of the NF's CPU when each op had one). A key
        #: is in ``hot`` or in ``pending``, never both.
        self.hot: dict[str, Any] = {}
        self.hot_op = next((op for op, k in kinds.items() if k in (SUM, UNION)), None)
        self.hot_kind = kinds[self.hot_op] if self.hot_op is not None else NONE
        #: op -> the JSON fragment '0,<sidx>,"<op>",' that starts a run of its ops
        self.prefix = {op: f"0,{sidx},{json.dumps(op)}," for op in kinds}

    @property
    def has_ops(self) -> bool:
        return bool(self.pending or self.hot)


class Req:
    """One op that someone waits for (or a re-sent one)."""

    __slots__ = (
        "arg", "cache_key", "decode", "ekey", "epoch", "key", "mode", "moved_at", "op", "sidx", "state", "waiters",
    )  # fmt: skip

    def __init__(
        self,
        mode: int,
        state: str,
        sidx: int,
        key: str,
        op: str,
        arg: Any,
        decode: Callable[[Any], Any] | None,
    ) -> None:
        self.mode, self.state, self.sidx, self.key, self.op, self.arg = mode, state, sidx, key, op, arg
        self.decode = decode
        self.ekey = escape(key)
        self.waiters: list[Any] = []  # asyncio futures, or (callback, packet, on_fail) triples
        self.epoch = -1
        #: an entry op (StateProxy.syn_entry): where its value is cached, if anywhere
        self.cache_key: tuple[int, str] | None = None
        #: when the coordinator first answered MOVED/ASK for it (monotonic s; 0: never)
        self.moved_at = 0.0


#: modes whose ops may be applied twice with the same effect: retrieve, check, retrieve
#: with a replica, and the locator ops locate, claim (repeatable by its claimer), forget
IDEMPOTENT_MODES = frozenset({2, 3, 4, 5, 6, 8})


@dataclass(slots=True)
class Batch:
    """One numbered frame for one node (by its alert stream, stable across failover)."""

    seq: int
    stream: str
    payload: str
    nops: int
    reqs: dict[int, Req]
    #: sent with its number (the coordinator records it, exactly once); a batch of
    #: reads and idempotent ops only goes without: re-applying it changes nothing
    once: bool = True


class Batcher:
    def __init__(
        self,
        coord: Coordinator,
        token: str,
        proxy_id: str,
        *,
        batch_max_ops: int,
        delay: float,
        max_pending: int,
        max_inflight: int = 2,
        durable: bool = False,
        durable_timeout: float = 1.0,
        reroute_timeout: float = 30.0,
        on_error: ErrorHook,
        on_result: Callable[[Req, Any], None],
        on_failed: Callable[[Req, CogsError], None],
    ) -> None:
        self.coord, self.token, self.pid = coord, token, proxy_id
        self.batch_max, self.delay, self.max_pending = batch_max_ops, delay, max_pending
        self.on_error, self.on_result, self.on_failed = on_error, on_result, on_failed
        self.lanes: dict[str, Lane] = {}
        self.lane_factory: Callable[[str], Lane] | None = None
        self.queue: list[Req] = []
        # reads anyone may join: (state index, key) -> {op: queued or in-flight Req}
        self.reads: dict[tuple[int, str], dict[str, Req]] = {}
        # Ops buffered (lane groups + requests) = _np + (_granted - budget): the hot path
        # may open up to `budget` new ops by only decrementing it; _settle() books them.
        self._np = 0
        self._granted = self.budget = 0
        self.inflight = 0  # ops sent, reply not yet handled
        self.links: dict[str, NodeLink] = {}
        self._kick = asyncio.Event()
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.node_batches: dict[str, int] = {}  # batches in flight per node (by its alert stream)
        self.seq = 0  # batch numbers: exactly-once re-sends (lua/once.lua)
        self.parked: list[tuple[Batch, CogsError]] = []
        self._retrying = False
        self.durable, self.durable_timeout = durable, durable_timeout
        self.reroute_timeout = reroute_timeout  # how long an op may keep coming back MOVED/ASK
        self.outage_started = 0.0
        self.pauses: list[float] = []  # seconds each outage held batches back
        self.max_inflight = max_inflight
        self._refreshing: asyncio.Task[Any] | None = None
        self._per_node: tuple[Any, list[str], list[str]] = (None, [], [])
        # statistics
        self._created = self.coalesced = self.ops_sent = self.ops_applied = self.batches = 0
        self.errors = self.backpressure = self.rerouted = self.retried = 0

    # -- the trigger hot path ------------------------------------------------------------

    def update(self, state: str, key: str, op: str, delta: Any = 1) -> None:
        """Update(key, op, delta): queue an accumulative update; returns at once."""
        lane = self.lanes.get(state)
        if lane is not None and op == lane.hot_op and type(key) is str:
            hot = lane.hot
            v = hot.get(key)
            if lane.hot_kind == SUM:
                if type(delta) is int:
                    if v is not None:
                        hot[key] = v + delta
                        self.coalesced += 1
                        return
                    if self.budget > 0 and 0 < len(key) <= FAST_KEY and key not in lane.pending:
                        # a new op while a batch is open and has room: no bookkeeping but the budget
                        hot[key] = delta
                        self.budget -= 1
                        return
            elif type(delta) is str:  # UNION: one member stays a str until a second comes
                if v is not None:
                    if type(v) is str:
                        if v != delta:
                            hot[key] = {v, delta}
                    else:
                        v.add(delta)
                    self.coalesced += 1
                    return
                if self.budget > 0 and 0 < len(key) <= FAST_KEY and key not in lane.pending:
                    hot[key] = delta
                    self.budget -= 1
                    return
        self._update_slow(state, lane, key, op, delta)

    def _update_slow(self, state: str, lane: Lane | None, key: str, op: str, delta: Any) -> None:
        if lane is None:
            assert self.lane_factory is not None
            lane = self.lane_factory(state)
        kind = lane.kinds.get(op)
        if kind is None:
            known = ", ".join(lane.kinds)
            raise refuse(UnknownOp, f"not an update op of its type (has: {known})", state=lane.name, op=op)
        if kind == SUM:
            if type(delta) is not int:
                raise refuse(BadDelta, f"delta must be an int, got {delta!r}", state=lane.name, key=key, op=op)
            acc: Any = delta
        elif kind == UNION:
            members = [delta] if type(delta) is str else delta
            if type(delta) is not str and (
                not isinstance(members, list | tuple | set | frozenset) or not all(type(m) is str for m in members)
            ):
                raise refuse(BadDelta, f"members must be str, got {delta!r}", state=lane.name, key=key, op=op)
            if not members:
                raise refuse(BadDelta, "no members given", state=lane.name, key=key, op=op)
            acc = set(members)
        elif kind == MAPSUM:  # {field: int}: merged field by field
            if type(delta) is not dict or not delta or not all(type(v) is int for v in delta.values()):
                raise refuse(
                    BadDelta, f"delta must be a {{field: int}} dict, got {delta!r}", state=lane.name, key=key, op=op
                )
            acc = {str(f): v for f, v in delta.items()}
        else:
            acc = wire_arg(delta, lane.state_spec, op)
        if bad_key(key):
            raise refuse(BadKey, KEY_RULE, state=lane.name, key=key)
        hot = lane.hot
        if key in hot:
            v = hot.pop(key)
            if op == lane.hot_op:  # merge (a list of members, say: not the hot path's case)
                hot[key] = v + acc if kind == SUM else acc.union([v] if type(v) is str else v)
                self.coalesced += 1
                return
            # another op: the key's ops go on in order in `pending` (already booked)
            lane.pending[key] = [lane.hot_op, lane.hot_kind, {v} if type(v) is str else v]
        g = lane.pending.get(key)
        if g is not None and g[-3] == op and kind != NONE:
            if kind == SUM:
                g[-1] += acc
            elif kind == UNION:
                g[-1].update(acc)
            else:
                for f, n in acc.items():
                    g[-1][f] = g[-1].get(f, 0) + n
            self.coalesced += 1
            return
        if g is None:
            self._reserve(lane.name)
            if op == lane.hot_op:
                hot[key] = acc
            else:
                lane.pending[key] = [op, kind, acc]
        else:
            self._reserve(lane.name)
            g += (op, kind, acc)
        self._created += 1

    def _settle(self) -> None:
        """Book the ops the hot path opened on its budget, and grant a new budget."""
        used = self._granted - self.budget
        self._np += used
        self._created += used
        np = self._np
        room = self.max_pending - np - self.inflight
        if np == 0:
            room = 0  # the first op of a batch starts its timer: slow path
        elif np < self.batch_max:
            room = min(room, self.batch_max - 1 - np)  # the op that fills the batch kicks the flush
        self._granted = self.budget = max(room, 0)

    def _reserve(self, state: str) -> None:
        self._settle()
        if self._np + self.inflight >= self.max_pending:
            self.backpressure += 1
            raise Backpressure(
                f"proxy buffer full ({self.max_pending} ops pending or in flight) while updating {state}: "
                "the coordinator is slower than the NF; await proxy.aupdate(...) to wait for room"
            )
        self._np += 1
        if self._np == 1:
            self._idle.clear()
            if self._loop is not None and self._timer is None:
                self._timer = self._loop.call_later(self.delay, self._kick.set)
        elif self._np >= self.batch_max:
            self._kick.set()
        self._settle()

    @property
    def npending(self) -> int:
        return self._np + self._granted - self.budget

    @property
    def created(self) -> int:
        return self._created + self._granted - self.budget

    @property
    def updates(self) -> int:
        """update() calls accepted: each either created an op or merged into one."""
        return self.created + self.coalesced

    def has_room(self, ops: int = 1) -> bool:
        return self.npending + self.inflight + ops <= self.max_pending

    async def wait_room(self, ops: int = 1) -> None:
        ops = min(ops, self.max_pending)
        while not self.has_room(ops):
            self._space.clear()
            self._kick.set()
            await self._space.wait()

    # -- requests (sync / async ops) -----------------------------------------------------

    def submit(self, req: Req, *, now: bool) -> None:
        """Queue a request; ``now`` flushes at once (a sync op is waiting)."""
        self._settle()
        self._np += 1
        self._idle.clear()
        self.queue.append(req)
        self._settle()
        if now and self._loop is not None and self._room():
            # a sync op waits: out now, in this step (no wake of the run task). Under
            # load the in-flight limit holds the next ones back, and they batch up
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flush()
        elif now or self._np >= self.batch_max:
            self._kick.set()
        elif self._loop is not None and self._timer is None:
            self._timer = self._loop.call_later(self.delay, self._kick.set)

    def kick(self) -> None:
        """Flush now (a sync op joined a queued read)."""
        self._kick.set()

    # -- flushing ------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.npending:
            self._kick.set()
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            # At most `max_inflight` batches per node: while the coordinator works, the
            # next batch keeps filling (and coalescing) instead of queueing at Redis.
            # While batches wait to be re-sent, nothing new goes out: re-sends keep their order.
            while not self._room():
                self._space.clear()
                await self._space.wait()
            if self.npending:
                self._flush()

    def _room(self) -> bool:
        """May a batch go out now? Not while batches wait to be re-sent (they go first),
        nor past ``max_inflight`` batches on a node."""
        return not self.parked and not (self.node_batches and max(self.node_batches.values()) >= self.max_inflight)

    async def drain(self) -> None:
        """Wait until every op issued so far has been applied (or failed)."""
        if self.npending:
            self._kick.set()
        await self._idle.wait()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A background task owned by the proxy: cancelled and awaited by aclose()."""
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _nodes(self) -> tuple[Any, list[str], list[str]]:
        """(topology, alert stream per node, address per node), rebuilt when the slot map changes."""
        topo = self.coord.topology
        assert topo is not None
        if self._per_node[0] is not topo:
            self._per_node = (topo, [alert_stream(n.first_slot) for n in topo.nodes], [n.addr for n in topo.nodes])
        return self._per_node

    def _flush(self) -> None:
        topo, streams, _ = self._nodes()
        lanes = [lane for lane in self.lanes.values() if lane.has_ops]
        frames = encode(lanes, self.queue, topo.owner, self.batch_max)
        for lane in lanes:
            lane.pending = {}
            lane.hot = {}
        self.queue = []
        self._settle()
        self._np = 0
        self._settle()
        for n, node_frames in frames.items():
            stream = streams[n]
            for payload, count, reqs in node_frames:
                self.seq += 1
                self.inflight += count
                self.ops_sent += count
                self.batches += 1
                self.node_batches[stream] = self.node_batches.get(stream, 0) + 1
                once = count != len(reqs) or any(r.mode not in IDEMPOTENT_MODES for r in reqs.values())
                b = Batch(self.seq, stream, payload, count, reqs, once)
                link = None if self.durable else self._link(n)
                if link is not None and link.ready:  # written now; the reply is handled in its callback
                    link.send(self._args(b)).add_done_callback(functools.partial(self._sent, b, link.addr))
                else:  # connect first, or wait for a replica (durable): a task
                    self.spawn(self._send(b))

    def _link(self, n: int) -> NodeLink:
        addr = self._nodes()[2][n]
        link = self.links.get(addr)
        if link is None:
            client = self.coord.node_client(n)
            pool = client.connection_pool
            link = self.links[addr] = NodeLink(addr, pool.connection_class, pool.connection_kwargs)
        return link

    async def _call(self, b: Batch) -> Any:
        """One FCALL of a numbered batch on the node serving its stream's slot (after a
        failover: the promoted replica); in durable mode, only once a replica has it."""
        topo = self.coord.topology
        assert topo is not None
        link = self._link(topo.node_of(slot(b.stream[len(ALERTS_STREAM_PREFIX) + 1 : -1])))
        try:
            raw = await link.call(*self._args(b))
            if self.durable:
                acked = await link.call("WAIT", 1, int(self.durable_timeout * 1000))
                if int(acked) < 1:
                    raise CoordinatorUnavailable(f"node {link.addr}: no replica acknowledged batch {b.seq} in time")
        except CoordinatorUnavailable:
            raise
        except Exception as e:  # Redis refused the call: translate once, here
            raise translate_error(e, link.addr) from e
        return raw

    def _args(self, b: Batch) -> tuple[Any, ...]:
        if b.once:
            return ("FCALL", "cogs_batch", 0, self.token, b.stream, b.payload, self.pid, str(b.seq))
        return ("FCALL", "cogs_batch", 0, self.token, b.stream, b.payload, self.pid)

    def _sent(self, b: Batch, addr: str, fut: asyncio.Future[Any]) -> None:
        """The reply to a batch written at once (as ``_send``, in the link's callback)."""
        if fut.cancelled():
            self._park(b, CoordinatorUnavailable(f"node {addr}: the call was cancelled"))
            return
        e = fut.exception()
        if e is None:
            self._dispatch(b, parse_reply(fut.result()))
        else:
            err = translate_error(e, addr) if isinstance(e, Exception) else CogsError(str(e))
            if isinstance(err, CoordinatorUnavailable):
                self._park(b, err)  # re-sent in order by the retrier, which books it when done
                return
            self._fail_batch(b.nops, b.reqs, err)
        self._done(b)

    async def _send(self, b: Batch) -> None:
        try:
            raw = await self._call(b)
        except CoordinatorUnavailable as e:
            self._park(b, e)  # re-sent in order by the retrier, which books it when done
            return
        except CogsError as e:  # a refusal of the whole batch (library outdated, bad frame)
            self._fail_batch(b.nops, b.reqs, e)
        else:
            self._dispatch(b, parse_reply(raw))
        self._done(b)

    def _done(self, b: Batch) -> None:
        self.inflight -= b.nops
        self.node_batches[b.stream] -= 1
        self._settle()
        self._space.set()
        if not self.npending and not self.inflight:
            self._idle.set()

    def _park(self, b: Batch, cause: CogsError) -> None:
        """A connection failed under ``b``: it may or may not have been applied. It goes
        out again, unchanged (same number: the coordinator drops a duplicate), in order
        with the other parked batches, before any new batch."""
        if not self.parked:
            _, streams, addrs = self._nodes()
            node = addrs[streams.index(b.stream)] if b.stream in streams else None
            where = fields(proxy=self.pid, node=node)
            log.warning("coordinator connection lost (%s): re-sending in-flight batches", cause, extra=where)
            self.outage_started = time.monotonic()
        self.parked.append((b, cause))
        if not self._retrying:
            self._retrying = True
            self.spawn(self._retrier())

    async def _retrier(self) -> None:
        attempt = 0
        try:
            while self.parked:
                attempt += 1
                await anyio.sleep(min(0.02 * 2 ** min(attempt, 7), 0.5))
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.coord.refresh()
                batches = sorted(self.parked, key=lambda p: p[0].seq)
                self.parked = []
                for k, (b, _) in enumerate(batches):
                    try:
                        raw = await self._call(b)
                    except CoordinatorUnavailable as e:
                        self.parked = [(x, e) for x, _ in batches[k:]] + self.parked
                        break
                    except CogsError as e:
                        self._fail_batch(b.nops, b.reqs, e)
                    else:
                        self.retried += 1
                        self._dispatch(b, parse_reply(raw))
                    self._done(b)
                if self.parked and attempt >= MAX_RETRIES:
                    for b, cause in self.parked:
                        self._fail_batch(b.nops, b.reqs, cause)
                        self._done(b)
                    self.parked = []
            if self.outage_started:
                self.pauses.append(time.monotonic() - self.outage_started)
                self.outage_started = 0.0
        finally:
            self._retrying = False
            self._space.set()

    def _dispatch(self, b: Batch, reply: Any) -> None:
        if reply.applied == -1:  # a re-sent batch the coordinator had applied: nothing more to do
            self.ops_applied += b.nops
            return
        reqs = b.reqs
        self.ops_applied += reply.applied
        moved: list[tuple[int, Moved]] = []
        flat: list[WireOp] | None = None
        for i, msg in reply.errors.items():
            if flat is None:
                flat = expand(json.loads(b.payload))  # the rare path: recover what op i was
            req = reqs.get(i)
            state = req.state if req else self._state_name(flat[i][1])
            key = req.key if req else unescape(flat[i][3])
            err = op_error(msg, state=state, key=key, op=str(flat[i][2]))
            if isinstance(err, Moved):
                moved.append((i, err))
                continue
            self.errors += 1
            if req is not None:
                self.on_failed(req, err)
            else:
                self.on_error(err, None)
        for i, value in reply.results.items():
            req = reqs.get(i)
            if req is not None:
                self.on_result(req, value)
        if moved:
            assert flat is not None
            self.rerouted += len(moved)
            self._requeue(flat, reqs, moved)
            self._refresh_soon()

    def _state_name(self, sidx: int) -> str:
        for lane in self.lanes.values():
            if lane.sidx == sidx:
                return lane.name
        return f"#{sidx}"

    def _requeue(self, flat: list[WireOp], reqs: dict[int, Req], which: list[tuple[int, Moved]]) -> None:
        """Put ops the coordinator did not apply (MOVED, or ASK while their slot is half
        moved) back in front of the queue: they were issued before anything queued now.
        One still refused ``reroute_timeout`` s after the first time fails (a migration
        that never completes must not hold it, and flush(), forever)."""
        back: list[Req] = []
        now = time.monotonic()
        for i, err in which:
            req = reqs.get(i)
            if req is None:
                mode, sidx, op, ek, arg = flat[i]
                req = Req(mode, self._state_name(sidx), sidx, unescape(ek), op, arg, None)
            if not req.moved_at:
                req.moved_at = now
            elif now - req.moved_at > self.reroute_timeout:
                self._give_up_moved(req, err)
                continue
            back.append(req)
        self.queue[:0] = back
        self._settle()
        self._np += len(back)
        self._settle()
        if back:
            self._idle.clear()
        if self._loop is not None and self._timer is None:
            self._timer = self._loop.call_later(max(self.delay, 0.01), self._kick.set)

    def _give_up_moved(self, req: Req, err: Moved) -> None:
        self.errors += 1
        gone = Moved(
            f"its slot's node kept refusing it for {self.reroute_timeout:g} s (a slot migration that does not "
            f"complete?): {err}",
            state=req.state, key=req.key, op=req.op,
        )  # fmt: skip
        self.on_failed(req, gone)  # its waiters, else on_error

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self.tasks.add(self._refreshing)
            self._refreshing.add_done_callback(self.tasks.discard)

    async def _refresh(self) -> None:
        try:
            await self.coord.refresh()
        except CoordinatorUnavailable as e:
            log.warning("slot map refresh failed: %s", e, extra=fields(proxy=self.pid))
        self._kick.set()

    def _fail_batch(self, n: int, reqs: dict[int, Req], err: CogsError) -> None:
        self.errors += n
        for i in range(n):
            req = reqs.get(i)
            if req is not None:
                self.on_failed(req, err)
        if len(reqs) < n:
            self.on_error(err, None)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self.links.values():
            await link.aclose()


Frame = tuple[str, int, dict[int, "Req"]]  # payload, number of ops, op index -> request


class Frames:
    """Run-frame fragments for one node, cut into frames of at most ``limit`` ops: one
    FCALL stays short (others wait while Lua runs) however much piled up meanwhile.
    Frames go out in order on one link, so a key's ops split across two stay in order."""

    __slots__ = ("count", "done", "limit", "parts", "reqs")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done: list[Frame] = []
        self.parts: list[str] = []
        self.count = 0
        self.reqs: dict[int, Req] = {}

    def run(self, prefix: str, frags: list[str]) -> None:
        """A run of ops sharing ``prefix`` ("mode,state,op,"): "key,arg" fragments."""
        i = 0
        while i < len(frags):
            take = frags[i : i + self.limit - self.count]
            self.parts.append(f"{prefix}{len(take)},{','.join(take)}")
            self.count += len(take)
            i += len(take)
            if self.count >= self.limit:
                self._cut()

    def one(self, text: str, req: Req | None = None) -> None:
        if req is not None:
            self.reqs[self.count] = req
        self.parts.append(text)
        self.count += 1
        if self.count >= self.limit:
            self._cut()

    def _cut(self) -> None:
        if self.count:
            self.done.append(("[" + ",".join(self.parts) + "]", self.count, self.reqs))
            self.parts, self.count, self.reqs = [], 0, {}

    def frames(self) -> list[Frame]:
        self._cut()
        return self.done


def encode(
    lanes: list[Lane],
    queue: list[Req],
    owner: Any,
    limit: int = 2000,
) -> dict[int, list[Frame]]:
    """The pending ops as run frames (cogs/coordinator/wire.py) per node.

    Lane ops go first, one run per (state, op) and node; a key with several groups
    keeps them in order as runs of one; requests follow in arrival order. Built from
    fragments: at this rate json.dumps of a list costs more than the Lua that
    applies it. Routes are computed, not cached: a cache of the long tail of keys
    misses the CPU's caches and costs twice the C calls (1.0 vs 0.4 us per op).
    """
    nodes: dict[int, Frames] = {}
    jstr = _JSON_STR.get

    def frames(n: int) -> Frames:
        f = nodes.get(n)
        if f is None:
            f = nodes[n] = Frames(limit)
        return f

    def wire(kind: int, acc: Any) -> str:
        if kind == SUM:
            return f'"{acc}"'
        if kind == UNION:
            return _members(acc)
        if kind == MAPSUM:  # counts as decimal strings: exact past 2^53 (Lua numbers are doubles)
            return json.dumps({f: str(v) for f, v in acc.items()})
        return json.dumps(acc)

    for lane in lanes:
        prefix = lane.prefix
        singles: dict[tuple[int, str], list[str]] = {}  # (node, op) -> "key,arg" fragments
        multi: list[tuple[int, list[Any], str]] = []
        hop = lane.hot_op
        if hop is not None and lane.hot:
            for n, frags in _hot_fragments(lane, owner).items():
                singles[(n, hop)] = frags
        for key, g in lane.pending.items():
            r = route(key)
            n = owner[r[1]]
            if len(g) == 3:
                acc = g[2]
                frag = f'{r[0]},"{acc}"' if g[1] == SUM else f"{r[0]},{wire(g[1], acc)}"
                lst = singles.get((n, g[0]))
                if lst is None:
                    lst = singles[(n, g[0])] = []
                lst.append(frag)
            else:
                multi.append((n, g, r[0]))
        for (n, op), frags in singles.items():
            frames(n).run(prefix[op], frags)
        for n, g, ekj in multi:
            f = frames(n)
            for j in range(0, len(g), 3):
                f.one(f"{prefix[g[j]]}1,{ekj},{wire(g[j + 1], g[j + 2])}")
    for req in queue:  # "mode,state,op,1,key,arg" from cached fragments (json.dumps of a list costs more)
        r = route(req.key)
        arg = req.arg
        argj = "null" if arg is None else json.dumps(arg)
        frames(owner[r[1]]).one(f"{req.mode},{req.sidx},{jstr(req.op) or _jstr(req.op)},1,{r[0]},{argj}", req)
    return {n: f.frames() for n, f in nodes.items()}


def _hot_fragments(lane: Lane, owner: Any) -> dict[int, list[str]]:
    """node -> "key,arg" fragments of the lane's hot op (``Lane.hot``)."""
    per: dict[int, list[str]] = {}
    sums = lane.hot_kind == SUM
    for key, acc in lane.hot.items():
        ekj, s = route(key)
        frags = per.get(owner[s])
        if frags is None:
            frags = per[owner[s]] = []
        frags.append(f'{ekj},"{acc}"' if sums else f"{ekj},{_members(acc)}")
    return per


def _members(acc: str | set[str]) -> str:
    """JSON of a set op's members: one as a string, several as an array."""
    if type(acc) is str:
        return _JSON_STR.get(acc) or _jstr(acc)
    if len(acc) == 1:
        m = next(iter(acc))
        return _JSON_STR.get(m) or _jstr(m)
    return "[" + ",".join([_JSON_STR.get(m) or _jstr(m) for m in acc]) + "]"


_JSON_STR: dict[str, str] = {}


def _jstr(s: str) -> str:
    """JSON of a set member, cached: members repeat (ports, client IPs, names)."""
    if len(_JSON_STR) >= MEMBER_CACHE:
        _JSON_STR.clear()
    j = _JSON_STR[s] = encode_basestring_ascii(s)
    return j


def coalesce_kinds(declared: dict[str, str], update_ops: tuple[str, ...]) -> dict[str, int]:
    """Op -> SUM / UNION / NONE, from a type's ``-- coalesce:`` header."""
    return {op: _KINDS.get(declared.get(op, ""), NONE) for op in (*update_ops, "clear")}
