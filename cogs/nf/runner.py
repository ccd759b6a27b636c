"""Replay a trace through an NF scaled out over N middlebox processes.

The driver reads the capture (L2-L4) and splits it by the symmetric flow hash, as
the load balancer in front of an NF cluster would; each middlebox process runs the
detector on its share with its own StateProxy. Global state lives in the
coordinator, so the alerts do not depend on N. With ``local_only`` every box keeps
its states under its own key namespace: the same detector, the same checkers, but
nothing shared — which is what a cluster without cogs sees.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from cogs import runtime
from cogs.errors import CogsError, ConfigError
from cogs.nf.detectors import DETECTORS
from cogs.nf.feed import Feeder
from cogs.nf.ident import bounded_message
from cogs.nf.packets import Packet, TraceStats, read_trace
from cogs.nf.report import collect_alerts
from cogs.nf.splitter import middlebox_of
from cogs.proxy import StateProxy

CHUNK = 1000  # packets between yields to the proxy's event loop
T = TypeVar("T")


@dataclass
class BoxResult:
    box: int
    packets: int
    seconds: float
    cpu_seconds: float
    ops_sent: int
    updates: int
    counters: dict[str, int]

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


@dataclass
class RunResult:
    nf: str
    middleboxes: int
    namespace: str
    trace: TraceStats
    boxes: list[BoxResult]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def packets_per_s(self) -> float:
        """All packets over the time the boxes worked in parallel (process start-up excluded)."""
        busy = max((b.seconds for b in self.boxes), default=0.0)
        return sum(b.packets for b in self.boxes) / busy if busy else 0.0


def split(packets: list[Packet], n: int) -> list[list[Packet]]:
    shares: list[list[Packet]] = [[] for _ in range(n)]
    for p in packets:
        shares[middlebox_of(n, p.proto, p.src, p.sport, p.dst, p.dport)].append(p)
    return shares


async def _box(url: str, nf: str, prefix: str, packets: list[Packet], box: int, q: Any) -> BoxResult:
    async with StateProxy(url) as proxy:
        feeder = Feeder(proxy, nf, prefix, box=str(box))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(packets), CHUNK):
            feeder.feed(packets[i : i + CHUNK])
            await feeder.settle(4 * CHUNK)  # room for the next chunk's updates
            await anyio.lowlevel.checkpoint()
            if q is not None and i % (20 * CHUNK) == 0:
                q.put(("progress", box, min(i + CHUNK, len(packets))))
        feeder.finish()
        await feeder.settle(0)
        await proxy.flush()
        s = proxy.statistics()
        counters = dict(feeder.detector.counters)
        if s.errors:  # the log names them; the box did its work: counted, not fatal
            counters["updates refused by the coordinator"] = s.errors
        return BoxResult(
            box,
            len(packets),
            time.perf_counter() - t0,
            time.process_time() - c0,
            s.ops_sent,
            s.updates,
            counters,
        )


def _box_proc(fn: Callable[..., Awaitable[Any]], box: int, args: tuple[Any, ...], q: Any) -> None:
    try:
        q.put(("done", box, runtime.run(partial(fn, *args, box, q))))
    except BaseException as e:  # the driver reports it: one bounded line, not N tracebacks
        q.put(("error", box, f"{type(e).__name__}: {bounded_message(str(e), 300)}"))


def run_boxes(
    fn: Callable[..., Awaitable[T]], args: list[tuple[Any, ...]], total: int, progress: Any = None
) -> list[T]:
    """Run ``fn(*args[i], box=i, q)`` in one process per middlebox; their results in
    box order. A box reports ``("progress", box, packets done)`` on ``q``; the first
    box that fails fails the run with its one-line reason."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_box_proc, args=(fn, i, a, q)) for i, a in enumerate(args)]
    for p in procs:
        p.start()
    results: dict[int, T] = {}
    errors: list[str] = []
    done = [0] * len(args)
    try:
        while len(results) + len(errors) < len(args):
            kind, box, payload = q.get(timeout=600)
            if kind == "progress":
                done[box] = payload
                if progress is not None:
                    progress(sum(done), total)
            elif kind == "done":
                results[box] = payload
            else:
                errors.append(f"middlebox {box}: {payload}")
    finally:
        for p in procs:
            p.join(30)
    if errors:
        raise CogsError(errors[0])
    return [results[i] for i in range(len(args))]


def run_nf(
    nf: str,
    trace: str | Path,
    middleboxes: int,
    url: str,
    *,
    local_only: bool = False,
    namespace: str | None = None,
    progress: Any = None,
) -> RunResult:
    """Replay ``trace`` through ``nf`` on ``middleboxes`` processes; collect the alerts.

    ``namespace`` prefixes every state key (a fresh one per run by default), so runs of
    the same trace do not see each other's states or alert markers.
    """
    if nf not in DETECTORS:
        raise ConfigError(f"unknown NF {nf!r} (have: {', '.join(DETECTORS)})")
    if middleboxes < 1:
        raise ConfigError("need at least one middlebox")
    ns = namespace if namespace is not None else f"run-{uuid.uuid4().hex[:8]}|"
    stats = TraceStats()
    packets = list(read_trace(trace, stats))
    shares = split(packets, middleboxes)
    t_ms = int(time.time() * 1000) - 1000
    prefixes = [f"{ns}mb{i}|" if local_only else ns for i in range(middleboxes)]
    t0 = time.perf_counter()
    boxes = run_boxes(_box, [(url, nf, prefixes[i], shares[i]) for i in range(middleboxes)], len(packets), progress)
    result = RunResult(nf, middleboxes, ns, stats, boxes)
    result.seconds = time.perf_counter() - t0
    result.alerts = runtime.run(collect_alerts, url, nf, ns, t_ms)
    return result


def counters(result: RunResult) -> Counter[str]:
    total: Counter[str] = Counter()
    for b in result.boxes:
        total.update(b.counters)
    return total
