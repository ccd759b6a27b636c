"""A/B of the trigger hot path between two checkouts, side by side in one run.

    .venv/bin/python scripts/ab_trigger.py OLD_TREE NEW_TREE [--repeats 5] [--updates 400000]

Each checkout gets its own 3-primary cluster (its own launcher and Lua library);
then runs alternate A, B, A, B, ... Every run is a fresh process with that tree first
on sys.path: one StateProxy issuing the same Zipf(0.99) mix of counter adds and set
adds over 100k keys (the bundled catalog's scan states), timed from the first
update to flush() returning. It reports per tree the median (min, max, n) of
updates/s, the NF's CPU per update and the coordinator's CPU per update (redis-server
processes' CPU from /proc). Same machine, same minutes: compare the ratio, not the
absolute figures (this VM type varies up to 2x between days).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, os, random, resource, sys, time
import anyio
from cogs.proxy import StateProxy

url, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nf_name = sys.argv[5] if len(sys.argv) > 5 else None  # the NF (scripts/limits_cost.py); default: the default one
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
    pids = [int(p) for p in sys.argv[4].split(",")]
    async with StateProxy(url, nf=nf_name, max_pending=400_000) as p:
        tag = f"ab{seed}:"
        c0, r0, t0 = cpu(pids), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i, k in enumerate(picks):
            if i & 1:
                p.update("dns_longnames", f"{tag}{k}", "add", 1)
            else:
                p.update("scan_ports", f"{tag}{k}", "add", ports[i & 4095])
            if i % 2000 == 1999:
                await p.wait_room(4000)
        await p.flush()
        t1, r1, c1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), cpu(pids)
        s = p.statistics()
    nf = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(json.dumps({"updates_per_s": n / (t1 - t0), "nf_us": nf / n * 1e6, "coord_us": (c1 - c0) / n * 1e6,
                      "ops_sent": s.ops_sent, "errors": s.errors}))

anyio.run(go)
"""

UP = r"""
import sys
from pathlib import Path
import anyio
from cogs.cluster import LocalCluster
from cogs.ports import free_port_base
from cogs.coordinator.client import Coordinator
from cogs.catalog import Catalog
try:
    from cogs.paths import DEFAULT_CATALOG
except ImportError:
    from cogs.cli import DEFAULT_CATALOG
lc = LocalCluster(port=free_port_base(3), masters=3, dir=Path(sys.argv[1]))
lc.up()
async def load():
    async with Coordinator(url=lc.url) as co:
        await co.load_library(Catalog.from_file(DEFAULT_CATALOG))
anyio.run(load)
pids = [int((lc.node_dir(p) / "redis.pid").read_text()) for p in lc.ports]
print(lc.url, ",".join(map(str, pids)), lc.port)
"""

DOWN = r"""
import sys
from pathlib import Path
from cogs.cluster import LocalCluster
LocalCluster.from_dir(int(sys.argv[2]), Path(sys.argv[1])).down(purge=True)
"""


def _py(tree: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--updates", type=int, default=400_000)
    a = ap.parse_args()
    trees = {"A (old)": a.old.resolve(), "B (new)": a.new.resolve()}
    with tempfile.TemporaryDirectory(prefix="cogs-ab-") as tmp:
        clusters = {}
        for name, tree in trees.items():
            d = Path(tmp) / name[0]
            url, pids, port = _py(tree, UP, str(d)).split()
            clusters[name] = (url, pids, port, d)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
        try:
            for r in range(a.repeats):
                for name, tree in trees.items():
                    url, pids, _, _ = clusters[name]
                    got = json.loads(_py(tree, WORKER, url, str(a.updates), str(r), pids))
                    runs[name].append(got)
                    print(
                        f"{name} run {r + 1}: {got['updates_per_s']:,.0f} updates/s, NF {got['nf_us']:.2f} us, "
                        f"coordinator {got['coord_us']:.2f} us per update",
                        flush=True,
                    )
        finally:
            for name, tree in trees.items():  # each cluster down, whatever became of the other
                _, _, port, d = clusters[name]
                try:
                    _py(tree, DOWN, str(d), port)
                except subprocess.CalledProcessError as e:
                    print(f"{name}: cluster in {d} not stopped cleanly: {e.stderr.strip()[-300:]}", file=sys.stderr)
    print()
    for name, rs in runs.items():
        for k in ("updates_per_s", "nf_us", "coord_us"):
            xs = [x[k] for x in rs]
            print(
                f"{name} {k}: median {statistics.median(xs):,.2f} (min {min(xs):,.2f}, max {max(xs):,.2f}, n {len(xs)})"
            )
    a_med = statistics.median(x["updates_per_s"] for x in runs["A (old)"])
    b_med = statistics.median(x["updates_per_s"] for x in runs["B (new)"])
    print(f"B / A updates/s: {b_med / a_med:.3f}")


if __name__ == "__main__":
    main()
