"""BlockingStateProxy: the same proxy for NFs written in plain synchronous Python.

A StateProxy runs on an event loop in a background thread (anyio's blocking portal),
for the whole life of the facade: one implementation, two ways in. ``update`` and
the async forms hand their arguments over through a deque, so a call costs well
under a microsecond and keeps issue order with the sync calls; the sync forms wait
for their reply. Callbacks of ``asyn_up`` / ``asyn_retrieve`` run on the proxy's
thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, Self

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from cogs import runtime
from cogs.errors import BadDelta, CogsError, DeliveryTimeout, UnknownOp, refuse
from cogs.proxy.batcher import Backpressure
from cogs.proxy.lanes import SUM
from cogs.proxy.proxy import StateProxy
from cogs.proxy.requests import Callback
from cogs.proxy.stats import ProxyStatistics

_UPDATE, _ASYN_UP, _ASYN_RETRIEVE, _MARK = 0, 1, 2, 3


class BlockingStateProxy:
    """``with BlockingStateProxy(url) as proxy:`` — StateProxy's API without ``await``."""

    def __init__(self, url: str | None = None, *, max_queued: int = 200_000, **kwargs: Any) -> None:
        self._cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("asyncio", runtime.backend_options())
        self._portal = self._cm.__enter__()
        self._stop: anyio.Event | None = None
        self._q: deque[tuple[int, tuple[Any, ...]]] = deque()
        self._scheduled = False
        self._max_queued = max_queued
        self._drained = threading.Event()
        self._drained.set()
        self._proxy: StateProxy
        try:
            self._done, self._proxy = self._portal.start_task(self._lifetime, url, kwargs)
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise
        self.id = self._proxy.id
        self.catalog = self._proxy.catalog
        # what update() can check in the caller's thread (the rest surfaces via on_error)
        self._kinds: dict[str, dict[str, int]] = {}

    async def _lifetime(self, url: str | None, kwargs: dict[str, Any], *, task_status: TaskStatus[StateProxy]) -> None:
        self._stop = anyio.Event()
        async with StateProxy(url, **kwargs) as proxy:
            task_status.started(proxy)
            await self._stop.wait()
            await self._drain()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop is None:
            return
        stop, self._stop = self._stop, None
        self._portal.call(stop.set)
        self._done.result(timeout=30)
        self._cm.__exit__(None, None, None)

    # -- calls handed over without waiting -------------------------------------------------

    def _lane_kinds(self, state: str) -> dict[str, int]:
        kinds = self._kinds.get(state)
        if kinds is None:
            kinds = self._kinds[state] = dict(self._portal.call(self._make_lane, state))
        return kinds

    async def _make_lane(self, state: str) -> dict[str, int]:
        return self._proxy.update_ops(state)

    def update(self, state: str, key: str, op: str, delta: Any = 1) -> None:
        """Update(key, op, delta): returns at once; blocks only while the queue is full."""
        kinds = self._kinds.get(state) or self._lane_kinds(state)
        kind = kinds.get(op)
        if kind is None:
            raise refuse(UnknownOp, f"not an update op of its type (has: {', '.join(kinds)})", state=state, op=op)
        if kind == SUM and type(delta) is not int:
            raise refuse(BadDelta, f"delta must be an int, got {delta!r}", state=state, key=key, op=op)
        self._hand_over(_UPDATE, (state, key, op, delta))

    def asyn_up(self, state: str, key: str, op: str, delta: Any, callback: Callback, packet: Any = None) -> None:
        self._hand_over(_ASYN_UP, (state, key, op, delta, callback, packet))

    def asyn_retrieve(
        self, state: str, key: str, op: str | None, callback: Callback, packet: Any = None, arg: Any = None
    ) -> None:
        self._hand_over(_ASYN_RETRIEVE, (state, key, op, callback, packet, arg))

    def _hand_over(self, kind: int, args: tuple[Any, ...]) -> None:
        if len(self._q) >= self._max_queued and kind != _MARK:
            # backpressure: the caller waits for the loop to catch up, at most the delivery
            # bound; then nothing is queued and the caller is told
            bound = self._proxy.settings.delivery_timeout_s
            if not self._drained.wait(bound):
                raise Backpressure(
                    f"{len(self._q):,} calls wait in the facade's queue (max_queued={self._max_queued:,}) and "
                    f"none of them found room in the proxy for {bound:g} s: this one was not queued"
                )
        self._q.append((kind, args))
        if not self._scheduled:
            self._scheduled = True
            self._drained.clear()
            self._portal.start_task_soon(self._drain)

    async def _drain(self) -> None:
        # Clear the flag first: an item appended after this point schedules another drain.
        self._scheduled = False
        p, q = self._proxy, self._q
        while q:
            kind, args = q[0]
            try:
                if kind == _MARK:
                    args[0].set()  # a flush's watermark: everything handed over before it is issued
                elif kind == _UPDATE:
                    p.update(*args)
                elif kind == _ASYN_UP:
                    p.asyn_up(*args)
                else:
                    p.asyn_retrieve(*args)
            except Backpressure:
                await p.wait_room()
                continue
            except CogsError as e:
                p.report_error(e, args[-1] if kind != _UPDATE else None)
            q.popleft()
        if not self._scheduled:
            self._drained.set()

    # -- calls that wait for their reply ---------------------------------------------------

    def syn_up(self, state: str, key: str, op: str, delta: Any = None) -> Any:
        return self._portal.call(self._proxy.syn_up, state, key, op, delta)

    def syn_retrieve(self, state: str, key: str, op: str | None = None, arg: Any = None) -> Any:
        return self._portal.call(self._proxy.syn_retrieve, state, key, op, arg)

    def syn_check(self, state: str, key: str, op: str = "checker", arg: Any = None) -> bool:
        return bool(self._portal.call(self._proxy.syn_check, state, key, op, arg))

    def cached(self, state: str, key: str) -> Any:
        return self._proxy.cached(state, key)

    def flush(self) -> None:
        """Wait until everything this facade was handed before the call has been applied
        at the coordinator (or failed: errors go to on_error), not for what other threads
        hand over meanwhile; ``COGS_DELIVERY_TIMEOUT_S`` after the call at most: then
        :class:`DeliveryTimeout` (the ops stay queued and apply exactly once)."""
        bound = self._proxy.settings.delivery_timeout_s
        deadline = time.monotonic() + bound
        mark = threading.Event()
        self._hand_over(_MARK, (mark,))  # behind every update handed over before this call
        if not mark.wait(bound):
            raise DeliveryTimeout(
                f"flush: {len(self._q)} call(s) still wait in the facade's queue after {bound:g} s (the proxy "
                "has no room: the coordinator does not keep up or does not answer); they stay queued and are "
                "issued, then applied exactly once, when it does"
            )
        self._portal.call(self._flush_until, deadline, bound)

    async def _flush_until(self, deadline: float, bound: float) -> None:
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as scope:
            await self._proxy.flush()
        if scope.cancelled_caught:
            raise DeliveryTimeout(
                f"flush: not every op issued before the call was confirmed within {bound:g} s; they stay "
                "queued and apply exactly once when the coordinator answers"
            )

    def statistics(self) -> ProxyStatistics:
        return self._proxy.statistics()

    def future(self, state: str, key: str, op: str | None = None) -> Future[Any]:
        """SynRetrieve without blocking: a concurrent Future of the state."""
        return self._portal.start_task_soon(self._proxy.syn_retrieve, state, key, op)
