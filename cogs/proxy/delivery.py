"""Delivery: one ordered channel per coordinator node, exactly once across faults.

A proxy reaches each node through a :class:`Channel`, named by the node's alert
stream (its tag is a slot the node serves; after a failover the promoted replica
serves it, and the channel follows). A channel is one pipelined connection and a
queue of the batches sent on it whose replies have not come back:

* **Numbers.** Each proxy start draws a random session secret; on each channel the
  batches with updates are numbered 1, 2, 3, ... with no gaps, and each carries the
  highest number whose reply came back ("ack"). The node's record
  (lua/once.lua) applies number last + 1, answers a re-send with its stored reply,
  and refuses a number past last + 1 (``GAP``): "not seen" is never taken for
  "applied". Batches of reads and locator ops only (which may be applied twice) go
  without a number, on the same channel, in the same order.
* **Order.** Batches are written in queue order, at most ``window`` unanswered at a
  time; replies come back in that order. A failed or timed-out call, a transient
  refusal (cluster down, loading, failing over: nothing applied) or a ``GAP`` drops
  the connection and every reply still due on it; the channel reconnects
  (re-reading the slot map, with backoff) and writes its queue again, oldest first,
  before anything new. So no newer batch ever overtakes an unresolved older one, and
  re-sends are answered by the record. A batch takes its number when first written.
* **Room per node.** A channel whose node has not answered its oldest batch within
  ``stall`` s (frozen, cut off, reconnecting) is *stalled*: the batcher stops
  waiting for its window and hands it new batches anyway, which it keeps unwritten
  (merged into one while they fit ``batch_max``) until the node answers. Its ops
  leave the proxy-wide buffer bound (``parked``) for a bound of their own
  (``limit`` ops per channel: past it the channel is ``full``), so one stuck node
  never holds up the others.
* **Durable mode.** A numbered batch counts as done only once ``WAIT 1`` says a
  replica has it; otherwise it is re-sent (the record answers it, and refreshes
  itself: a write, so the next ``WAIT`` covers the original).
* **Loss is reported, never hidden.** When a failover lost batches the node had
  acknowledged (default mode's window), the node says ``LOST`` (acknowledged up to
  the ack, it has fewer): the proxy reports :class:`AckedLost` with their ops, then
  resynchronises the record and goes on.
* **Bounded waits.** A batch not confirmed within ``delivery_timeout`` fails its
  waiters with :class:`DeliveryTimeout` (outcome unknown); it stays queued and is
  applied exactly once when the node answers again, unless the proxy closes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio

from cogs.coordinator.client import Coordinator
from cogs.errors import AckedLost, ChannelError, CogsError, CoordinatorUnavailable, DeliveryTimeout, from_redis
from cogs.keys import slot, stream_tag
from cogs.logs import fields
from cogs.protocol import CHANNEL_GAP, CHANNEL_LOST, ONCE_TTL_MS
from cogs.proxy.link import NodeLink
from cogs.proxy.requests import Req

log = logging.getLogger("cogs.proxy")
#: an idle channel sends an empty batch this often, so its record never expires while the proxy lives
KEEPALIVE_S = ONCE_TTL_MS / 4000
RECENT = 4096  # acknowledged batches remembered per channel (to count the ops of a loss)
#: a node that has not answered a batch for this long holds up no other node's ops
STALL_S = 0.25
_NUMBER = re.compile(r"^\S+ (\d+)")


@dataclass(eq=False, slots=True)
class Batch:
    """One frame for one node: its payload, its ops, who waits for which op."""

    payload: str
    nops: int
    reqs: dict[int, Req]
    #: carries a number (it has ops that must not apply twice)
    numbered: bool
    born: float
    seq: int = 0
    #: not confirmed within the delivery bound: its waiters were told so; still queued
    overdue: bool = False
    #: writes so far (1: never re-sent)
    sends: int = 0
    #: when last written (monotonic s)
    sent_at: float = 0.0
    #: payloads of later batches merged in before it was first written (joined then)
    more: list[str] | None = None
    #: out of its channel's queue (confirmed or failed for good)
    settled: bool = False
    #: the channel it went to (its node's alert stream)
    stream: str = ""

    def merge(self, b: Batch) -> None:
        """Append ``b``'s ops (an unwritten batch of the same channel, issued later)."""
        if self.more is None:
            self.more = []
        self.more.append(b.payload)
        self.reqs.update({i + self.nops: r for i, r in b.reqs.items()})
        self.nops += b.nops
        self.numbered = self.numbered or b.numbered

    def text(self) -> str:
        """The payload, merged batches joined into one run frame."""
        if self.more:
            self.payload = "[" + ",".join([self.payload[1:-1], *(p[1:-1] for p in self.more)]) + "]"
            self.more = None
        return self.payload


