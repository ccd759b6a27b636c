"""Cooperative web cache (paper Fig. 11c): throughput and hit ratio with 1..9 caching
proxies, objects found through cogs vs ICP-style sibling queries, side by side.

A Polygraph-like load: robots (4 per proxy) request objects back to back through
their proxy; 60% of requests go to a working set of 2,000 objects with Zipf(0.8)
popularity, 40% to objects never requested before (the offered hit ratio is 60%);
sizes are lognormal (~11 KB mean); the origin answers after 20 ms. Before each
configuration the working set is filled (every object fetched once, through the
proxies in turn), so both modes start from the same cache; then a warm-up (not
measured) and a measured window: requests/s, hit ratio (local + remote), where hits
came from, latency. Both modes run the same code (cogs/nf/webcache/node.py), the same
load and the same origin, one after the other on this machine.

Placement (``--placement``): by default (``split``) the caching proxies run on one
half of the CPUs and everything else (load generators, origin, the coordinator's
nodes on this host) on the other, as in the paper the caches had machines of their
own and clients, servers and coordinator ran elsewhere; ``shared`` lets them all
compete for every core. Either way the CPU every request cost the caches and the
coordinator is reported beside the throughput (``cpu_us_per_request_*``).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx

from cogs import runtime
from cogs.benchmarks.common import (
    Placement,
    Progress,
    bench_cluster,
    coordinator_cpu,
    coordinator_nodes,
    environment,
    fmt_rate,
    local_pids,
    md_table,
    noop,
    pyplot,
    save_plot,
    write_results,
)
from cogs.nf.webcache.cluster import web_cache

OBJECTS, ZIPF_S, RECURRENCE, ROBOTS_PER_NODE, LOAD_PROCS = 2000, 0.8, 0.6, 4, 2
NEW_BASE = 10_000_000  # ids of objects requested once
ORIGIN_DELAY_S = 0.02


def _kind(x_cache: str) -> str:
    if x_cache.startswith("HIT (local)"):
        return "local hit"
    if x_cache.startswith("HIT"):
        return "remote hit"
    return "miss"


async def _load(
    origin: str, nodes: list[str], robots: list[int], seed: int, start_at: float, warm: float, measure: float
) -> dict[str, Any]:
    cum = list(itertools.accumulate(1 / (k**ZIPF_S) for k in range(1, OBJECTS + 1)))
    kinds: Counter[str] = Counter()
    lat: list[float] = []
    errors = 0
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30), trust_env=False
    )
    t_measure, t_end = start_at + warm, start_at + warm + measure

    async def robot(j: int, node: int) -> None:
        nonlocal errors
        rng = random.Random(seed * 1000 + j)
        proxy = f"http://{nodes[node]}"
        fresh = itertools.count(NEW_BASE + (seed * 1000 + j) * 1_000_000)
        while (now := time.time()) < t_end:
            recurring = rng.random() < RECURRENCE
            n = rng.choices(range(OBJECTS), cum_weights=cum)[0] if recurring else next(fresh)
            t = time.perf_counter()
            try:
                async with session.get(f"{origin}/obj/{n}", proxy=proxy) as r:
                    await r.read()
                    status, x_cache = r.status, r.headers.get("x-cache", "")
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                continue
            if now >= t_measure:
                if status != 200:
                    errors += 1
                    continue
                kinds[_kind(x_cache)] += 1
                lat.append(time.perf_counter() - t)

    await anyio.sleep(max(0.0, start_at - time.time()))
    try:
        async with anyio.create_task_group() as tg:
            for j, node in enumerate(robots):
                tg.start_soon(robot, j, node)
    finally:
        await session.close()
    return {"kinds": dict(kinds), "latencies": lat, "errors": errors}


def _load_proc(args: tuple[Any, ...], q: Any) -> None:
    try:
        q.put(("ok", runtime.run(_load, *args)))
    except BaseException as e:
        q.put(("error", f"{type(e).__name__}: {e}"))


def run_load(
    origin: str,
    nodes: list[str],
    warm: float,
    measure: float,
    coordinator: list[str] | None = None,
    place: Placement | None = None,
) -> dict[str, Any]:
    """The load for warm + measure seconds; what the measured window saw, including
    the CPU the nodes and the coordinator spent per request in it."""
    robots = [i % len(nodes) for i in range(ROBOTS_PER_NODE * len(nodes))]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 2.0  # the load processes start together, once spawned
    samples: list[tuple[dict[str, int], float]] = []

    def sample() -> None:
        samples.append((node_stats(nodes), coordinator_cpu(coordinator or [])))

    timers = [threading.Timer(start_at + warm - time.time(), sample),
              threading.Timer(start_at + warm + measure - time.time(), sample)]  # fmt: skip
    for t in timers:
        t.start()
    procs = [
        ctx.Process(target=_load_proc, args=((origin, nodes, robots[p::LOAD_PROCS], p, start_at, warm, measure), q))
        for p in range(LOAD_PROCS)
    ]
    with place.spawning_rest() if place else contextlib.nullcontext():
        for p in procs:
            p.start()
    results = [q.get(timeout=warm + measure + 120) for _ in procs]
    for p in procs:
        p.join(10)
    for t in timers:
        t.join()
    bad = [r[1] for r in results if r[0] != "ok"]
    if bad:
        raise RuntimeError(f"load generator failed: {bad[0]}")
    kinds: Counter[str] = Counter()
    lat: list[float] = []
    for _, r in results:
        kinds.update(r["kinds"])
        lat += r["latencies"]
    lat.sort()
    total = sum(kinds.values())
    hits = kinds["local hit"] + kinds["remote hit"]
    (n0, c0), (n1, c1) = samples
    served = max(n1["requests"] - n0["requests"], 1)
    return {
        "node_cpu_us_per_request": round((n1["cpu_ms"] - n0["cpu_ms"]) * 1000 / served),
        "coordinator_cpu_us_per_request": round((c1 - c0) * 1e6 / served),
        "requests": total,
        "requests_per_s": total / measure,
        "hit_ratio": hits / total if total else 0.0,
        "local_hit_ratio": kinds["local hit"] / total if total else 0.0,
        "remote_hit_ratio": kinds["remote hit"] / total if total else 0.0,
        "p50_ms": lat[len(lat) // 2] * 1e3 if lat else 0.0,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1e3 if lat else 0.0,
        "errors": sum(r["errors"] for _, r in results),
    }


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


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    placement: str = "split",
) -> dict[str, Any]:
    sizes = [1, 3, 9] if quick else [1, 3, 5, 7, 9]
    warm, measure = (2.0, 4.0) if quick else (4.0, 10.0)
    runs: list[dict[str, Any]] = []
    place = Placement(placement)
    if place.note:
        progress(f"placement: shared ({place.note})")
    elif place.mode == "split":
        progress(f"placement: caching proxies on CPUs {sorted(place.tested)}; load generators, origin and "
                 f"coordinator on CPUs {sorted(place.rest)}")  # fmt: skip
    with bench_cluster(url, progress) as seed:
        coord_nodes = coordinator_nodes(seed)
        try:
            for pid in local_pids(coord_nodes):
                place.pin(pid, "rest")  # the coordinator: another machine in the paper
            for n in sizes:
                for mode in ("cogs", "icp"):
                    runs.append(_one(seed, coord_nodes, n, mode, warm, measure, place, progress))
        finally:
            place.restore()
    return _report(runs, sizes, (quick, warm, measure), place, out, progress)


def _one(
    seed: str,
    coord_nodes: list[str],
    n: int,
    mode: str,
    warm: float,
    measure: float,
    place: Placement,
    progress: Progress,
) -> dict[str, Any]:
    """One configuration: n caches in ``mode``, filled, then loaded and measured."""
    coordinator = seed if mode == "cogs" else None
    with web_cache(n, mode, coordinator, origin_delay_s=ORIGIN_DELAY_S, state="bench_objects") as c:
        assert c.origin is not None
        for i, proc in enumerate(c.procs):
            place.pin(proc.pid, "rest" if i == 0 else "tested")  # the origin is started first
        runtime.run(_fill, c.origin, c.nodes)
        r = run_load(c.origin, c.nodes, warm, measure, coord_nodes if mode == "cogs" else [], place)
        r["nodes"] = node_stats(c.nodes)
    r.update(instances=n, mode=mode)
    extra = f", {r['nodes'].get('icp timeouts', 0)} ICP timeouts" if mode == "icp" else ""
    cpu = r["node_cpu_us_per_request"] + r["coordinator_cpu_us_per_request"]
    extra += f"; CPU/request {cpu} us (coordinator {r['coordinator_cpu_us_per_request']})"
    progress(
        f"{n} instance(s), {mode}: {fmt_rate(r['requests_per_s'])} req/s, hit ratio {r['hit_ratio']:.1%} "
        f"(remote {r['remote_hit_ratio']:.1%}), p50 {r['p50_ms']:.1f} ms, errors {r['errors']}{extra}"
    )
    return r


def _report(
    runs: list[dict[str, Any]],
    sizes: list[int],
    how: tuple[bool, float, float],
    place: Placement,
    out: Path | None,
    progress: Progress,
) -> dict[str, Any]:
    quick, warm, measure = how
    by = {(r["instances"], r["mode"]): r for r in runs}
    top = max(sizes)
    cogs_cpu = {
        n: by[(n, "cogs")]["node_cpu_us_per_request"] + by[(n, "cogs")]["coordinator_cpu_us_per_request"] for n in sizes
    }
    icp_cpu = {n: by[(n, "icp")]["node_cpu_us_per_request"] for n in sizes}
    summary = {
        f"ratio_vs_icp_at_{top}": round(by[(top, "cogs")]["requests_per_s"] / by[(top, "icp")]["requests_per_s"], 2),
        "ratio_vs_icp": {
            n: round(by[(n, "cogs")]["requests_per_s"] / by[(n, "icp")]["requests_per_s"], 2) for n in sizes
        },
        "hit_ratio_cogs": {n: round(by[(n, "cogs")]["hit_ratio"], 3) for n in sizes},
        "hit_ratio_icp": {n: round(by[(n, "icp")]["hit_ratio"], 3) for n in sizes},
        "requests_per_s_cogs": {n: round(by[(n, "cogs")]["requests_per_s"]) for n in sizes},
        "requests_per_s_icp": {n: round(by[(n, "icp")]["requests_per_s"]) for n in sizes},
        "cpu_us_per_request_cogs": cogs_cpu,
        "cpu_us_per_request_icp": icp_cpu,
        # what the cache cluster itself spends per request (the load generator and the
        # origin share this box's cores too; in the paper they ran on other machines)
        f"cpu_ratio_vs_icp_at_{top}": round(icp_cpu[top] / max(1, cogs_cpu[top]), 2),
        "target_ratio_vs_icp_at_9": 1.4,
    }
    data = {
        "bench": "webcache", "quick": quick, "environment": environment(), "placement": place.describe(),
        "load": {"working_set": OBJECTS, "zipf_s": ZIPF_S, "recurrence": RECURRENCE,
                 "robots_per_instance": ROBOTS_PER_NODE, "origin_delay_ms": ORIGIN_DELAY_S * 1e3,
                 "warm_s": warm, "measure_s": measure},
        "summary": summary, "runs": runs,
    }  # fmt: skip
    where = (
        f"Caching proxies on CPUs {sorted(place.tested)}; load generators, origin and coordinator on CPUs "
        f"{sorted(place.rest)} (in the paper: other machines)."
        if place.mode == "split"
        else "Load generators, origin, caching proxies and coordinator share every CPU."
    )
    md = f"# Cooperative web cache: cogs vs ICP (paper Fig. 11c)\n\n{where}\n\n" + md_table(
        ["instances", "mode", "requests/s", "hit ratio", "remote hits", "p50 (ms)", "p99 (ms)",
         "CPU/request (us): nodes + coordinator", "errors"],
        [[r["instances"], r["mode"], fmt_rate(r["requests_per_s"]), f"{r['hit_ratio']:.1%}",
          f"{r['remote_hit_ratio']:.1%}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
          f"{r['node_cpu_us_per_request']} + {r['coordinator_cpu_us_per_request']}", r["errors"]] for r in runs],
    )  # fmt: skip
    md += f"\ncogs / ICP throughput at {top} instances: {summary[f'ratio_vs_icp_at_{top}']}x (target 1.4x).\n"
    path = write_results("webcache", data, md, out)
    _plot(path, runs, sizes)
    progress(f"wrote {path}")
    return data


def _plot(path: Path, runs: list[dict[str, Any]], sizes: list[int]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode, color in (("cogs", "#4a7"), ("icp", "#888")):
        rows = [r for r in runs if r["mode"] == mode]
        a.plot(sizes, [r["requests_per_s"] for r in rows], marker="o", color=color, label=mode)
        b.plot(sizes, [r["hit_ratio"] * 100 for r in rows], marker="o", color=color, label=mode)
    a.set_xlabel("caching proxies")
    a.set_ylabel("requests/s")
    a.set_title("Throughput")
    b.set_xlabel("caching proxies")
    b.set_ylabel("hit ratio (%)")
    b.set_title("Hit ratio (local + remote)")
    for ax in (a, b):
        ax.legend(fontsize=8)
        ax.set_xticks(sizes)
    save_plot(fig, path)
