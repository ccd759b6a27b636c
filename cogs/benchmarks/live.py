"""Live capture (issue 21): the highest rate of the paper's packet mix each detector
sustains on one middlebox host with **zero kernel drops**, per worker and per host,
with 1 and 2 capture workers.

The bench builds a lab of its own (one middlebox host, a 3-primary cluster; needs
root) and runs ``cogs nf run NF --interface eth0 --workers N`` on the middlebox as a
:class:`~cogs.nf.live.LiveRun`. Traffic is the paper's mix (:mod:`cogs.nf.mix`:
HTTP and DNS, mean 591 bytes a frame, the three attacks at a low rate) replayed by
tcpreplay from the lab namespace into the host's ``eth0`` (``cogs lab replay``),
preloaded into memory, looped to last ``seconds`` per step.

One search per repeat: a step at tcpreplay's top speed first; if no worker dropped a
frame, that is the figure and it is marked *replay-limited* (the host sustains at
least what this box can send); else a bisection between 0 and the top speed for the
highest rate with zero drops. A step's drops are the kernel's (PACKET_STATISTICS)
between the step's start and the moment every worker has read all that reached it.
The figures of the best step: Mbit/s and packets/s as tcpreplay measured them, the
workers' CPU per captured packet split into parse (L2-L4 decoding) and state (the
detector with its proxy updates; the rest is reading and the proxy's flushes), and
coordinator ops per packet. Headlines are medians over the repeats.
"""

from __future__ import annotations

import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cogs.benchmarks.common import Progress, noop, write_results
from cogs.benchmarks.cpu import affinity_cores, check_physical
from cogs.benchmarks.harness import BenchError, Calibration, environment, repeats, stat
from cogs.benchmarks.live_report import markdown
from cogs.nf.live import LiveRun, WorkerStats
from cogs.nf.live_config import LiveConfig
from cogs.nf.mix import TARGET_MEAN, Mix
from cogs.nf.replay import Rate, ReplayResult, replay_in_lab

NFS = ("portscan", "dnstunnel", "sidejack")
WORKERS = (1, 2)
GOAL_MBPS = 1000.0
HOST = "mb1"
SETTLE_TIMEOUT_S = 15.0
_FIELDS = ("frames", "kernel_received", "kernel_dropped", "cpu_seconds", "parse_seconds", "state_seconds", "ops_sent")


def _snapshot(run: LiveRun) -> dict[int, dict[str, float]]:
    return {w: {f: float(getattr(s, f)) for f in _FIELDS} for w, s in run.stats.items()}


