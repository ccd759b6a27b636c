"""The NAT on interfaces: what a live NAT worker does with the packets it captures.

A packet from an inside network to the outside gets its source rewritten to the
flow's external (ip, port) (allocated on the flow's first packet by whichever worker
of whichever host sees it: the global ``portmap`` state); a packet to one of the
pool's external addresses gets its destination rewritten back to the internal (ip,
port). Either goes out of the second interface with its Ethernet header as it came,
the IP and TCP/UDP checksums recomputed. Everything else is counted and not
forwarded: traffic that does not cross the NAT, fragments, IPv6, packets to an
external port no flow holds (unsolicited), new flows whose block of ports is full.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio

from cogs.errors import ConfigError
from cogs.nf.capture import Emitter
from cogs.nf.feed import patient_room
from cogs.nf.frames import TCP, UDP, decode, l3_offset
from cogs.nf.live_config import ROOM, LiveConfig
from cogs.nf.nat import PRIVATE, Classifier, rewrite
from cogs.nf.nat_table import Mapping, NatTable

FINISH_TIMEOUT_S = 30.0


class NatForwarder:
    """Translate captured frames and emit them on ``cfg.out_interface``."""

    def __init__(self, proxy: Any, cfg: LiveConfig, worker: int) -> None:
        if not cfg.out_interface:
            raise ConfigError("nat on an interface emits the translated packets on another: give --out-interface")
        if cfg.nat_mode not in ("async", "sync"):
            raise ConfigError(f"unknown mode {cfg.nat_mode!r} (have: async, sync)")
        self.proxy, self.sync = proxy, cfg.nat_mode == "sync"
        self.table = NatTable(proxy, cfg.nat_state)
        self.side = Classifier(cfg.internal or PRIVATE)
        self.external = frozenset(self.table.pool.ips)
        self.emitter = Emitter(cfg.out_interface)
        self.counters: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.pending = 0
        self._idle: anyio.Event | None = None  # set when the last lookup answers, once finishing
        self._inside: dict[str, bool] = {}  # address -> inside? (a bounded memo)
        self.parse_s = self.state_s = 0.0  # decoding; the rest of handling (lookups, rewriting, sending)

    def _is_inside(self, addr: str) -> bool:
        got = self._inside.get(addr)
        if got is None:
            if len(self._inside) > 100_000:
                self._inside.clear()
            got = self._inside[addr] = self.side.inside(addr)
        return got

    async def handle(self, frames: list[tuple[float, bytes]]) -> int:
        handled = 0
        t0 = time.process_time()
        decoded = [(decode(frame, ts), frame) for ts, frame in frames]
        t1 = time.process_time()
        for p, frame in decoded:
            if isinstance(p, str):
                self.skipped[p] += 1
                continue
            handled += 1
            if ":" in p.src:
                self.counters["not translated: IPv6"] += 1
            elif p.proto not in (TCP, UDP):
                self.counters["not translated: not TCP/UDP"] += 1
            elif self._is_inside(p.src) and not self._is_inside(p.dst):
                self.pending += 1
                if self.sync:
                    self._out(await self.table.outbound(p.proto, p.src, p.sport), frame)
                else:
                    self.table.asyn_outbound(p.proto, p.src, p.sport, self._out, frame)
            elif p.dst in self.external:
                self.pending += 1
                if self.sync:
                    self._in(await self.table.inbound(p.proto, p.dst, p.dport), frame)
                else:
                    self.table.asyn_inbound(p.proto, p.dst, p.dport, self._in, frame)
            else:
                self.counters["not crossing the NAT"] += 1
        self.parse_s += t1 - t0
        self.state_s += time.process_time() - t1
        return handled

    def _emit(self, frame: bytes, **change: Mapping) -> None:
        off = l3_offset(frame)
        total = frame[off + 2] << 8 | frame[off + 3]
        try:
            ip = rewrite(frame[off : off + total] if total else frame[off:], **change)
        except Exception:  # dpkt could not re-read what frames.decode accepted: not forwarded
            self.counters["not translated: malformed"] += 1
            return
        self.emitter.send(frame[:off] + ip)

    def _answered(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self._idle is not None:
            self._idle.set()

    def _out(self, mapping: Mapping | None, frame: bytes) -> None:
        self._answered()
        if mapping is None:
            self.counters["dropped: no free port"] += 1
            return
        self.counters["translated outbound"] += 1
        self._emit(frame, src=mapping)

    def _in(self, mapping: Mapping | None, frame: bytes) -> None:
        self._answered()
        if mapping is None:
            self.counters["dropped: unsolicited (no mapping)"] += 1
            return
        self.counters["translated inbound"] += 1
        self._emit(frame, dst=mapping)

    async def settle(self) -> None:
        await patient_room(self.proxy, ROOM, self.counters)

    def tick(self, now: float) -> None:
        self.counters["emitted"] = self.emitter.sent
        if self.emitter.failed:
            self.counters["emit failed"] = self.emitter.failed

    async def finish(self) -> None:
        self._idle = anyio.Event()
        await self.proxy.flush()
        if self.pending > 0:  # lookups still in flight
            with anyio.move_on_after(FINISH_TIMEOUT_S):
                await self._idle.wait()
        if self.pending:
            self.counters["lookups unanswered at the end"] = self.pending
        self.tick(0.0)
        self.emitter.close()
