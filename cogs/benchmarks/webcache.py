"""Cooperative web cache (paper Fig. 11c): throughput and hit ratio with 1..9 caching
proxies, objects found through cogs vs ICP-style sibling queries, side by side.

A Polygraph-like load: robots (4 per proxy) request objects back to back through
their proxy; 60% of requests go to a working set of 2,000 objects with Zipf(0.8)
popularity, 40% to objects never requested before (the offered hit ratio is 60%);
sizes are lognormal (~11 KB mean); the origin answers after 20 ms. Both modes run the
same code (cogs/nf/webcache/node.py), the same load and the same origin.

Fairness: for each cluster size both clusters (cogs and ICP) are up at once, filled
with the working set, then measured in alternation (cogs, ICP, cogs, ICP, ...; each
after a warm-up), and a point is the median of its runs. By default (``shared``)
every process may run on every CPU; ``split`` puts the caches *and the coordinator*
on one half of the CPUs and the load generators and origin on the other, so in
both modes the CPU the cluster spends on finding objects (ICP queries, or the
coordinator) comes out of the caches' share. Every run reports the CPU its caches
and the coordinator spent per request (and so requests per CPU-second), and a
separate measurement gives the CPU one "who has it?" costs in each design.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx

from cogs import runtime
from cogs.benchmarks.common import Placement, Progress, fmt_rate, noop, write_results
from cogs.benchmarks.harness import BenchError, Calibration, environment, pct, repeats
from cogs.benchmarks.site import Site, bench_site
from cogs.benchmarks.webcache_query import query_cost
from cogs.benchmarks.webcache_report import markdown, plot, summarize
from cogs.benchmarks.workers import Gate, Workers, account
from cogs.nf.webcache.cluster import WebCacheCluster, web_cache

OBJECTS, ZIPF_S, RECURRENCE, ROBOTS_PER_NODE, LOAD_PROCS = 2000, 0.8, 0.6, 4, 2
NEW_BASE = 10_000_000  # ids of objects requested once
ORIGIN_DELAY_S = 0.02
STATE = "bench_objects"


def _kind(x_cache: str) -> str:
    if x_cache.startswith("HIT (local)"):
        return "local hit"
    if x_cache.startswith("HIT"):
        return "remote hit"
    return "miss"


async def load_job(
    origin: str, nodes: list[str], robots: list[int], seed: int, warm: float, measure: float, gate: Gate
) -> dict[str, Any]:
    """Robots requesting through their proxies: a warm-up, then (behind the barrier
    with the other load process) the measured window."""
    cum = list(itertools.accumulate(1 / (k**ZIPF_S) for k in range(1, OBJECTS + 1)))
    kinds: Counter[str] = Counter()
    lat: list[float] = []
    errors = 0
    measuring = False
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30), trust_env=False
    )
    fresh = itertools.count(NEW_BASE + random.getrandbits(40) * 1000)  # objects nobody asked for before

    async def robot(j: int, node: int) -> None:
        nonlocal errors
        rng = random.Random()
        proxy = f"http://{nodes[node]}"
        while True:
            n = rng.choices(range(OBJECTS), cum_weights=cum)[0] if rng.random() < RECURRENCE else next(fresh)
            t, counted = time.perf_counter(), measuring
            try:
                async with session.get(f"{origin}/obj/{n}", proxy=proxy) as r:
                    await r.read()
                    status, x_cache = r.status, r.headers.get("x-cache", "")
            except (aiohttp.ClientError, TimeoutError):
                errors += counted
                continue
            if counted and measuring:  # started and ended inside the window
                if status != 200:
                    errors += 1
                    continue
                kinds[_kind(x_cache)] += 1
                lat.append(time.perf_counter() - t)

    try:
        async with anyio.create_task_group() as tg:
            for j, node in enumerate(robots):
                tg.start_soon(robot, j, node)
            await anyio.sleep(warm)
            await gate.start()
            measuring = True
            await anyio.sleep(measure)
            measuring = False
            gate.stop()
            tg.cancel_scope.cancel()
    finally:
        await session.close()
    return {"kinds": dict(kinds), "latencies": lat, "errors": errors}


async def _fill(origin: str, nodes: list[str]) -> None:
    """Every working-set object once, object i through proxy i mod N (16 at a time)."""
    clients = [httpx.AsyncClient(proxy=f"http://{a}", trust_env=False, timeout=30) for a in nodes]
    todo = iter(range(OBJECTS))

    async def worker() -> None:
        for i in todo:
            r = await clients[i % len(nodes)].get(f"{origin}/obj/{i}")
            r.raise_for_status()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(worker)
    finally:
        for c in clients:
            await c.aclose()


def node_stats(nodes: list[str]) -> dict[str, int]:
    """The nodes' own counters, summed (origin fetches, ICP queries and timeouts, ...)."""
    total: Counter[str] = Counter()
    for addr in nodes:
        stats = httpx.get(f"http://{addr}/cogs/stats", trust_env=False, timeout=10).json()
        total.update({k: v for k, v in stats.items() if isinstance(v, int)})
    return dict(total)