@dataclass(frozen=True)
class DeliveryStatistics:
    #: batches written more than once (after a lost connection or a transient refusal)
    resent_batches: int
    #: channel outages (connection lost or node unable) ridden out, and the longest pause
    outages: int
    longest_pause_s: float
    #: batches refused GAP (an older one was missing on arrival) and re-sent in order
    gaps: int
    #: acknowledged batches a failover lost (reported as AckedLost), and their ops
    lost_batches: int
    lost_ops: int
    #: batches not confirmed within the delivery bound (waiters told DeliveryTimeout)
    overdue_batches: int
    #: batches queued on a channel, not confirmed yet
    unconfirmed_batches: int
    #: channels whose node has not answered within the stall threshold (or is being
    #: reconnected): their ops wait there, bounded, while the other nodes' ops go on
    stalled_channels: int


class Delivery:
    """The channels of one proxy session; the batcher sends its frames here."""

    def __init__(
        self,
        coord: Coordinator,
        token: str,
        proxy_id: str,
        *,
        durable: bool,
        durable_timeout: float,
        command_timeout: float,
        delivery_timeout: float,
        on_reply: Callable[[Batch, Any], None],
        on_failed: Callable[[Batch, CogsError], None],
        on_settled: Callable[[Batch], None],
        on_overdue: Callable[[Batch, DeliveryTimeout], None],
        on_error: Callable[[CogsError, Any], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        tick: Callable[[float], None] | None = None,
        window: int = 2,
        batch_max: int = 2000,
        limit: int = 200_000,
    ) -> None:
        self.coord, self.token, self.pid = coord, token, proxy_id
        self.fn_batch = coord.ns.fn_batch  # this NF's function (cogs_batch, or cogs_<nf>_batch)
        #: the session secret: batches numbered under it are this process's alone
        self.session = secrets.token_hex(16)
        self.durable, self.durable_timeout = durable, durable_timeout
        self.command_timeout, self.delivery_timeout = command_timeout, delivery_timeout
        self.on_reply, self.on_failed, self.on_settled = on_reply, on_failed, on_settled
        self.on_overdue, self.on_error, self.spawn = on_overdue, on_error, spawn
        self.tick = tick  # called with the time at every watch step (ops not sent yet have deadlines too)
        #: batches written and unanswered per channel; ops a stalled channel may hold
        self.window, self.batch_max, self.limit = window, batch_max, limit
        #: a node that has not answered for this long is stalled (others stop waiting for it)
        self.stall = min(STALL_S, delivery_timeout / 8)
        self.channels: dict[str, Channel] = {}
        self.space = asyncio.Event()  # set whenever a batch leaves a channel
        self.closed = False  # no (re)connection after aclose()
        self.resent = self.outages = self.gaps = self.lost_batches = self.lost_ops = self.overdue = 0
        self.pauses: list[float] = []

    def send(self, stream: str, b: Batch) -> Batch:
        """Queue ``b`` on ``stream``'s channel; the batch that carries its ops (``b``, or
        an older unwritten one it was merged into)."""
        b.stream = stream
        ch = self.channels.get(stream)
        if ch is None:
            ch = self.channels[stream] = Channel(self, stream)
        return ch.send(b)

    def room(self, max_inflight: int) -> bool:
        """May a batch go out now? Not while a channel that answers has ``max_inflight``
        batches queued (the next batch keeps coalescing meanwhile); a stalled channel
        holds up nobody: it keeps what it is given until its node answers."""
        now = time.monotonic()
        return all(len(ch.queue) < max_inflight or ch.stalled(now) for ch in self.channels.values())

    def parked(self) -> tuple[int, Channel | None]:
        """(ops on stalled channels, which count against their channel's own bound and
        not the proxy's; a stalled channel holding ``limit`` ops or more, if any)."""
        now = time.monotonic()
        ops, full = 0, None
        for ch in self.channels.values():
            if ch.ops and ch.stalled(now):
                ops += ch.ops
                if ch.ops >= self.limit:
                    full = ch
        return ops, full

    @property
    def unconfirmed(self) -> int:
        return sum(len(ch.queue) for ch in self.channels.values())

    def statistics(self) -> DeliveryStatistics:
        now = time.monotonic()
        return DeliveryStatistics(
            resent_batches=self.resent,
            outages=self.outages,
            longest_pause_s=max(self.pauses, default=0.0),
            gaps=self.gaps,
            lost_batches=self.lost_batches,
            lost_ops=self.lost_ops,
            overdue_batches=self.overdue,
            unconfirmed_batches=self.unconfirmed,
            stalled_channels=sum(1 for ch in self.channels.values() if ch.stalled(now)),
        )

    async def watch(self) -> None:
        """Deadlines and keepalives, until cancelled."""
        while True:
            await anyio.sleep(min(0.5, self.delivery_timeout / 4))
            now = time.monotonic()
            if self.tick is not None:
                self.tick(now)
            for stream, ch in list(self.channels.items()):
                ch.check_deadlines(now)
                if not ch.queue and ch.seq and now - ch.last_sent > KEEPALIVE_S:
                    ch.send(Batch("[]", 0, {}, True, now))
                elif not ch.queue and not ch.seq and ch.task is None and now - ch.last_sent > 60:
                    del self.channels[stream]  # a channel of an old topology that never numbered anything
                    await ch.aclose()

    def batches(self) -> list[tuple[Channel, Batch]]:
        """Every batch still queued, per channel in order."""
        return [(ch, b) for ch in self.channels.values() for b in ch.queue]

    async def aclose(self) -> int:
        """Close every channel; the number of batches left unconfirmed (reported)."""
        self.closed = True
        left = 0
        for ch in self.channels.values():
            left += len(ch.queue)
            await ch.aclose()
        return left


class Channel:
    def __init__(self, d: Delivery, stream: str) -> None:
        self.d, self.stream = d, stream
        self.slot = slot(stream_tag(stream))
        self.link: NodeLink | None = None
        self.gen = 0  # connection generation: replies due on an older one are void
        self.seq = 0  # the last number given
        self.acked = 0  # every batch up to this number has its reply
        self.resync = False  # a loss was reported: the next batches reset the record
        #: sent (or to be sent), reply not in yet; the first ``written`` are on the connection
        self.queue: deque[Batch] = deque()
        self.written = 0
        self.ops = 0  # ops in the queue
        self.task: asyncio.Task[None] | None = None  # (re)connecting
        self.down_since = 0.0  # when the current (re)connection began
        self.trouble_since = 0.0
        self.last_sent = time.monotonic()
        self.recent: deque[tuple[int, int]] = deque(maxlen=RECENT)  # (number, ops) acknowledged

    @property
    def addr(self) -> str:
        return self.link.addr if self.link is not None else "?"

    def stalled(self, now: float) -> bool:
        """Reconnecting, or its oldest batch unanswered, for longer than ``stall``."""
        if self.task is not None:
            return bool(self.queue) and now - self.down_since > self.d.stall
        return bool(self.written) and now - self.queue[0].sent_at > self.d.stall

    def send(self, b: Batch) -> Batch:
        q = self.queue
        tail = q[-1] if len(q) > self.written else None  # not written yet: b may join it
        if (  # never into a batch written before: the node may hold its reply under its number
            tail is not None and not tail.sends and tail.nops and b.nops and not tail.overdue
            and tail.nops + b.nops <= self.d.batch_max
        ):  # fmt: skip
            tail.merge(b)
            carrier = tail
        else:
            q.append(b)
            carrier = b
        self.ops += b.nops
        self.last_sent = b.born
        self._pump()
        return carrier

    def _pump(self) -> None:
        """Write queued batches, oldest first, up to ``window`` unanswered."""
        q, window = self.queue, self.d.window
        while self.written < len(q) and self.written < window:
            if self.task is not None:
                return  # reconnecting: the queue goes when it is back
            if self.link is None:
                self._trouble(None)  # the first connection
                return
            if not self.link.ready:  # the connection dropped (its failed replies are on their way)
                self._trouble(CoordinatorUnavailable(f"coordinator node {self.link.addr}: connection lost"))
                return
            b = q[self.written]
            self.written += 1
            self._write(b)

    def _args(self, b: Batch) -> tuple[Any, ...]:
        d = self.d
        args: tuple[Any, ...] = ("FCALL", d.fn_batch, 0, d.token, self.stream, b.text(), d.pid)
        if b.numbered:
            if not b.seq:  # numbered when first written: numbers follow the queue's order
                self.seq += 1
                b.seq = self.seq
            args += (d.session, str(b.seq), str(self.acked))
            if self.resync:
                args += ("R",)
        return args

    def _write(self, b: Batch) -> None:
        link = self.link
        assert link is not None
        b.sends += 1
        b.sent_at = time.monotonic()
        if b.sends > 1:
            self.d.resent += 1
        fut = link.send(self._args(b), self.d.command_timeout)
        if self.d.durable and b.numbered:
            ms = int(self.d.durable_timeout * 1000)
            wait = link.send(("WAIT", 1, ms), self.d.command_timeout + self.d.durable_timeout)
            fut.add_done_callback(_retrieved)
            wait.add_done_callback(functools.partial(self._replied, b, self.gen, fut))
        else:
            fut.add_done_callback(functools.partial(self._replied, b, self.gen, None))

    def _pop(self, b: Batch) -> None:
        self.queue.popleft()
        self.written -= 1
        self.ops -= b.nops
        b.settled = True

    def _replied(self, b: Batch, gen: int, first: asyncio.Future[Any] | None, fut: asyncio.Future[Any]) -> None:
        if gen != self.gen:
            _retrieved(fut)
            return  # due on a dropped connection: the batch was (or will be) written again
        if not self.queue or self.queue[0] is not b:  # replies come in write order: never
            _retrieved(fut)
            self._trouble(CoordinatorUnavailable(f"node {self.addr}: a reply out of order (batch {b.seq})"))
            return
        call = first if first is not None else fut
        exc = None if not call.cancelled() and call.exception() is None else call
        if exc is not None:
            _retrieved(fut)
            err = from_redis(_exception(exc), self.addr)
            if isinstance(err, CoordinatorUnavailable):  # nothing applied, or not known: the queue goes again
                if str(err).split(": ", 1)[-1].startswith(CHANNEL_GAP):
                    self._gap(err)
                self._trouble(err)
            elif isinstance(err, ChannelError) and err.code == CHANNEL_LOST:
                self._lost(err)
            else:  # refused for good (library outdated, bad frame): this batch fails, the rest go on
                self._pop(b)
                self.d.on_failed(b, err)
                self._settled(b)
                self._pump()
            return
        if first is not None:  # durable: the WAIT reply
            replicas = None if fut.cancelled() or fut.exception() is not None else fut.result()
            if not isinstance(replicas, int) or replicas < 1:
                self._trouble(
                    CoordinatorUnavailable(
                        f"node {self.addr}: no replica acknowledged batch {b.seq} within "
                        f"{self.d.durable_timeout:g} s (durable mode waits for one)"
                    )
                )
                return
        self._pop(b)
        if b.numbered:
            self.acked = b.seq
            self.resync = False
            self.recent.append((b.seq, b.nops))
        if b.overdue:
            log.warning(
                "node %s: batch %d confirmed %.1f s after it was sent", self.addr, b.seq, time.monotonic() - b.born,
                extra=fields(proxy=self.d.pid, node=self.addr),
            )  # fmt: skip
        self.d.on_reply(b, call.result())  # first: ops it re-queues (MOVED) are pending before it counts as done
        self._settled(b)
        self._pump()

    def _settled(self, b: Batch) -> None:
        self.d.on_settled(b)
        self.d.space.set()

    def _gap(self, err: CogsError) -> None:
        """The node expects an older number than the oldest queued: batches in between
        failed for good before its record saw them. Empty batches take their numbers,
        so a stale copy of one of them can never be applied later."""
        self.d.gaps += 1
        m = _NUMBER.match(str(err).split(": ", 1)[-1])
        numbered = [b for b in self.queue if b.numbered and b.seq]
        if m is None or not numbered:
            return
        expected, head = int(m[1]), numbered[0].seq
        born = self.queue[0].born  # as old as the queue's head: deadlines stay in queue order
        fences = [Batch("[]", 0, {}, True, born, seq=n) for n in range(expected, head)]
        self.queue.extendleft(reversed(fences))

    def _lost(self, err: ChannelError) -> None:
        m = _NUMBER.match(str(err).split(": ", 1)[-1])
        last = int(m[1]) if m else 0
        gone = [(n, ops) for n, ops in self.recent if n > last]
        known = sum(ops for _, ops in gone)
        batches = self.acked - last
        self.d.lost_batches += batches
        self.d.lost_ops += known
        ops = known if len(gone) == batches else None
        count = str(ops) if ops is not None else "an unknown number of"
        self.d.on_error(
            AckedLost(
                f"node {self.addr}: {batches} acknowledged batch(es) ({count} ops) were lost: the node now has "
                f"this session's batches up to {last} of {self.acked} (a failover "
                "before its replica had them; durable mode closes this window)",
                node=self.addr, batches=batches, ops=ops,
            ),
            None,
        )  # fmt: skip
        self.resync = True
        self._trouble(err)

    def _trouble(self, err: CogsError | None) -> None:
        """Drop the connection (replies still due on it are void) and write the queue
        again on a new one; ``err`` None: the first connection."""
        if self.task is not None or self.d.closed:
            return
        self.gen += 1
        self.written = 0  # nothing is on a connection any more
        self.down_since = time.monotonic()
        if err is not None:
            if not self.trouble_since:
                self.trouble_since = time.monotonic()
                self.d.outages += 1
                log.warning(
                    "%s: re-sending %d unconfirmed batch(es) in order", err, len(self.queue),
                    extra=fields(proxy=self.d.pid, node=self.addr),
                )  # fmt: skip
            if self.link is not None:
                self.link.drop(err)
        self.task = self.d.spawn(self._recover(err is not None))

    async def _recover(self, backoff: bool) -> None:
        attempt = 0
        try:
            while True:
                if backoff or attempt:
                    await anyio.sleep(min(0.01 * 2 ** min(attempt, 6), 0.5))
                    with contextlib.suppress(CoordinatorUnavailable):
                        await self.d.coord.refresh()
                attempt += 1
                try:
                    await self._connect()
                except CoordinatorUnavailable as e:
                    if attempt == 1 or attempt % 20 == 0:
                        log.warning("%s (attempt %d)", e, attempt, extra=fields(proxy=self.d.pid))
                    continue
                break
        finally:
            self.task = None
        if self.trouble_since:
            self.d.pauses.append(time.monotonic() - self.trouble_since)
            self.trouble_since = 0.0
        self._pump()  # oldest first: nothing overtakes them

    async def _connect(self) -> None:
        topo = self.d.coord.topology
        if topo is None:
            raise CoordinatorUnavailable("no slot map yet")
        node = topo.nodes[topo.owner[self.slot]]
        link = self.link
        if link is None or link.addr != node.addr:
            if link is not None:
                await link.aclose()
            client = self.d.coord.node_client(topo.owner[self.slot])
            pool = client.connection_pool
            link = self.link = NodeLink(node.addr, pool.connection_class, pool.connection_kwargs)
        await link.open()

    def check_deadlines(self, now: float) -> None:
        for b in self.queue:
            if now - b.born <= self.d.delivery_timeout:
                break  # the rest are younger
            if not b.overdue:
                b.overdue = True
                self.d.overdue += 1
                self.d.on_overdue(
                    b,
                    DeliveryTimeout(
                        f"node {self.addr}: not confirmed within {self.d.delivery_timeout:g} s"
                        f"{'' if self.task is None else ' (the node does not answer)'}; it stays queued and "
                        "applies exactly once when the node answers, unless this proxy closes first"
                    ),
                )

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.link is not None:
            await self.link.aclose()


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark a reply's error seen (a reply due on a dropped connection is void)."""
    if not fut.cancelled():
        fut.exception()


def _exception(fut: asyncio.Future[Any]) -> BaseException:
    if fut.cancelled():
        return CoordinatorUnavailable("the call was cancelled")
    exc = fut.exception()
    assert exc is not None
    return exc