def _settle(run: LiveRun, since: float) -> None:
    """Until every worker has reported after ``since`` and read all the kernel gave it."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        run.poll(0.25)
        st: list[WorkerStats] = [run.stats[w] for w in range(run.n) if w in run.stats]
        if len(st) == run.n and all(s.reported > since and s.frames >= s.kernel_received for s in st):
            return
    raise BenchError(f"the capture workers did not catch up within {SETTLE_TIMEOUT_S:.0f} s of the replay's end")


def _step(lab: Any, run: LiveRun, mix: Path, rate: Rate, loops: int) -> dict[str, Any]:
    if run.failed:
        raise BenchError(f"a capture worker failed: {run.failed}")
    run.poll(0.0)
    before = _snapshot(run)
    t0 = time.perf_counter()
    sent: ReplayResult = replay_in_lab(lab, HOST, mix, rate, loops=loops, preload=True)
    _settle(run, time.time())
    wall = time.perf_counter() - t0
    after = _snapshot(run)
    workers = [{f: after[w][f] - before.get(w, {}).get(f, 0.0) for f in _FIELDS} for w in sorted(after)]
    frames = sum(w["frames"] for w in workers)
    cpu = sum(w["cpu_seconds"] for w in workers)
    return {
        "asked": "topspeed" if rate.topspeed else f"{rate.mbps:g} Mbit/s",
        "mbps": sent.mbps, "pps": sent.pps, "sent": sent.packets, "replay_s": sent.seconds, "not_sent": sent.failed,
        "dropped": int(sum(w["kernel_dropped"] for w in workers)),
        "dropped_per_worker": [int(w["kernel_dropped"]) for w in workers],
        "captured": int(frames), "captured_share": frames / sent.packets if sent.packets else 0.0,
        "cpu_us_per_packet": cpu / frames * 1e6 if frames else 0.0,
        "parse_us_per_packet": sum(w["parse_seconds"] for w in workers) / frames * 1e6 if frames else 0.0,
        "state_us_per_packet": sum(w["state_seconds"] for w in workers) / frames * 1e6 if frames else 0.0,
        "ops_per_packet": sum(w["ops_sent"] for w in workers) / frames if frames else 0.0,
        "ops_per_offered_packet": sum(w["ops_sent"] for w in workers) / sent.packets if sent.packets else 0.0,
        "workers_cpu": check_physical("capture workers", cpu_s=cpu, wall_s=wall, cores=affinity_cores(run.pids),
                                      processes=run.n),
    }  # fmt: skip


def _loops(mbps: float, pass_bytes: int, seconds: float) -> int:
    return max(1, math.ceil(seconds * mbps * 1e6 / 8 / pass_bytes))


def search(
    lab: Any, run: LiveRun, mix: Path, pass_bytes: int, seconds: float, ceiling_mbps: float, bisections: int,
    progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    """The highest zero-drop step: top speed, else a bisection below it."""
    steps = [_step(lab, run, mix, Rate(topspeed=True), _loops(ceiling_mbps, pass_bytes, seconds))]
    top = steps[0]
    progress(f"    top speed {top['mbps']:,.0f} Mbit/s: {top['dropped']:,} dropped")
    best: dict[str, Any] | None = top if top["dropped"] == 0 else None
    lo, hi = 0.0, top["mbps"]
    for _ in range(0 if best else bisections):
        mid = (lo + hi) / 2 if lo else min(GOAL_MBPS, hi * 0.8)
        s = _step(lab, run, mix, Rate(mbps=mid), _loops(mid, pass_bytes, seconds))
        steps.append(s)
        progress(f"    {mid:,.0f} Mbit/s asked, {s['mbps']:,.0f} sent: {s['dropped']:,} dropped")
        if s["dropped"] == 0:
            lo = mid
            if best is None or s["mbps"] > best["mbps"]:  # tcpreplay's rate, not the one asked
                best = s
        else:
            hi = mid
    return {"best": best, "replay_limited": best is top, "steps": steps}


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
    nfs: tuple[str, ...] = NFS,
    workers: tuple[int, ...] = WORKERS,
) -> dict[str, Any]:
    from cogs.lab import Lab

    if url:
        raise BenchError("the live bench builds a lab of its own (a middlebox host, a 3-primary cluster): no --url")
    reps = repeats(quick, rounds)
    seconds = 1.5 if quick else 3.0
    bisections = 3 if quick else 4
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cogs-live-bench-") as d:
        mix = Mix(seed=1).build(100_000 if quick else 200_000)
        mix_path = mix.write(Path(d) / "mix.pcap")
        pass_bytes = sum(map(len, mix.frames))
        progress(f"the mix: {len(mix.frames):,} frames, mean {mix.mean:.1f} bytes (target {TARGET_MEAN:g})")
        with Lab.up(Path(d) / "lab", nodes=3, replicas=0, middleboxes=1, rtt="200us", progress=progress) as lab:
            env = lab.call(
                HOST, lambda: environment(lab.url, "lab: 1 middlebox host, 3 primaries", seconds_per_step=seconds)
            )
            cal = lab.call(HOST, lambda: Calibration(lab.url, quick=quick, progress=progress))
            bare = replay_in_lab(
                lab, HOST, mix_path, Rate(topspeed=True), loops=_loops(1500, pass_bytes, seconds), preload=True
            )
            env["replay_ceiling_no_capture"] = {"mbps": round(bare.mbps, 1), "pps": round(bare.pps)}
            progress(f"tcpreplay alone: {bare.mbps:,.0f} Mbit/s, {bare.pps:,.0f} packets/s into {HOST}'s eth0")
            for nf in nfs:
                for n in workers:
                    lab.call(HOST, cal.sample)
                    ns = f"live{uuid.uuid4().hex[:6]}|"
                    run = LiveRun(LiveConfig(nf, "eth0", lab.url, namespace=ns), n)
                    lab.call(HOST, run.start)  # the workers are spawned inside the host's namespace
                    try:
                        progress(f"{nf}, {n} worker(s)")
                        for rep in range(reps):
                            found = search(lab, run, mix_path, pass_bytes, seconds, bare.mbps, bisections, progress)
                            runs.append({"nf": nf, "workers": n, "round": rep, **found})
                    finally:
                        run.finish()
            lab.call(HOST, cal.sample)
    data = _results(quick, env, cal, runs, nfs, workers, mix.mean)
    path = write_results("live", data, markdown(data), out)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _results(quick: bool, env: dict[str, Any], cal: Calibration, runs: list[dict[str, Any]],
             nfs: tuple[str, ...], workers: tuple[int, ...], mean: float) -> dict[str, Any]:  # fmt: skip
    summary: dict[str, Any] = {"mix_mean_bytes": round(mean, 1), "goal_mbps": GOAL_MBPS}
    for nf in nfs:
        summary[nf] = {}
        for n in workers:
            rows = [r for r in runs if r["nf"] == nf and r["workers"] == n]
            best = [r["best"] for r in rows if r["best"] is not None]
            entry: dict[str, Any] = {"rounds": len(rows), "rounds_with_a_zero_drop_rate": len(best)}
            if best:
                mbps = [b["mbps"] for b in best]
                entry |= {
                    "sustained_mbps": stat(mbps, 1),
                    "sustained_pps": stat([b["pps"] for b in best]),
                    "replay_limited": sum(r["replay_limited"] for r in rows),
                    "goal_met": stat(mbps, 1)["median"] >= GOAL_MBPS,
                    "cpu_us_per_packet": stat([b["cpu_us_per_packet"] for b in best], 2),
                    "parse_us_per_packet": stat([b["parse_us_per_packet"] for b in best], 2),
                    "state_us_per_packet": stat([b["state_us_per_packet"] for b in best], 2),
                    "ops_per_packet": stat([b["ops_per_packet"] for b in best], 3),
                    "captured_share": stat([b["captured_share"] for b in best], 4),
                }
            summary[nf][str(n)] = entry
    summary |= cal.headline()
    return {"bench": "live", "quick": quick, "environment": env, "calibration": cal.result(), "summary": summary,
            "runs": runs}  # fmt: skip