class _Bench:
    def __init__(self, site: Site, quick: bool, place: Placement, progress: Progress, rounds: int | None) -> None:
        self.site, self.url, self.place, self.progress = site, site.url, place, progress
        self.warm, self.measure = (1.0, 2.0) if quick else (1.5, 3.0)
        self.reps = repeats(quick, rounds)
        self.coord_pids = site.coord_pids
        self.meter = site.meter()
        self.cal = Calibration(site.url, quick=quick, progress=progress, run=site.calibration_runner())
        self.runs: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []

    def size(self, w: Workers, n: int) -> None:
        """n caches in each mode, up together, measured in alternation. In the lab: the
        origin (and the load) on mb1, cogs' caches on mb2.., ICP's on the hosts after."""
        site = self.site
        lab: dict[str, dict[str, Any]] = {"cogs": {}, "icp": {}}
        if site.lab is not None:
            for mode, first in (("cogs", 2), ("icp", 2 + n)):
                hosts = {f"cache-{i}": f"mb{first + i}" for i in range(n)} | {"origin": "mb1"}
                lab[mode] = {"host": site.addr("mb1"), "hosts": [site.addr(hosts[f"cache-{i}"]) for i in range(n)],
                             "start": site.starter(hosts)}  # fmt: skip
        with (
            web_cache(n, "cogs", self.url, origin_delay_s=ORIGIN_DELAY_S, state=STATE, **lab["cogs"]) as cogs,
            web_cache(n, "icp", None, **lab["icp"]) as icp,
        ):
            assert cogs.origin is not None
            icp.origin = cogs.origin  # one origin serves both
            for c in (cogs, icp):
                pids = [p.pid for p in c.procs if p.pid is not None]
                for i, pid in enumerate(pids):
                    self.place.pin(pid, "rest" if c is cogs and i == 0 else "tested")  # the origin starts first
                runtime.run(_fill, cogs.origin, c.nodes)
            self.progress(f"{n} cache(s) per mode: filled with the {OBJECTS:,}-object working set")
            for rep in range(self.reps):
                self.cal.sample()
                for c in (cogs, icp):
                    self.runs.append(self.one(w, c, rep))
            for c in (cogs, icp):
                q = query_cost(w, self.meter, c, self.url, STATE, self.coord_pids, self.reps)
                self.queries.append({"instances": n, "mode": c.mode, **q})
                cpu, p50 = q["cpu_us_per_query"]["median"], q["p50_us"]["median"]
                who = f"{q['siblings']} sibling(s)" if c.mode == "icp" else "the coordinator"
                self.progress(f"  {c.mode} lookup ({who}): {cpu:.0f} us CPU per query, p50 {p50:.0f} us")

    def one(self, w: Workers, c: WebCacheCluster, rep: int) -> dict[str, Any]:
        n = len(c.nodes)
        assert c.origin is not None
        node_pids = [p.pid for p in c.procs[(1 if c.mode == "cogs" else 0) :] if p.pid is not None]
        robots = [i % n for i in range(ROBOTS_PER_NODE * n)]
        args = [(c.origin, c.nodes, robots[p::LOAD_PROCS], p, self.warm, self.measure) for p in range(LOAD_PROCS)]
        self.meter.add(node_pids)
        s0 = node_stats(c.nodes)
        rnd = w.run(load_job, args, self.meter)
        kinds: Counter[str] = Counter()
        lat: list[float] = []
        for r in rnd.results:
            kinds.update(r["kinds"])
            lat += r["latencies"]
        total = sum(kinds.values())
        acc = account(f"web cache {c.mode}, {n} cache(s)", rnd, self.meter, max(total, 1), self.coord_pids)
        node_cpu = rnd.used(self.meter, node_pids)
        coord_cpu = acc["cpu_s"]["coordinator"] if c.mode == "cogs" else 0.0
        s1 = node_stats(c.nodes)

        def share(kind: str) -> float:
            return kinds[kind] / total if total else 0.0

        row = {
            "instances": n, "mode": c.mode, "round": rep, "requests": total, "requests_per_s": total / rnd.wall_s,
            "hit_ratio": share("local hit") + share("remote hit"), "remote_hit_ratio": share("remote hit"),
            "p50_ms": pct(lat, 50) * 1e3 if lat else 0.0, "p99_ms": pct(lat, 99) * 1e3 if lat else 0.0,
            "errors": sum(r["errors"] for r in rnd.results),
            "node_cpu_us_per_request": node_cpu / max(total, 1) * 1e6,
            "coordinator_cpu_us_per_request": coord_cpu / max(total, 1) * 1e6,
            "requests_per_cpu_s": total / (node_cpu + coord_cpu) if node_cpu + coord_cpu else 0.0,
            "icp_timeouts": s1.get("icp timeouts", 0) - s0.get("icp timeouts", 0),
            "wall_s": acc["wall_s"], "cores_busy": acc["cores_busy"],
        }  # fmt: skip
        cpu = row["node_cpu_us_per_request"] + row["coordinator_cpu_us_per_request"]
        self.progress(
            f"  {n} cache(s), {c.mode}: {fmt_rate(row['requests_per_s'])} req/s, hit ratio {row['hit_ratio']:.1%} "
            f"(remote {row['remote_hit_ratio']:.1%}), p50 {row['p50_ms']:.1f} ms, errors {row['errors']}; "
            f"CPU/request {cpu:.0f} us (coordinator {row['coordinator_cpu_us_per_request']:.0f})"
        )
        return row


