"""NFs on a network interface: N worker processes per host, each its own middlebox.

``run_live`` starts the workers of one host. Each opens its own AF_PACKET socket on
the interface in one fanout group (:mod:`cogs.nf.capture`: the kernel splits flows
symmetrically over the workers and runs the NF's BPF pre-filter), its own
StateProxy, and feeds what it reads through the same decoder, detector and feeder as
the capture-file mode (:mod:`cogs.nf.frames`, :mod:`cogs.nf.feed`), so both see the
same packets and raise the same alerts. Per-flow state stays in the worker.

Workers start one after the other's socket exists (the first creates the group, the
rest join it by id) and report *ready* once all are in: traffic from then on is split
for good. Every second each worker reports its counts, with the kernel's received and
dropped packets (PACKET_STATISTICS); a stop (``stop()``, Ctrl-C, SIGTERM, the
duration) makes each worker read what is still queued, settle its per-flow state,
flush its proxy and report. A worker that dies is reported; the others go on (the
kernel gives its flows to them).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from cogs import runtime
from cogs.errors import CogsError, ConfigError, CoordinatorUnavailable
from cogs.nf.defrag import Defrag
from cogs.nf.frames import decode
from cogs.nf.ident import bounded_message
from cogs.nf.live_config import BATCH, READY_TIMEOUT_S, ROOM, STOP_TIMEOUT_S, LiveConfig


@dataclass
class WorkerStats:
    """One worker's counts (a live report and the final one)."""

    worker: int
    frames: int = 0  # read from the socket
    packets: int = 0  # decoded to IP packets and handled
    kernel_received: int = 0
    kernel_dropped: int = 0
    cut: int = 0  # frames longer than the read buffer
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    parse_seconds: float = 0.0  # decoding frames (CPU of this process, inside the busy turns)
    state_seconds: float = 0.0  # the NF on the packets: detector, proxy updates or NAT lookups
    updates: int = 0
    ops_sent: int = 0
    reported: float = 0.0  # when (time.time()) these counts were taken
    skipped: dict[str, int] = field(default_factory=dict)  # frames the decoder could not use
    counters: dict[str, int] = field(default_factory=dict)  # the NF's

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LiveResult:
    nf: str
    interface: str
    workers: list[WorkerStats]
    failed: dict[int, str]  # worker -> why it ended early
    namespace: str
    seconds: float
    alerts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kernel_dropped(self) -> int:
        return sum(w.kernel_dropped for w in self.workers)

    def counters(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.workers:
            total.update(w.counters)
        return total


# -- the worker process ----------------------------------------------------------------


class _Detect:
    """A detector on a proxy behind the feeder (the capture-file mode's path)."""

    def __init__(self, proxy: Any, cfg: LiveConfig, worker: int) -> None:
        from cogs.nf.feed import Feeder

        self.feeder = Feeder(proxy, cfg.nf, cfg.namespace, box=f"{cfg.interface}/{worker}")
        self.counters = self.feeder.detector.counters
        self.skipped: Counter[str] = Counter()
        # the kernel hands IPv4 over whole (the fanout's defrag flag), not IPv6
        self.defrag = Defrag(self.skipped)
        self.parse_s = self.state_s = 0.0

    async def handle(self, frames: list[tuple[float, bytes]]) -> int:
        t0 = time.process_time()
        packets, defrag = [], self.defrag
        for ts, frame in frames:
            p = decode(frame, ts, defrag=defrag)
            if isinstance(p, str):
                self.skipped[p] += 1
            else:
                packets.append(p)
        t1 = time.process_time()
        self.feeder.feed(packets)
        self.parse_s += t1 - t0
        self.state_s += time.process_time() - t1
        return len(packets)

    async def settle(self) -> None:
        await self.feeder.settle(ROOM)

    def tick(self, now: float) -> None:
        self.feeder.tick(now)

    async def finish(self) -> None:
        self.feeder.finish()
        await self.feeder.settle(0)


def _handler(proxy: Any, cfg: LiveConfig, worker: int) -> Any:
    if cfg.nf == "nat":
        from cogs.nf.live_nat import NatForwarder

        return NatForwarder(proxy, cfg, worker)
    return _Detect(proxy, cfg, worker)


async def _work(cfg: LiveConfig, worker: int, conn: Any, stop: _Flag) -> WorkerStats:
    from cogs.nf.bpf import nf_filter
    from cogs.nf.capture import Capture
    from cogs.proxy import StateProxy

    parent = os.getppid()
    cap = Capture(cfg.interface, nf_filter(cfg.nf), cfg.group)
    st = WorkerStats(worker)
    try:
        async with StateProxy(cfg.url) as proxy:
            h = _handler(proxy, cfg, worker)
            conn.send(("ready", worker, cap.group))
            t0, c0 = time.perf_counter(), time.process_time()
            next_report = time.monotonic() + 1.0

            async def turn(frames: list[tuple[float, bytes]]) -> None:
                st.frames += len(frames)
                st.packets += await h.handle(frames)
                await h.settle()

            def report() -> None:
                k = cap.poll_stats()
                s = proxy.statistics()
                st.kernel_received, st.kernel_dropped, st.cut = k.received, k.dropped, cap.cut
                st.seconds, st.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
                st.reported = time.time()
                st.updates, st.ops_sent = s.updates, s.ops_sent
                st.skipped, st.counters = dict(h.skipped), dict(h.counters)
                st.parse_seconds, st.state_seconds = h.parse_s, h.state_s
                if s.errors:
                    st.counters["updates refused by the coordinator"] = s.errors

            while not stop.is_set():
                frames = cap.read(BATCH)
                if frames:
                    await turn(frames)
                    await anyio.lowlevel.checkpoint()
                else:
                    with anyio.move_on_after(0.1):
                        await anyio.wait_readable(cap.sock)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + 1.0
                    h.tick(time.time())
                    report()
                    conn.send(("stats", worker, st))
                    if os.getppid() != parent:  # the parent is gone: nobody to report to
                        break
            while frames := cap.read(BATCH):  # what arrived before the stop
                await turn(frames)
            await h.finish()
            await proxy.flush()
            report()
            return st
    finally:
        cap.close()


class _Flag:
    """Set by SIGTERM (the parent's stop) in a worker; read by its loop."""

    def __init__(self) -> None:
        self.up = False

    def set(self, *_: Any) -> None:
        self.up = True

    def is_set(self) -> bool:
        return self.up


def _worker_main(cfg: LiveConfig, worker: int, conn: Any) -> None:
    stop = _Flag()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, stop.set)
    try:
        conn.send(("done", worker, runtime.run(_work, cfg, worker, conn, stop)))
    except ConfigError as e:
        conn.send(("error", worker, "config", bounded_message(str(e), 300)))
    except CoordinatorUnavailable as e:
        conn.send(("error", worker, "unavailable", bounded_message(str(e), 300)))
    except BaseException as e:  # one bounded line for the parent, not a traceback per worker
        conn.send(("error", worker, "other", f"{type(e).__name__}: {bounded_message(str(e), 300)}"))
    finally:
        conn.close()


