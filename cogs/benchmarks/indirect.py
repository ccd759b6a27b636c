"""Indirect-retrieval states: local vs remote retrieve latency for 1 KB and 1 MB
values, how many coordinator lookups a remote op costs (1, or 0 on a replica hit)
and the CPU it costs. Two proxies in one process: an owner and a reader, talking
over TCP (so the CPU per op counts both ends of the peer channel)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cogs import runtime
from cogs.benchmarks.common import Progress, bench_cluster, md_table, noop, write_results
from cogs.benchmarks.design_report import calibration_line
from cogs.benchmarks.harness import Calibration, environment, repeats, stat
from cogs.proxy import StateProxy

SECRET = "bench-peer-secret"


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def _measure(url: str, n: int) -> list[dict[str, Any]]:
    rows = []
    async with StateProxy(url, peer_secret=SECRET) as owner, StateProxy(url, peer_secret=SECRET) as reader:
        for size, label in ((1024, "1 KB"), (1 << 20, "1 MB")):
            value = os.urandom(size)
            for state in ("bench_objects_single", "bench_objects"):
                keys = [f"{state}:{label}:{i}" for i in range(n)]
                for k in keys:
                    await owner.syn_up(state, k, "create", value)
                for where, proxy in (("local (owner)", owner), ("remote", reader), ("remote again", reader)):
                    s0, c0 = proxy.statistics(), time.process_time()
                    lat = []
                    for k in keys:
                        t = time.perf_counter()
                        got = await proxy.syn_retrieve(state, k)
                        lat.append(time.perf_counter() - t)
                        assert got == value
                    s1, cpu = proxy.statistics(), time.process_time() - c0
                    rows.append({
                        "value": label, "mode": "replica" if state == "bench_objects" else "singleton", "read": where,
                        "p50_us": _pct(lat, 50) * 1e6, "p99_us": _pct(lat, 99) * 1e6,
                        "lookups_per_op": (s1.locator_lookups - s0.locator_lookups) / n,
                        "peer_ops_per_op": (s1.remote_ops - s0.remote_ops) / n,
                        # both proxies run in this process: the reader's and the owner's side
                        "cpu_us_per_op": cpu / n * 1e6,
                    })  # fmt: skip
    return rows


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
) -> dict[str, Any]:
    n = 30 if quick else 200
    reps = repeats(quick, rounds)
    raw: list[dict[str, Any]] = []
    with bench_cluster(url, progress) as seed:
        env = environment(seed, reads_per_run=n)
        cal = Calibration(seed, quick=quick, progress=progress)
        for rep in range(reps):
            cal.sample()
            raw += [{**r, "round": rep} for r in runtime.run(_measure, seed, n)]
            progress(f"round {rep + 1} of {reps} done")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in raw:
        groups.setdefault((r["value"], r["mode"], r["read"]), []).append(r)
    rows: list[dict[str, Any]] = [{"value": v, "mode": m, "read": rd,
             **{k: stat([r[k] for r in rs], 2) for k in ("p50_us", "p99_us", "lookups_per_op", "peer_ops_per_op",
                                                          "cpu_us_per_op")}}
            for (v, m, rd), rs in groups.items()]  # fmt: skip
    for r in rows:
        progress(
            f"{r['value']} {r['mode']} {r['read']}: p50 {r['p50_us']['median']:.0f} us, "
            f"{r['lookups_per_op']['median']:.1f} lookups/op, CPU {r['cpu_us_per_op']['median']:.0f} us/op"
        )

    def pick(value: str, mode: str, read: str, key: str) -> Any:
        return next(r for r in rows if (r["value"], r["mode"], r["read"]) == (value, mode, read))[key]

    summary = {
        "local_1kb_p50_us": pick("1 KB", "singleton", "local (owner)", "p50_us"),
        "remote_1kb_p50_us": pick("1 KB", "singleton", "remote", "p50_us"),
        "remote_1mb_p50_us": pick("1 MB", "singleton", "remote", "p50_us"),
        "remote_1kb_cpu_us_per_op": pick("1 KB", "singleton", "remote", "cpu_us_per_op"),
        "replica_hit_1mb_p50_us": pick("1 MB", "replica", "remote again", "p50_us"),
        "lookups_per_remote_op": pick("1 KB", "singleton", "remote", "lookups_per_op")["median"],
        "lookups_per_replica_hit": pick("1 KB", "replica", "remote again", "lookups_per_op")["median"],
        **cal.headline(),
    }
    data = {"bench": "indirect", "quick": quick, "environment": env, "calibration": cal.result(), "summary": summary,
            "rows": rows, "runs": raw}  # fmt: skip
    md = "# Indirect-retrieval states: local vs remote (medians of the rounds)\n\n" + calibration_line(data) + "\n"
    md += md_table(
        ["value", "mode", "read", "p50 (us)", "p99 (us)", "coordinator lookups/op", "peer requests/op",
         "CPU/op, both proxies (us)"],
        [[r["value"], r["mode"], r["read"], f"{r['p50_us']['median']:.0f}", f"{r['p99_us']['median']:.0f}",
          f"{r['lookups_per_op']['median']:.2f}", f"{r['peer_ops_per_op']['median']:.2f}",
          f"{r['cpu_us_per_op']['median']:.0f}"] for r in rows],
    )  # fmt: skip
    path = write_results("indirect", data, md, out)
    progress(f"wrote {path}")
    return data
