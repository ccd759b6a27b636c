"""Batching: coalesce, group per node, hand each node's frames to its channel.

Two paths feed a batch:

* **lanes** (lanes.py) — trigger updates (``update()``), one lane per state, with
  commutative updates of a key merged while they wait;
* **requests** (requests.py) — sync and async ops with waiters.

A flush happens after ``delay`` once something is pending, at once when a batch is
full or a sync op waits. Its ops go out per node, lanes first, then requests in
arrival order, on the node's ordered channel (delivery.py). Memory is bounded:
``max_pending`` ops buffered plus unconfirmed; past it ``update()`` raises
:class:`Backpressure` and the async paths wait.

Every op is checked where it enters (``update()`` and the request builders): what
could not be encoded or applied is refused there, with an error naming it, so a
frame never carries an op that would sink its batch-mates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cogs.coordinator.client import Coordinator
from cogs.coordinator.frames import route
from cogs.coordinator.ops import wire_arg
from cogs.coordinator.reroute import Reroute
from cogs.errors import (
    BadDelta,
    BadKey,
    CogsError,
    DeliveryTimeout,
    Oversize,
    ProxyClosed,
    UnknownOp,
    refuse,
    show,
)
from cogs.keys import key_problem
from cogs.logs import fields
from cogs.protocol import IDEMPOTENT
from cogs.proxy.delivery import Batch, Channel, Delivery
from cogs.proxy.lanes import MAPSUM, NONE, SUM, UNION, Lane, encode
from cogs.proxy.order import as_request, fence, moved_from
from cogs.proxy.replies import ErrorHook, Replies
from cogs.proxy.requests import Req, RequestTable
from cogs.proxy.stats import BatchStatistics

log = logging.getLogger("cogs.proxy")

#: keys and members of at most this many chars with ASCII text need no further check
#: (escaping at most triples a key; a member is bounded by its state's max_member_bytes)
FAST_KEY = 512 // 4
FAST_MEMBER = 64



class Backpressure(CogsError):
    """The proxy's buffer is full (the coordinator is slower than the NF): retry later,
    or use ``await proxy.aupdate(...)`` which waits for room."""


class Batcher:
    def __init__(
        self,
        coord: Coordinator,
        token: str,
        proxy_id: str,
        requests: RequestTable,
        *,
        batch_max_ops: int,
        delay: float,
        max_pending: int,
        max_inflight: int = 2,
        durable: bool = False,
        durable_timeout: float = 1.0,
        command_timeout: float = 5.0,
        delivery_timeout: float = 30.0,
        reroute_timeout: float = 30.0,
        on_error: ErrorHook,
    ) -> None:
        self.coord = coord
        self.requests = requests
        self.batch_max, self.delay, self.max_pending = batch_max_ops, delay, max_pending
        self.on_error = on_error
        self.lanes: dict[str, Lane] = {}
        self.lane_factory: Callable[[str], Lane] | None = None
        self.queue: list[Req] = []
        # Ops buffered (lane groups + requests) = _np + (_granted - budget): the hot path
        # may open up to `budget` new ops by only decrementing it; _settle() books them.
        self._np = 0
        self._granted = self.budget = 0
        self.inflight = 0  # ops sent, reply not yet handled
        self._kick = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.max_inflight = max_inflight
        self.reroute = Reroute(reroute_timeout)  # how long an op may keep coming back MOVED/ASK
        self.delivery_timeout = delivery_timeout
        r = self.replies = Replies(self)
        self.delivery = Delivery(
            coord, token, proxy_id, durable=durable, durable_timeout=durable_timeout,
            command_timeout=command_timeout, delivery_timeout=delivery_timeout,
            on_reply=r.dispatch, on_failed=r.failed, on_settled=self._settled, on_overdue=r.overdue,
            on_error=on_error, spawn=self.spawn, tick=r.check, window=max_inflight, batch_max=batch_max_ops,
            limit=max_pending,
        )  # fmt: skip
        # flush()'s watermark: flushes are numbered, each batch is charged to the flush that
        # sent it (or to an older one whose MOVED ops it carries again); flush() waits for
        # the batches charged up to the flush that takes the ops pending at its call
        self._flushes = self._carry = 0  # _carry: the oldest flush with ops re-queued (0: none)
        self._charged: dict[Batch, int] = {}
        self._progress = asyncio.Event()
        self._per_node: tuple[Any, list[str]] = (None, [])
        #: ops on stalled channels (not in the proxy-wide bound), and a stalled channel
        #: over its own bound (then new ops are routed as they enter: theirs are refused)
        self._parked = 0
        self._full: Channel | None = None
        #: requests at the head of ``queue`` re-queued after MOVED/ASK, in issue order
        self._front = 0
        #: batches that must settle before anything new goes out (order across channels:
        #: re-queued ops, and ops of slots that moved, go after what is still on the way)
        self._barriers: list[tuple[Batch, Channel]] = []
        #: refuses new ops (the proxy is closing or closed); closed and every waiter answered
        self.closed = self.torn = False
        # statistics
        self._created = self.coalesced = self.ops_sent = self.ops_applied = self.batches = 0
        self.errors = self.backpressure = self.rerouted = 0

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
                        total = v + delta
                        if I64_MIN <= total <= I64_MAX:  # a sum the library can take (else: kept apart)
                            hot[key] = total
                            self.coalesced += 1
                            return
                    elif (
                        self.budget > 0 and 0 < len(key) <= FAST_KEY and key.isascii() and key not in lane.pending
                        and I64_MIN <= delta <= I64_MAX
                    ):  # fmt: skip
                        # a new op while a batch is open and has room: no bookkeeping but the budget
                        hot[key] = delta
                        self.budget -= 1
                        return
            elif type(delta) is str:  # UNION: one member stays a str until a second comes
                if v is not None:
                    if type(v) is str:
                        if v == delta:
                            self.coalesced += 1
                            return
                        if len(delta) <= FAST_MEMBER and delta.isascii():  # a new member: checked
                            hot[key] = {v, delta}
                            self.coalesced += 1
                            return
                    elif delta in v:
                        self.coalesced += 1
                        return
                    elif len(delta) <= FAST_MEMBER and delta.isascii():
                        v.add(delta)
                        self.coalesced += 1
                        return
                elif (
                    self.budget > 0
                    and 0 < len(key) <= FAST_KEY
                    and key.isascii()
                    and len(delta) <= FAST_MEMBER
                    and delta.isascii()
                    and key not in lane.pending
                ):
                    hot[key] = delta
                    self.budget -= 1
                    return
        self._update_slow(state, lane, key, op, delta)

    def _update_slow(self, state: str, lane: Lane | None, key: str, op: str, delta: Any) -> None:
        if lane is None:
            assert self.lane_factory is not None
            lane = self.lane_factory(state)
        acc = self._accumulator(lane, key, op, delta)
        kind = lane.kinds[op]
        if lane.replica:  # read-your-writes: no replica of the key older than this update is served
            self.requests.written(lane.sidx, key)
        g = lane.pending.get(key)
        if g is not None and g[-3] is None:  # sealed: the key's ops wait in the request queue; this one too
            self._reserve(lane.name, key)
            self.queue.append(as_request(lane, key, op, kind, acc))
            self._created += 1
            return
        hot = lane.hot
        if key in hot:
            v = hot.pop(key)
            if op == lane.hot_op and _merges(kind, v, acc):  # (a list of members, say: not the hot path's case)
                hot[key] = v + acc if kind == SUM else acc.union([v] if type(v) is str else v)
                self.coalesced += 1
                return
            # another op, or a sum past 64 bits: the key's ops go on in order in `pending` (already booked)
            lane.pending[key] = [lane.hot_op, lane.hot_kind, {v} if type(v) is str else v]
        g = lane.pending.get(key)
        if g is not None and g[-3] == op and kind != NONE and _merges(kind, g[-1], acc):
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
            self._reserve(lane.name, key)
            if op == lane.hot_op:
                hot[key] = acc
            else:
                lane.pending[key] = [op, kind, acc]
        else:
            self._reserve(lane.name, key)
            g += (op, kind, acc)
        self._created += 1

    def _accumulator(self, lane: Lane, key: str, op: str, delta: Any) -> Any:
        """What a new update adds to its key's pending op, checked: whatever could not
        be encoded or would be refused by the library is refused here, named."""
        kind = lane.kinds.get(op)
        if kind is None:
            known = ", ".join(lane.kinds)
            raise refuse(UnknownOp, f"not an update op of its type (has: {known})", state=lane.name, op=op)
        problem = key_problem(key)
        if problem is not None:
            raise refuse(BadKey, problem, state=lane.name, key=key, op=op)
        if kind == SUM:
            if type(delta) is not int:
                raise refuse(BadDelta, f"delta must be an int, got {show(delta)}", state=lane.name, key=key, op=op)
            if not I64_MIN <= delta <= I64_MAX:
                raise refuse(BadDelta, f"delta outside 64 bits: {show(delta)}", state=lane.name, key=key, op=op)
            return delta
        if kind == UNION:
            items = [delta] if type(delta) is str else delta
            if type(delta) is not str and (
                not isinstance(items, list | tuple | set | frozenset) or not all(type(m) is str for m in items)
            ):
                raise refuse(BadDelta, f"members must be str, got {show(delta)}", state=lane.name, key=key, op=op)
            if not items:
                raise refuse(BadDelta, "no members given", state=lane.name, key=key, op=op)
            for m in items:
                self._check_text(lane, m, "member", key, op)
            return set(items)
        if kind == MAPSUM:  # {field: int}: merged field by field
            ints = type(delta) is dict and all(type(v) is int and I64_MIN <= v <= I64_MAX for v in delta.values())
            if not delta or not ints:
                raise refuse(
                    BadDelta, f"delta must be a {{field: int}} dict of 64-bit ints, got {show(delta)}", state=lane.name,
                    key=key, op=op
                )
            for f in delta:
                self._check_text(lane, str(f), "field", key, op)
            return {str(f): v for f, v in delta.items()}
        try:
            return wire_arg(delta, lane.state_spec, op)
        except RecursionError:
            raise refuse(BadDelta, "delta nested too deeply to encode", state=lane.name, key=key, op=op) from None

    @staticmethod
    def _check_text(lane: Lane, text: str, what: str, key: str, op: str) -> None:
        try:
            n = len(text.encode())
        except UnicodeEncodeError:
            raise refuse(
                BadDelta, f"a {what} must be valid Unicode (it holds a lone surrogate): {show(text)}",
                state=lane.name, key=key, op=op,
            ) from None  # fmt: skip
        limit = lane.state_spec.max_member_bytes
        if n > limit:
            raise refuse(
                Oversize, f"a {what} is at most {limit} bytes (max_member_bytes), this one has {n}",
                state=lane.name, key=key, op=op,
            )  # fmt: skip

    def _settle(self) -> None:
        """Book the ops the hot path opened on its budget, and grant a new budget."""
        used = self._granted - self.budget
        self._np += used
        self._created += used
        np = self._np
        self._parked, self._full = self.delivery.parked()
        room = self.max_pending - np - self.inflight + self._parked
        if np == 0 or self._full is not None or self.closed:
            room = 0  # the first op of a batch starts its timer; a full channel: keys are routed (slow path)
        elif np < self.batch_max:
            room = min(room, self.batch_max - 1 - np)  # the op that fills the batch kicks the flush
        self._granted = self.budget = max(room, 0)

    def _reserve(self, state: str, key: str) -> None:
        self._settle()
        if self.closed:
            raise ProxyClosed(f"the proxy is closed: update of {state}[{show(key)}] refused")
        if self._np + self.inflight - self._parked >= self.max_pending:
            self.backpressure += 1
            raise Backpressure(
                f"proxy buffer full ({self.max_pending} ops pending or in flight) while updating {state}: "
                "the coordinator is slower than the NF; await proxy.aupdate(...) to wait for room"
            )
        if self._full is not None:
            ch = self._channel_full(key)
            if ch is not None:
                self.backpressure += 1
                raise Backpressure(
                    f"node {ch.addr} does not answer and holds {ch.ops} unconfirmed ops (max_pending) while "
                    f"updating {state}[{show(key)}]: updates of its keys wait until it answers (other nodes' "
                    "keys go on); await proxy.aupdate(...) to wait for room"
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

    def statistics(self) -> BatchStatistics:
        return BatchStatistics(
            updates=self.updates, coalesced=self.coalesced, ops_sent=self.ops_sent, ops_applied=self.ops_applied,
            batches=self.batches, pending_ops=self.npending, inflight_ops=self.inflight, errors=self.errors,
            backpressure=self.backpressure, rerouted=self.rerouted,
        )  # fmt: skip

    def has_room(self, ops: int = 1, key: str | None = None) -> bool:
        """Would ``ops`` new ops fit? For ``key``: on its node's channel too; for any
        key: on every channel (none is stalled and over its bound)."""
        return self._no_room(ops, key) is None

    def _no_room(self, ops: int, key: str | None) -> str | None:
        """Why ``ops`` new ops would not fit now (None: they would)."""
        parked, full = self.delivery.parked()
        used = self.npending + self.inflight - parked
        if used + ops > self.max_pending:
            return f"{used} ops buffered or unconfirmed (max_pending {self.max_pending})"
        if full is not None:  # ops of its node's keys would be refused: keyless callers may have some
            ch = full if key is None else self._channel_full(key)
            if ch is not None:
                return f"node {ch.addr} does not answer and holds {ch.ops} unconfirmed ops (max_pending)"
        return None

    def _channel_full(self, key: str) -> Channel | None:
        """The channel of ``key``'s node, if it is stalled and over its bound."""
        topo, streams = self._streams()
        ch = self.delivery.channels.get(streams[topo.owner[route(key)[1]]])
        if ch is not None and ch.ops >= self.max_pending and ch.stalled(time.monotonic()):
            return ch
        return None

    async def wait_room(self, ops: int = 1, key: str | None = None) -> None:
        """Wait until ``ops`` new ops fit (``key``: also on its node's channel), at most
        the delivery bound: then :class:`Backpressure` naming what is full."""
        ops = min(ops, self.max_pending)
        space = self.delivery.space
        deadline = 0.0
        while True:
            if self.closed:
                raise ProxyClosed("the proxy is closed: no room will be made")
            why = self._no_room(ops, key)
            if why is None:
                return
            now = time.monotonic()
            if not deadline:
                deadline = now + self.delivery_timeout
            elif now >= deadline:
                raise Backpressure(
                    f"no room for {ops} op(s) within {self.delivery_timeout:g} s: {why}; the coordinator "
                    "does not answer (what is queued stays queued and applies once it does)"
                )
            space.clear()
            self._kick.set()
            # a channel may stall meanwhile (its ops then leave the proxy-wide bound): look again
            await _wait(space, min(deadline - now, self.delivery.stall))

    # -- requests (sync / async ops) -----------------------------------------------------

    def submit(self, req: Req, *, now: bool) -> None:
        """Queue a request; ``now`` flushes at once (a sync op is waiting)."""
        self._settle()
        self._np += 1
        self._idle.clear()
        self.queue.append(req)
        lane = self.lanes.get(req.state)
        if lane is not None:  # the key's later lane ops must not go out before this request
            fence(lane, req.key)
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
        space = self.delivery.space
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            # At most `max_inflight` batches per node: while the coordinator works, the
            # next batch keeps filling (and coalescing) instead of queueing at Redis. A
            # stalled node holds up no other: its channel keeps what it is given.
            while not self._room():
                space.clear()
                await _wait(space, self.delivery.stall)  # a channel may stall meanwhile
            if self.npending:
                self._flush()

    def _room(self) -> bool:
        self._streams()  # a new slot map sets its barriers first
        if self._barriers and self._held():
            return False
        return self.delivery.room(self.max_inflight)

    def _held(self) -> bool:
        """Is a barrier batch still on its (answering) channel?"""
        now = time.monotonic()
        self._barriers = [(b, ch) for b, ch in self._barriers if not b.settled and not ch.stalled(now)]
        return bool(self._barriers)

    def barrier(self, stream: str) -> None:
        """Nothing new goes out before what is queued on ``stream`` now has settled."""
        ch = self.delivery.channels.get(stream)
        if ch is not None and ch.queue:
            self._barriers.append((ch.queue[-1], ch))

    async def drain(self) -> None:
        """Wait until every op issued before the call has been applied (or failed: errors
        go to on_error), at most the delivery bound from the call: then
        :class:`DeliveryTimeout`. Ops issued meanwhile are not waited for: under load
        from other tasks the proxy may never be idle."""
        unsent = self.npending
        target = self._flushes + (1 if unsent else 0)  # the flush that takes every op pending now
        if unsent:
            self._kick.set()
        try:
            async with asyncio.timeout(self.delivery_timeout):
                while not self._drained(target):
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            if self._flushes >= target:
                unsent = self.npending if 0 < self._carry <= target else 0  # (re-queued: at most that)
            unconfirmed = sum(b.nops for b, n in self._charged.items() if n <= target)
            raise DeliveryTimeout(
                f"flush: of the ops issued before it, {unsent} not sent yet and {unconfirmed} (with their "
                f"batch-mates) unconfirmed {self.delivery_timeout:g} s after the call (the coordinator does not "
                "answer); they stay queued and apply exactly once when it does, unless this proxy closes first"
            ) from None

    def _drained(self, target: int) -> bool:
        if self._flushes < target or 0 < self._carry <= target:
            return False
        return all(n > target for n in self._charged.values())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task owned by the proxy: cancelled and awaited by aclose()."""
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _streams(self) -> tuple[Any, list[str]]:
        """(topology, alert stream per node), rebuilt when the slot map changes. Ops of
        slots that moved to another channel wait until what their old channel still
        carries has settled (its MOVED ops are re-queued before them)."""
        topo = self.coord.topology
        assert topo is not None
        old, old_streams = self._per_node
        if old is not topo:
            streams = [self.coord.ns.alert_stream(n.first_slot) for n in topo.nodes]
            self._per_node = (topo, streams)
            if old is not None:
                for stream in moved_from(old.owner, old_streams, topo.owner, streams):
                    self.barrier(stream)
        return self._per_node

    def _flush(self) -> None:
        topo, streams = self._streams()
        lanes = [lane for lane in self.lanes.values() if lane.has_ops]
        frames = encode(lanes, self.queue, topo.owner, self.batch_max)
        for lane in lanes:
            lane.pending = {}
            lane.hot = {}
        self.queue = []
        self._front = 0
        self._settle()
        self._np = 0
        self._settle()
        now = time.monotonic()
        self._flushes += 1
        charge = self._carry or self._flushes  # re-queued ops go out now: charged as before
        self._carry = 0
        for n, node_frames in frames.items():
            stream = streams[n]
            for payload, count, reqs in node_frames:
                self.inflight += count
                self.ops_sent += count
                self.batches += 1
                numbered = count != len(reqs) or any(r.mode not in IDEMPOTENT for r in reqs.values())
                # a stalled channel may merge it into an older unwritten batch: that one carries the charge
                carrier = self.delivery.send(stream, Batch(payload, count, reqs, numbered, now))
                self._charged[carrier] = min(self._charged.get(carrier, charge), charge)
        self._progress.set()

    # -- replies -------------------------------------------------------------------------

    def _settled(self, b: Batch) -> None:
        self._charged.pop(b, None)
        self._progress.set()
        self.inflight -= b.nops
        self._settle()
        if not self.npending and not self.inflight:
            self._idle.set()

    def requeue(self, batch: Batch, back: list[Req], later: list[Req]) -> None:
        """Re-queued ops of ``batch`` (``back``, not booked) in front, behind earlier
        re-queued ones; ``later`` (their keys' lane ops, booked) right behind them."""
        if back:  # flush() waits for them as for the rest of their batch
            n = self._charged.get(batch, self._flushes)
            self._carry = min(self._carry or n, n)
        at = self._front
        self.queue[at:at] = back + later
        self._front += len(back)
        self._settle()
        self._np += len(back)
        self._settle()
        if back:
            self._idle.clear()
        if self._loop is not None and self._timer is None:
            self._timer = self._loop.call_later(max(self.delay, self.reroute.delay), self._kick.set)

    def drop_pending(self) -> None:
        """The proxy closed: what was never sent is gone (its waiters were answered)."""
        self.queue = []
        for lane in self.lanes.values():
            lane.hot, lane.pending = {}, {}
        self.torn = True
        self._idle.set()

    async def aclose(self) -> None:
        self.close_intake()
        if self._timer is not None:
            self._timer.cancel()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sent = self.delivery.batches()
        left = await self.delivery.aclose()
        unsent = self.replies.answer_all(sent)
        if left or unsent:
            log.error(
                "proxy closed with %d unconfirmed batch(es) (%d ops: their outcome is unknown) and %d op(s) never "
                "sent", left, sum(b.nops for _, b in sent), unsent, extra=fields(proxy=self.delivery.pid),
            )  # fmt: skip

    def close_intake(self) -> None:
        """Refuse new ops from now on (:class:`ProxyClosed`); what is pending goes on."""
        self.closed = True
        self._settle()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """``event.wait()`` for at most ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


I64_MIN, I64_MAX = -(2**63), 2**63 - 1  # the library's integers (Redis INCRBY/HINCRBY)


def _merges(kind: int, pending: Any, acc: Any) -> bool:
    """Whether ``acc`` may join the key's pending op: two sums (or two field maps) merge
    only while every total stays within 64 bits. A total past it would be refused whole
    at the coordinator, sinking updates that each were fine: they go on as ops apart."""
    if kind == SUM:
        return bool(I64_MIN <= pending + acc <= I64_MAX)
    if kind == MAPSUM:
        return all(I64_MIN <= pending.get(f, 0) + n <= I64_MAX for f, n in acc.items())
    return True