# -- the host: start, watch, stop ------------------------------------------------------


_ERRORS: dict[str, type[CogsError]] = {"config": ConfigError, "unavailable": CoordinatorUnavailable}


class LiveRun:
    """The workers of one host. ``start()`` returns once all capture; ``poll()`` handles
    their reports; ``finish()`` stops them and collects their final counts.

    One pipe per worker and SIGTERM to stop it (no shared queue or event)."""

    def __init__(self, cfg: LiveConfig, workers: int, on_stats: Callable[[list[WorkerStats]], None] | None = None):
        if workers < 1:
            raise ConfigError("need at least one worker")
        self.cfg, self.n, self.on_stats = cfg, workers, on_stats
        self._ctx = mp.get_context("spawn")
        self._procs: dict[int, Any] = {}
        self._conns: dict[Any, int] = {}  # parent's end -> worker
        self.stats: dict[int, WorkerStats] = {}
        self.failed: dict[int, str] = {}
        self.done: set[int] = set()
        self.ready = 0
        self.group = -1
        self.started = 0.0

    def _spawn(self, worker: int, cfg: LiveConfig) -> None:
        ours, theirs = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(target=_worker_main, args=(cfg, worker, theirs), daemon=True)
        p.start()
        theirs.close()  # the worker holds its end: EOF here once it is gone
        self._procs[worker] = p
        self._conns[ours] = worker

    def _handle(self, msg: tuple[Any, ...]) -> None:
        kind, w = msg[0], msg[1]
        if kind == "ready":
            self.ready, self.group = self.ready + 1, msg[2]
        elif kind == "stats":
            self.stats[w] = msg[2]
            if self.on_stats is not None:
                self.on_stats([self.stats[i] for i in sorted(self.stats)])
        elif kind == "done":
            self.stats[w] = msg[2]
            self.done.add(w)
        elif kind == "error":
            self.failed[w] = msg[3]
            self.done.add(w)
            if self.ready < self.n:  # it failed to start: that fails the run
                raise _ERRORS.get(msg[2], CogsError)(f"worker {w}: {msg[3]}")

    def poll(self, timeout: float) -> None:
        """Handle the workers' reports for up to ``timeout`` s; notice dead workers."""
        for ready in mp_connection.wait(list(self._conns), timeout):
            conn: Any = ready
            w = self._conns[conn]
            try:
                self._handle(conn.recv())
            except (EOFError, OSError):  # the worker is gone
                del self._conns[conn]
                conn.close()
                if w not in self.done:
                    p = self._procs[w]
                    p.join(5)
                    self.failed[w] = f"exited with code {p.exitcode}"
                    self.done.add(w)
                    if self.ready < self.n:
                        raise CogsError(f"worker {w} {self.failed[w]} before capturing") from None

    def _await_ready(self, want: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ready < want:
            if time.monotonic() > deadline:
                raise CogsError(f"the capture workers did not start within {READY_TIMEOUT_S:.0f} s")
            self.poll(0.2)

    def start(self) -> None:
        """Start the workers; returns when every one captures (raises if one cannot)."""
        try:
            self._spawn(0, self.cfg)
            self._await_ready(1)
            joined = LiveConfig(**{**self.cfg.__dict__, "group": self.group})
            for w in range(1, self.n):
                self._spawn(w, joined)
            self._await_ready(self.n)
        except BaseException:
            self._reap(kill=True)
            raise
        self.started = time.perf_counter()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.pid is not None]

    @property
    def running(self) -> int:
        return self.n - len(self.done)

    def stop(self) -> None:
        for w, p in self._procs.items():
            if w not in self.done and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def finish(self) -> tuple[list[WorkerStats], dict[int, str]]:
        """Stop, wait for every worker's final counts (or its end), reap them."""
        self.stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.running and time.monotonic() < deadline:
            self.poll(0.2)
        for w in range(self.n):
            if w not in self.done:
                self.failed[w] = f"did not stop within {STOP_TIMEOUT_S:.0f} s"
        self._reap(kill=True)
        return [self.stats.get(w, WorkerStats(w)) for w in range(self.n)], dict(self.failed)

    def _reap(self, *, kill: bool) -> None:
        for p in self._procs.values():
            p.join(2)
            if kill and p.is_alive():
                p.kill()
                p.join(5)
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        _stop_resource_tracker()


