"""Feeding packets to a detector on a StateProxy, so that no packet ends a middlebox.

:class:`Feeder` is what a middlebox process (pcap replay or live capture) runs
around its detector:

* a packet whose handling raises (a parser bug, a key the proxy refuses, anything
  but a deployment error) is **counted and skipped**: ``packets skipped (<error>)``
  in the detector's counters, the first few logged with a bounded message;
* the detector's updates go to the proxy; when its buffer is full (the coordinator
  is slower than the traffic) they wait in a local backlog, in order, until
  :meth:`Feeder.settle` has made room, instead of being lost or raising;
* the detector's states are checked against the coordinator's catalog before the
  first packet, so a deployment without them fails at once with one clear line
  instead of skipping every packet.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import Any

from cogs.errors import ConfigError
from cogs.nf.detectors import DETECTORS, Detector
from cogs.nf.frames import Packet
from cogs.nf.ident import bounded_message
from cogs.proxy import Backpressure, StateProxy

log = logging.getLogger("cogs.nf")

#: skipped packets logged one by one per process; the rest only counted
LOGGED_SKIPS = 5


class Feeder:
    """One detector fed by one middlebox, its updates under ``prefix`` on ``proxy``."""

    def __init__(self, proxy: StateProxy, nf: str, prefix: str = "", box: str = "") -> None:
        if nf not in DETECTORS:
            raise ConfigError(f"unknown NF {nf!r} (have: {', '.join(DETECTORS)})")
        cls = DETECTORS[nf]
        missing = [s for s in cls.states if s not in proxy.catalog]
        if missing:
            raise ConfigError(
                f"{nf} needs the state(s) {', '.join(missing)}, which the coordinator's catalog lacks "
                "(load the default catalog: cogs catalog load)"
            )
        self.proxy, self.box = proxy, box
        self.backlog: deque[tuple[str, str, str, Any]] = deque()
        self.skipped = 0
        upd, backlog = proxy.update, self.backlog

        def update(state: str, key: str, op: str, delta: Any) -> None:
            if backlog:  # keep the order of updates to a key: behind the waiting ones
                backlog.append((state, prefix + key, op, delta))
                return
            try:
                upd(state, prefix + key, op, delta)
            except Backpressure:
                backlog.append((state, prefix + key, op, delta))

        self.detector: Detector = cls(update)

    def feed(self, packets: Iterable[Packet]) -> None:
        """Run the detector on ``packets``; a packet that fails is counted and skipped."""
        handle = self.detector.packet
        for p in packets:
            try:
                handle(p)
            except Exception as e:  # no packet ends the middlebox
                self._skip(p, e)

    def _skip(self, p: Packet, e: Exception) -> None:
        self.skipped += 1
        self.detector.counters[f"packets skipped ({type(e).__name__})"] += 1
        if self.skipped <= LOGGED_SKIPS:
            log.warning(
                "middlebox %s: skipped a packet %s:%s > %s:%s: %s: %s%s",
                self.box, p.src, p.sport, p.dst, p.dport, type(e).__name__, bounded_message(str(e)),
                " (further skips only counted)" if self.skipped == LOGGED_SKIPS else "",
            )  # fmt: skip

    async def settle(self, room: int) -> None:
        """Hand the backlog to the proxy as room frees up, then wait until ``room``
        more updates fit (what the next batch of packets may issue)."""
        backlog, proxy = self.backlog, self.proxy
        while backlog:
            await patient_room(proxy, 1, self.detector.counters)
            while backlog and proxy.has_room():
                state, key, op, delta = backlog.popleft()
                try:
                    proxy.update(state, key, op, delta)
                except Backpressure:  # has_room said yes; another op took it meanwhile
                    backlog.appendleft((state, key, op, delta))
                    break
                except Exception as e:
                    self.detector.counters[f"updates refused ({type(e).__name__})"] += 1
        await patient_room(proxy, room, self.detector.counters)

    def tick(self, now: float) -> None:
        """The clock moved (live capture): per-flow timeouts expire without packets."""
        try:
            self.detector.tick(now)
        except Exception as e:
            self.detector.counters[f"tick failed ({type(e).__name__})"] += 1

    def finish(self) -> None:
        """End of the traffic: the detector settles its per-flow state (the updates it
        issues may wait in the backlog: :meth:`settle` after this)."""
        try:
            self.detector.finish()
        except Exception as e:
            self.detector.counters[f"finish failed ({type(e).__name__})"] += 1
            log.warning("middlebox %s: finish failed: %s", self.box, bounded_message(str(e)))


async def patient_room(proxy: StateProxy, ops: int, counters: MutableMapping[str, int]) -> None:
    """Wait until ``ops`` more updates fit, however long the coordinator takes: a
    middlebox outlives an outage (packets meanwhile queue in, or drop at, the kernel,
    where they are counted), it never ends on one. Each delivery bound that passed
    without room is counted (and logged the first times)."""
    while True:
        try:
            await proxy.wait_room(ops)
            return
        except Backpressure as e:
            counters["waits for room past the delivery bound"] += 1
            n = counters["waits for room past the delivery bound"]
            if n <= LOGGED_SKIPS:
                log.warning("middlebox waits for the coordinator: %s", bounded_message(str(e)))