def _run(b: _Bench, sizes: list[int]) -> None:
    place = b.place
    try:
        for pid in b.coord_pids:
            place.pin(pid, "tested")  # with the caches: its CPU comes out of their share, as ICP's does
        with place.spawning_rest(), Workers(LOAD_PROCS, start=b.site.starter(["mb1"] * LOAD_PROCS)) as w:
            b.meter.add(w.pids)
            for n in sizes:
                b.size(w, n)
    finally:
        place.restore()
    b.cal.sample()


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    placement: str = "shared",
    rounds: int | None = None,
    lab_rtt: str | None = None,
) -> dict[str, Any]:
    """Run the bench on ``url`` (default: a cluster of its own) or, with ``lab_rtt``, in a
    lab: every cache on a host of its own, load and origin on another (needs root)."""
    sizes = [1, 3] if quick else [1, 3, 5, 7, 9]
    place = Placement(placement)
    if lab_rtt is not None and place.mode == "split":
        raise BenchError("--placement split pins processes of this machine's hosts: not with --lab")
    if place.note:
        progress(f"placement: shared ({place.note})")
    elif place.mode == "split":
        progress(f"placement: caches and coordinator on CPUs {sorted(place.tested)}; load generators and origin on "
                 f"CPUs {sorted(place.rest)}")  # fmt: skip
    with bench_site(url, progress, lab_rtt=lab_rtt, middleboxes=1 + 2 * max(sizes)) as site:
        # everything that talks to the coordinator runs where the driver runs (mb1 in the lab)
        b = site.call(lambda: _Bench(site, quick, place, progress, rounds))
        env = site.call(lambda: environment(site.url, site.info if site.lab else place.describe(), warm_s=b.warm,
                                            measure_s=b.measure, load_processes=LOAD_PROCS))  # fmt: skip
        site.call(lambda: _run(b, sizes))
    load = {"working_set": OBJECTS, "zipf_s": ZIPF_S, "recurrence": RECURRENCE, "load_processes": LOAD_PROCS,
            "robots_per_instance": ROBOTS_PER_NODE, "origin_delay_ms": ORIGIN_DELAY_S * 1e3}  # fmt: skip
    data = summarize(b, env, sizes, quick, load)
    path = write_results("webcache" + site.name, data, markdown(data), out)
    plot(path, data)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data