def _stop_resource_tracker() -> None:
    """End multiprocessing's resource tracker (every spawn starts one) and reap it: it
    would end by itself when this process does, but as a zombie wherever PID 1 does
    not reap (a container's init). Private API, so guarded: at worst it lingers."""
    from multiprocessing import resource_tracker

    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if callable(stop):
        with contextlib.suppress(Exception):
            stop()


def run_live(
    cfg: LiveConfig,
    workers: int,
    *,
    duration: float | None = None,
    on_ready: Callable[[], None] | None = None,
    on_stats: Callable[[list[WorkerStats]], None] | None = None,
) -> LiveResult:
    """Run ``cfg.nf`` on ``cfg.interface`` with ``workers`` processes until ``duration``
    seconds pass, SIGINT or SIGTERM; the workers' counts and the alerts raised meanwhile."""
    stopping = False

    def on_signal(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    t_ms = int(time.time() * 1000) - 1000
    run = LiveRun(cfg, workers, on_stats)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run.start()
        if on_ready is not None:
            on_ready()
        deadline = None if not duration else time.monotonic() + duration
        while not stopping and run.running and (deadline is None or time.monotonic() < deadline):
            run.poll(0.2)
        stats, failed = run.finish()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    result = LiveResult(cfg.nf, cfg.interface, stats, failed, cfg.namespace, time.perf_counter() - run.started)
    if cfg.nf != "nat":
        from cogs.nf.report import collect_alerts

        result.alerts = runtime.run(collect_alerts, cfg.url, cfg.nf, cfg.namespace, t_ms)
    return result
