"""What per-NF limits cost the trigger hot path, and what a keeper pass costs, in one run.

    .venv/bin/python scripts/limits_cost.py [--repeats 5] [--updates 200000] [--out FILE]

One 3-primary cluster; the bundled catalog loaded as three NFs: ``free`` (no limits),
``rated`` (``ops_per_s`` far above the load) and ``capped`` (``max_keys`` and
``max_memory`` far above it), so every op is admitted and only the checks differ.
Runs rotate free, rated, capped, ... each a fresh process: one StateProxy issuing the
same Zipf(0.99) mix of counter adds and set adds over 100k keys as
scripts/ab_trigger.py, timed from the first update to flush() returning. Reports per
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

from cogs.benchmarks.harness import Calibration, environment, stat
from cogs.catalog import Catalog
from cogs.cluster import LocalCluster, free_port_base
from cogs.coordinator.client import Coordinator
from cogs.keeper import Keeper, summary
from cogs.paths import DEFAULT_CATALOG

WORKER = r"""
import json, os, random, resource, sys, time
import anyio
from cogs.proxy import StateProxy

url, nf, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
keys = 100_000
weights = [1 / (i + 1) ** 0.99 for i in range(keys)]
picks = rng.choices(range(keys), weights=weights, k=n)
ports = [str(rng.randrange(1, 65536)) for _ in range(4096)]

def cpu(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        total += int(parts[11]) + int(parts[12])
    return total / os.sysconf("SC_CLK_TCK")

async def go():
    pids = [int(p) for p in sys.argv[5].split(",")]
    async with StateProxy(url, nf=nf, max_pending=400_000) as p:
        c0, r0, t0 = cpu(pids), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i, k in enumerate(picks):
            if i & 1:
                p.update("dns_longnames", f"c{k}", "add", 1)
            else:
                p.update("scan_ports", f"c{k}", "add", ports[i & 4095])
            if i % 2000 == 1999:
                await p.wait_room(4000)
        await p.flush()
        t1, r1, c1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), cpu(pids)
        s = p.statistics()
    nf_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(json.dumps({"updates_per_s": n / (t1 - t0), "nf_us": nf_cpu / n * 1e6, "coord_us": (c1 - c0) / n * 1e6,
                      "errors": s.errors}))

anyio.run(go)
"""

LIMITS = {
    "free": "",
    "rated": "ops_per_s = 100000000",
    "capped": "max_keys = 1000000000\nmax_memory = 562949953421312",
}


def _cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        total += int(parts[11]) + int(parts[12])
    return total / os.sysconf("SC_CLK_TCK")


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
                    argv = [sys.executable, "-c", WORKER, lc.url, nf, str(a.updates), str(r), ",".join(map(str, pids))]
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
