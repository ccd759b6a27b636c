"""What comes back for the batcher's frames, and what never will.

* a reply: each op's result or error to its waiters (requests.py), the errors of
  updates nobody waits for to ``on_error``; ops refused ``MOVED``/``ASK`` re-queued in
  their place (order.py) and the slot map re-read;
* a batch the node refused whole; waiters past the delivery bound (the op stays
  queued); the proxy closing with ops still pending (every waiter answered).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from cogs.coordinator.client import Coordinator, parse_reply
from cogs.coordinator.frames import expand
from cogs.coordinator.reroute import Reroute
from cogs.errors import CogsError, CoordinatorUnavailable, DeliveryTimeout, Moved, ProxyClosed, op_error, show
from cogs.keys import unescape
from cogs.logs import fields
from cogs.proxy.delivery import Batch, Channel, Delivery
from cogs.proxy.lanes import Lane
from cogs.proxy.order import seal
from cogs.proxy.requests import Req, RequestTable

log = logging.getLogger("cogs.proxy")
ErrorHook = Callable[[CogsError, Any], None]


class Sender(Protocol):
    """What replies are handed back to: the batcher (its counters, queue and
    channels), named here so this room does not import the one that uses it."""

    coord: Coordinator
    delivery: Delivery
    delivery_timeout: float
    lanes: dict[str, Lane]
    queue: list[Req]
    requests: RequestTable
    reroute: Reroute
    on_error: ErrorHook
    ops_applied: int
    errors: int
    rerouted: int

    @property
    def npending(self) -> int: ...
    def kick(self) -> None: ...
    def barrier(self, stream: str) -> None: ...
    def requeue(self, batch: Batch, back: list[Req], later: list[Req]) -> None: ...
    def drop_pending(self) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class Replies:
    def __init__(self, batcher: Sender) -> None:
        self.b = batcher
        self._refreshing: asyncio.Task[Any] | None = None

    def dispatch(self, batch: Batch, raw: Any) -> None:
        b = self.b
        reply = parse_reply(raw)
        reqs = batch.reqs
        b.ops_applied += reply.applied
        moved: list[tuple[int, Moved]] = []
        flat: list[Any] | None = None
        for i, msg in reply.errors.items():
            if flat is None:
                flat = expand(json.loads(batch.payload))  # the rare path: recover what op i was
            req = reqs.get(i)
            state = req.state if req else self._state_name(flat[i][1])
            key = req.key if req else unescape(flat[i][3])
            err = op_error(msg, state=state, key=key, op=str(flat[i][2]))
            if isinstance(err, Moved):
                moved.append((i, err))
                continue
            b.errors += 1
            if req is not None:
                b.requests.fail(req, err)
            else:
                b.on_error(err, None)
        for i, value in reply.results.items():
            req = reqs.get(i)
            if req is not None:
                b.requests.resolve(req, value)
        if moved:
            assert flat is not None
            b.rerouted += len(moved)
            self._requeue(batch, flat, moved)
            b.barrier(batch.stream)  # ops of these keys still on their way there come back after them
            self._refresh_soon()

    def _state_name(self, sidx: int) -> str:
        for lane in self.b.lanes.values():
            if lane.sidx == sidx:
                return lane.name
        return f"#{sidx}"

    def _requeue(self, batch: Batch, flat: list[Any], which: list[tuple[int, Moved]]) -> None:
        """Put ops the coordinator did not apply (MOVED, or ASK while their slot is half
        moved) back in front of the queue, behind those re-queued before them (older):
        they were issued before anything queued now. Lane ops of their keys (newer) go
        behind them into the queue, and the keys are sealed so later ones follow. One
        still refused ``reroute_timeout`` s after the first time fails (a migration that
        never completes must not hold it, and flush(), forever)."""
        b = self.b
        back: list[Req] = []
        now = time.monotonic()
        for i, err in sorted(which, key=lambda m: m[0]):
            req = batch.reqs.get(i)
            if req is None:
                mode, sidx, op, ek, arg = flat[i]
                req = Req(mode, self._state_name(sidx), sidx, unescape(ek), op, arg, None)
            if b.reroute.expired(req.moved_at, now):
                b.errors += 1
                b.requests.fail(req, b.reroute.gave_up(err, state=req.state, key=req.key, op=req.op))
                continue
            req.moved_at = req.moved_at or now
            back.append(req)
        later: list[Req] = []
        for req in back:
            lane = b.lanes.get(req.state)
            if lane is not None:
                later += seal(lane, req.key)  # booked already: they only change places
        b.requeue(batch, back, later)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self.b.spawn(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.b.coord.refresh()
        except CoordinatorUnavailable as e:
            log.warning("slot map refresh failed: %s", e, extra=fields(proxy=self.b.delivery.pid))
        self.b.kick()

    def failed(self, batch: Batch, err: CogsError) -> None:
        """The node refused the whole batch for good (library outdated, bad frame)."""
        b = self.b
        b.errors += batch.nops
        for i in range(batch.nops):
            req = batch.reqs.get(i)
            if req is not None:
                b.requests.fail(req, err)
        if len(batch.reqs) < batch.nops:
            b.on_error(err, None)

    def check(self, now: float) -> None:
        """Requests not answered within the delivery bound of when they were issued: not
        even sent (no channel has room: a node does not answer), or sent in a batch
        younger than they are (they waited for room first, so the batch's own deadline
        comes too late). Their waiters learn it now; the requests stay queued."""
        b = self.b
        bound = b.delivery_timeout
        limit = now - bound
        for req in b.queue:
            if req.born < limit and not req.done and req.waiters:
                b.requests.fail(
                    req,
                    DeliveryTimeout(
                        f"{req.state}[{show(req.key)}] {req.op}: not sent within {bound:g} s (the "
                        "coordinator does not answer); it stays queued and applies exactly once when it does, "
                        "unless this proxy closes first"
                    ),
                )
        for ch in b.delivery.channels.values():
            for batch in ch.queue:
                for req in batch.reqs.values():
                    if req.born < limit and not req.done and req.waiters:
                        b.requests.fail(
                            req,
                            DeliveryTimeout(
                                f"{req.state}[{show(req.key)}] {req.op}: not confirmed within "
                                f"{bound:g} s of when it was issued (node {ch.addr}); it stays queued "
                                "and applies exactly once when the node answers, unless this proxy closes first"
                            ),
                        )

    def overdue(self, batch: Batch, err: DeliveryTimeout) -> None:
        """Not confirmed in time: waiters learn it now; the batch stays queued."""
        for req in batch.reqs.values():
            self.b.requests.fail(req, err)
        if len(batch.reqs) < batch.nops:
            updates = batch.nops - len(batch.reqs)
            self.b.on_error(DeliveryTimeout(f"{updates} update(s) of batch {batch.seq}: {err}"), None)

    def answer_all(self, sent: list[tuple[Channel, Batch]]) -> int:
        """The proxy closed: every waiter still pending gets :class:`ProxyClosed` (an op
        sent and not confirmed: outcome unknown; one never sent: not applied). The ops
        never sent are dropped; their number."""
        b = self.b
        for ch, batch in sent:
            if batch.sends:
                why = f"confirmed batch {batch.seq}: the outcome of its ops is unknown"
            else:
                why = "answered: the op was never sent, not applied"
            err = ProxyClosed(f"the proxy closed before node {ch.addr} {why}")
            for req in batch.reqs.values():
                if req.waiters:
                    b.requests.fail(req, err)
        unsent = b.npending
        for req in b.queue:
            if req.waiters:
                why = f"{req.state}[{show(req.key)}] {req.op}: the proxy closed before it was sent: not applied"
                b.requests.fail(req, ProxyClosed(why))
        b.drop_pending()
        return unsent
