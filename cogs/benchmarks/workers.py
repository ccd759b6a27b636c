"""Bench processes that start together: a pool of spawned workers, a start barrier,
one clock.

A job is an async function ``fn(*args, gate)``: it does its set-up (connect, build
its input), then ``await gate.start()`` — which tells the parent it is ready and
waits until every worker of the round is — then its timed work, then
``gate.stop()``. The round's wall time is *last end - first start* over all workers
(``time.perf_counter`` is CLOCK_MONOTONIC on Linux: one clock for every process), so
a rate over it counts only time in which all of them could work at once. The
parent reads the CPU of every process involved (workers, the coordinator's nodes)
right before it opens the barrier and after the last result: see cpu.py.

Workers live for the whole bench (spawning one costs a second of imports here), and
a worker that dies fails the round at once, naming its exit code.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
import anyio.to_thread

from cogs import runtime
from cogs.benchmarks.cpu import CpuMeter, CpuSample, check_physical, check_rate
from cogs.benchmarks.harness import BenchError

Job = Callable[..., Awaitable[dict[str, Any]]]


class Gate:
    """A job's side of the barrier, and its clock."""

    def __init__(self, ready: Any, go: Any, idx: int) -> None:
        self._ready, self._go, self._idx = ready, go, idx
        self.t_start = self.t_end = self.cpu_start = self.cpu_end = 0.0

    async def start(self) -> None:
        """Ready: wait for the other workers, then start the clocks."""
        self._ready.put(("ready", self._idx, None))
        await anyio.to_thread.run_sync(self._go.wait)
        self.t_start, self.cpu_start = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        """The timed work is done: stop the clocks (what follows, e.g. reading the
        statistics or verifying states, is outside the round's CPU window)."""
        self.t_end, self.cpu_end = time.perf_counter(), time.process_time()
        self._ready.put(("stopped", self._idx, None))

    def timing(self) -> dict[str, float]:
        if not self.t_end:
            raise BenchError("a bench job returned without gate.stop()")
        return {"t_start": self.t_start, "t_end": self.t_end, "cpu_s": self.cpu_end - self.cpu_start}


def _worker(idx: int, jobs: Any, out: Any, go: Any) -> None:
    while True:
        job = jobs.get()
        if job is None:
            return
        fn, args = job
        gate = Gate(out, go, idx)
        try:
            res = runtime.run(fn, *args, gate)
            res.update(gate.timing())
            out.put(("done", idx, res))
        except BaseException as e:  # the parent fails the round with this line
            out.put(("error", idx, f"{type(e).__name__}: {e}"))


@dataclass
class Round:
    """What one round measured: every worker's result (with its t_start, t_end and
    cpu_s), the wall time they shared and the CPU of every process meanwhile."""

    results: list[dict[str, Any]]
    wall_s: float
    #: from opening the barrier to the last worker's gate.stop() (the CPU samples' window)
    window_s: float
    start_spread_s: float
    before: CpuSample | None = None
    after: CpuSample | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def worker_cpu_s(self) -> float:
        return float(sum(r["cpu_s"] for r in self.results))

    def used(self, meter: CpuMeter, pids: Iterable[int] | None = None) -> float:
        """Local CPU seconds of ``pids`` (default: every metered process) in the window,
        plus, when ``pids`` is given, what the metered remote nodes used."""
        if self.before is None or self.after is None:
            raise BenchError("the round ran without a CPU meter")
        local = meter.used(self.before, self.after, pids)
        return local + (meter.remote_used(self.before, self.after) if pids is not None else 0.0)


def account(what: str, rnd: Round, meter: CpuMeter, items: int, coordinator: Iterable[int] = ()) -> dict[str, Any]:
    """The CPU a round's ``items`` cost, checked against this machine; raises
    ImpossibleRate if the workers' own CPU exceeds cores x the round's wall time (the
    rate would exceed cores / CPU per item), or if every local process together
    (workers, coordinator nodes, this one) used more than the cores had in the window."""
    if rnd.before is None or rnd.after is None or items <= 0:
        raise BenchError(f"{what}: nothing measured")
    cores = meter.cores
    workers = rnd.worker_cpu_s
    coord = meter.used(rnd.before, rnd.after, coordinator) + meter.remote_used(rnd.before, rnd.after)
    local = meter.used(rnd.before, rnd.after)
    check_rate(what, rate=items / rnd.wall_s, cpu_s_per_item=workers / items, cores=cores)
    phys = check_physical(what, cpu_s=local, wall_s=rnd.window_s, cores=cores, processes=len(rnd.after.local))
    return {
        "wall_s": round(rnd.wall_s, 4),
        "window_s": phys["wall_s"],
        "start_spread_ms": round(rnd.start_spread_s * 1e3, 2),
        "cores": cores,
        "cores_busy": phys["cores_busy"],
        "cpu_s": {"workers": round(workers, 4), "coordinator": round(coord, 4), "all_local": phys["cpu_s"]},
        "cpu_us_per_item": {"workers": round(workers / items * 1e6, 3), "coordinator": round(coord / items * 1e6, 3)},
        "cpu_ceiling_per_s": round(cores * items / (workers + coord)) if workers + coord > 0 else None,
    }


