"""What per-NF limits cost the trigger hot path, and what a keeper pass costs, in one run.

    .venv/bin/python scripts/limits_cost.py [--repeats 5] [--updates 200000] [--out FILE]

One 3-primary cluster; the bundled catalog loaded as three NFs: ``free`` (no limits),
``rated`` (``ops_per_s`` far above the load) and ``capped`` (``max_keys`` and
``max_memory`` far above it), so every op is admitted and only the checks differ.
Runs rotate free, rated, capped, ... each a fresh process running scripts/ab_trigger.py's
worker: one StateProxy issuing a Zipf(0.99) mix of counter adds and set adds over 100k
keys (new ones each round: the creation checks run), timed from the first update to flush() returning. Reports per
NF the median (min, max, n) of updates/s and the coordinator's CPU per update
(redis-server processes' CPU from /proc), then one keeper pass over what the runs
stored (its wall time and the nodes' CPU during it), with the same run's
``redis-benchmark -t incr -P 64`` on one node as calibration. Compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import redis
from ab_trigger import WORKER  # the same worker as the A/B of the hot path (scripts/ on sys.path)

from cogs.benchmarks.cpu import proc_cpu
from cogs.benchmarks.harness import Calibration, environment, stat
from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.keeper import Keeper, summary
from cogs.paths import DEFAULT_CATALOG
from cogs.ports import free_port_base

LIMITS = {
    "free": "",
    "rated": "ops_per_s = 100000000",
    "capped": "max_keys = 1000000000\nmax_memory = 562949953421312",
}


def _cpu(pids: list[int]) -> float:
    return sum(proc_cpu(p) or 0.0 for p in pids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--updates", type=int, default=200_000)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cogs-limits-") as tmp:
        lc = LocalCluster(port=free_port_base(3), masters=3, dir=Path(tmp) / "c", persistence="none")
        lc.up()
        try:
            text = Path(DEFAULT_CATALOG).read_text()

            async def load() -> None:
                for nf, lim in LIMITS.items():
                    cat = Catalog.from_toml(text + (f"\n[limits]\n{lim}\n" if lim else ""))
                    async with Coordinator(url=lc.url, nf=nf) as co:
                        await co.load_library(cat)

            anyio.run(load)
            pids = [int((lc.node_dir(p) / "redis.pid").read_text()) for p in lc.ports]
            runs: dict[str, list[dict[str, float]]] = {nf: [] for nf in LIMITS}
            cal = Calibration(lc.url, quick=False, progress=print)
            env = environment(lc.url)
            for r in range(a.repeats):
                cal.sample()
                for nf in LIMITS:
                    argv = [sys.executable, "-c", WORKER, lc.url, str(a.updates), str(r), ",".join(map(str, pids)), nf]
                    out = subprocess.run(argv, capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        raise SystemExit(f"{nf} run {r + 1} failed: {out.stderr.strip()[-2000:]}")
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    assert got["errors"] == 0, got
                    runs[nf].append(got)
                    print(f"{nf} run {r + 1}: {got['updates_per_s']:,.0f} updates/s, coordinator "
                          f"{got['coord_us']:.2f} us per update", flush=True)  # fmt: skip
            clients: dict[tuple[str, int], redis.Redis] = {}
            seed = ("127.0.0.1", lc.port)
            keeper = Keeper(lambda h, p: clients.setdefault((h, p), redis.Redis(host=h, port=p)), seed)
            c0, t0 = _cpu(pids), time.perf_counter()
            p = keeper.count()
            wall, node_cpu = time.perf_counter() - t0, _cpu(pids) - c0
            dbsize = sum(int(redis.Redis(port=port).dbsize()) for port in lc.ports)
        finally:
            lc.down(purge=True)
    res: dict[str, Any] = {
        "environment": {**env, "load_after": os.getloadavg()},
        "calibration": cal.result(),
        "updates_per_s": {nf: stat([x["updates_per_s"] for x in rs]) for nf, rs in runs.items()},
        "coordinator_us_per_update": {nf: stat([x["coord_us"] for x in rs], 2) for nf, rs in runs.items()},
        "keeper_pass": {"seconds": wall, "node_cpu_s": node_cpu, "keys_in_cluster": dbsize,
                        "counted": summary(p.usages)},
    }
    free = res["updates_per_s"]["free"]["median"]
    for nf in LIMITS:
        s, c = res["updates_per_s"][nf], res["coordinator_us_per_update"][nf]
        print(f"{nf}: median {s['median']:,.0f} updates/s (min {s['min']:,.0f}, max {s['max']:,.0f}, n {s['n']}) "
              f"= {s['median'] / free:.3f}x free; coordinator {c['median']:.2f} us per update")  # fmt: skip
    print(f"keeper pass over {dbsize:,} keys: {wall:.2f} s wall, {node_cpu:.2f} s of the nodes' CPU")
    print(f"redis-benchmark INCR -P 64 on one node: {cal.incr_per_s:,.0f} requests/s (median of {len(cal.rates)})")
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