class Workers:
    """``n`` spawned worker processes; ``run`` gives each (the first ``len(args)``) a job."""

    def __init__(self, n: int, timeout: float = 600.0, start: Callable[[Any, Any], None] | None = None) -> None:
        """``start(i, process)`` starts worker ``i`` (e.g. inside a lab host, where it and
        its sockets then live); default: here."""
        ctx = mp.get_context("spawn")
        self.go = ctx.Event()
        self.out = ctx.Queue()
        self.timeout = timeout
        self._jobs = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, args=(i, q, self.out, self.go), daemon=True)
                      for i, q in enumerate(self._jobs)]  # fmt: skip
        for i, p in enumerate(self.procs):
            if start is None:
                p.start()
            else:
                start(i, p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def net_namespaces(self) -> int:
        """How many network namespaces (lab hosts) the workers run in."""
        seen = set()
        for pid in self.pids:
            try:
                seen.add(os.readlink(f"/proc/{pid}/ns/net"))
            except OSError:
                continue
        return len(seen)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for q in self._jobs:
            q.put(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)

    def _next(self, deadline: float) -> tuple[str, int, Any]:
        while True:
            try:
                msg: tuple[str, int, Any] = self.out.get(timeout=0.5)
                return msg
            except queue.Empty:
                dead = [(i, p.exitcode) for i, p in enumerate(self.procs) if p.exitcode is not None]
                if dead:
                    i, code = dead[0]
                    raise BenchError(f"bench worker {i} exited with code {code} (its traceback is above)") from None
                if time.monotonic() > deadline:
                    raise BenchError(f"bench workers sent no result in {self.timeout:g} s") from None

    def run(self, fn: Job, args: Sequence[tuple[Any, ...]], meter: CpuMeter | None = None) -> Round:
        """Run ``fn(*args[i], gate)`` on worker i for every i at once; their results."""
        if len(args) > len(self.procs):
            raise BenchError(f"{len(args)} jobs for {len(self.procs)} workers")
        self.go.clear()
        for q, a in zip(self._jobs, args, strict=False):
            q.put((fn, a))
        deadline = time.monotonic() + self.timeout
        ready: set[int] = set()
        results: dict[int, dict[str, Any]] = {}
        while len(ready) < len(args):
            kind, idx, payload = self._next(deadline)
            if kind == "error":
                self._drain(len(args) - 1, deadline)
                raise BenchError(f"bench worker {idx}: {payload}")
            ready.add(idx)
        before = meter.sample() if meter else None
        t_go = time.perf_counter()
        self.go.set()
        errors: list[str] = []
        stopped: set[int] = set()
        window, after = 0.0, None
        while len(results) + len(errors) < len(args):
            kind, idx, payload = self._next(deadline)
            if kind == "stopped":
                stopped.add(idx)
                if len(stopped) == len(args):  # the CPU window ends with the last timed work
                    window = time.perf_counter() - t_go
                    after = meter.sample() if meter else None
            elif kind == "done":
                results[idx] = payload
            elif kind == "error":
                errors.append(f"bench worker {idx}: {payload}")
        self.go.clear()
        if errors:
            raise BenchError(errors[0])
        res = [results[i] for i in range(len(args))]
        starts, ends = [r["t_start"] for r in res], [r["t_end"] for r in res]
        return Round(res, max(ends) - min(starts), window, max(starts) - min(starts), before, after)

    def _drain(self, n: int, deadline: float) -> None:
        """After a failed set-up: let the ``n`` other jobs end (they wait at the barrier)
        and take their results, so the next round starts clean."""
        self.go.set()
        ended = 0
        try:
            while ended < n:
                kind, _, _ = self._next(min(deadline, time.monotonic() + 60))
                ended += kind != "ready"
        except BenchError:
            pass  # a dead or stuck worker: the error being raised says enough
        self.go.clear()
