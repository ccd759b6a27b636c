"""Coordinator throughput (paper Fig. 12): applied ops/s vs number of states and proxies.

Simulated proxies are processes, each with its own Coordinator connection. Each sends
per-node batches of distinct keys (no coalescing: every op is applied by Lua) with an
update/retrieve mix: 40% int add (threshold checker), 40% set add (cardinality
checker, windowed), 20% int retrieve. Keys are routed once per process (the slot map
a proxy caches); every batch is freshly encoded. Beside it, in the same run, the
same cluster is driven by naive redis-py (one awaited INCRBY at a time) and by
pipelined redis-py INCRBY (2000 per round trip).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio.cluster import RedisCluster

from cogs import runtime
from cogs.benchmarks.common import (
    Progress,
    bench_cluster,
    environment,
    fmt_rate,
    md_table,
    noop,
    pyplot,
    save_plot,
    write_results,
)
from cogs.coordinator.client import Coordinator
from cogs.keys import escape, slot, state_key

BATCH = 2000
INFLIGHT = 2  # batches in flight per node per process: Redis never waits for Python


def key_name(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _mix(sidx: dict[str, int], n: int, seed: int) -> list[tuple[int, int, str, list[Any]]]:
    """The op mix of one batch as runs (mode, state, op, args): keys are distinct, so
    ops commute and grouping them by kind changes nothing but the frame size."""
    rng = random.Random(seed)
    kinds = [rng.random() for _ in range(n)]
    n_int = sum(1 for r in kinds if r < 0.4)
    n_set = sum(1 for r in kinds if 0.4 <= r < 0.8)
    return [
        (0, sidx["bench_int"], "add", ["1"] * n_int),
        (0, sidx["bench_set"], "add", [str(rng.randrange(1024)) for _ in range(n_set)]),
        (2, sidx["bench_int"], "get", [None] * (n - n_int - n_set)),
    ]


def _frame(mix: list[tuple[int, int, str, list[Any]]], keys: list[str]) -> str:
    """A run frame (cogs/coordinator/wire.py) giving each op of the mix the next key."""
    parts, off = [], 0
    for mode, sidx, op, args in mix:
        chunk = keys[off : off + len(args)]
        if not chunk:
            break
        off += len(chunk)
        flat: list[Any] = [mode, sidx, op, len(chunk)]
        for k, a in zip(chunk, args, strict=False):
            flat += (k, a)
        parts.append(json.dumps(flat, separators=(",", ":"))[1:-1])
    return "[" + ",".join(parts) + "]"


async def _drive(url: str, nkeys: int, seconds: float, seed: int, populate: bool = False) -> tuple[int, int, float]:
    """One simulated proxy: returns (ops sent, ops applied, elapsed seconds)."""
    async with Coordinator(url=url) as co:
        catalog, token = await co.stored_catalog()
        sidx = {s.name: catalog.index(s.name) for s in catalog}
        assert co.topology is not None
        nnodes = len(co.topology.nodes)
        per_node: list[list[str]] = [[] for _ in range(nnodes)]
        for i in range(nkeys):
            k = escape(key_name(i))
            per_node[co.topology.node_of(slot(k))].append(k)
        rng = random.Random(seed)
        for lst in per_node:
            rng.shuffle(lst)
        mix = _mix(sidx, BATCH, seed)
        fill = [(0, sidx["bench_int"], "add", ["1"] * BATCH), (0, sidx["bench_set"], "add", ["0"] * BATCH)]
        sent = applied = 0
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def pump(node: int, lane: int) -> None:
            nonlocal sent, applied
            keys = per_node[node]
            if not keys:
                return
            stream = co.alert_stream(node)
            off = (lane * BATCH) % len(keys)
            while True:
                if populate:  # every key gets an int and a set state
                    if off >= len(keys):
                        return
                    chunk = keys[off : off + BATCH]
                    frame = _frame(fill[:1], chunk)[:-1] + "," + _frame(fill[1:], chunk)[1:]
                    nops = 2 * len(chunk)
                else:
                    if time.perf_counter() > deadline:
                        return
                    if off + BATCH > len(keys):
                        off = 0
                    chunk = keys[off : off + BATCH]
                    frame = _frame(mix, chunk)
                    nops = len(chunk)
                off += BATCH * INFLIGHT
                reply = await co.call_batch(node, token, stream, frame)
                if reply.errors:
                    raise RuntimeError(f"bench batch failed: {next(iter(reply.errors.values()))}")
                sent += nops
                applied += reply.applied

        async with anyio.create_task_group() as tg:
            for node in range(nnodes):
                for lane in range(INFLIGHT):
                    tg.start_soon(pump, node, lane)
        return sent, applied, time.perf_counter() - t0


def _proc(url: str, nkeys: int, seconds: float, seed: int, start: Any, q: Any) -> None:
    start.wait()
    q.put(runtime.run(_drive, url, nkeys, seconds, seed))


def applied_rate(url: str, nkeys: int, procs: int, seconds: float) -> dict[str, Any]:
    """Run ``procs`` simulated proxies at once; total applied ops/s."""
    ctx = mp.get_context("spawn")
    start, q = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_proc, args=(url, nkeys, seconds, 1000 + i, start, q)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.5 + 0.3 * procs)  # let the spawned interpreters import and connect
    start.set()
    results = [q.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join()
    sent = sum(r[0] for r in results)
    applied = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return {
        "procs": procs,
        "ops": sent,
        "applied": applied,
        "seconds": round(elapsed, 3),
        "ops_per_s": applied / elapsed,
    }


async def _baseline(url: str, seconds: float, pipelined: bool) -> float:
    """redis-py INCRBY ops/s: one awaited command at a time, or BATCH per pipeline."""
    rc = RedisCluster.from_url(url)
    try:
        await rc.initialize()
        n, deadline = 0, time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < deadline:
            if pipelined:
                pipe = rc.pipeline(transaction=False)
                for i in range(BATCH):
                    pipe.incrby(state_key("pipelined", key_name((n + i) % 100_000)), 1)
                await pipe.execute()
                n += BATCH
            else:
                for _ in range(100):
                    await rc.incrby(state_key("naive", key_name(n % 100_000)), 1)
                    n += 1
        return n / (time.perf_counter() - t0)
    finally:
        await rc.aclose()


def main(
    url: str | None = None, quick: bool = False, out: Path | None = None, progress: Progress = noop
) -> dict[str, Any]:
    sizes = [1_000, 100_000] if quick else [1_000, 100_000, 1_000_000]
    procs_list = [1, 2] if quick else [1, 2, 4]
    seconds = 1.5 if quick else 3.0
    rows: list[dict[str, Any]] = []
    with bench_cluster(url, progress) as seed:
        for n in sizes:
            progress(f"{n:,} states: populating")
            runtime.run(_drive, seed, n, 0.0, 7, True)
            for procs in procs_list:
                r = applied_rate(seed, n, procs, seconds)
                r["states"] = n
                rows.append(r)
                progress(f"{n:,} states, {procs} proxy process(es): {fmt_rate(r['ops_per_s'])} applied ops/s")
        naive = runtime.run(_baseline, seed, seconds, False)
        progress(f"naive redis-py (one await per INCRBY): {fmt_rate(naive)} ops/s")
        piped = runtime.run(_baseline, seed, seconds, True)
        progress(f"pipelined redis-py INCRBY x{BATCH}: {fmt_rate(piped)} ops/s")
    mid = [r for r in rows if r["states"] == 100_000]
    best = max(r["ops_per_s"] for r in mid)
    summary = {
        "applied_ops_per_s": round(best),
        "applied_ops_per_s_by_states": {
            str(n): round(max(r["ops_per_s"] for r in rows if r["states"] == n)) for n in sizes
        },
        "naive_ops_per_s": round(naive),
        "pipelined_ops_per_s": round(piped),
        "ratio_vs_naive": round(best / naive, 1),
        "ratio_vs_pipelined": round(best / piped, 2),
        "targets": {"applied_ops_per_s": 400_000, "ratio_vs_naive": 50},
    }
    data = {
        "bench": "coordinator",
        "quick": quick,
        "batch_ops": BATCH,
        "inflight_per_node": INFLIGHT,
        "mix": ("40% int add + threshold, 40% set add + cardinality (windowed), 20% int get; distinct keys per batch"),
        "environment": environment(),
        "summary": summary,
        "runs": rows,
    }
    md = "# Coordinator throughput (paper Fig. 12)\n\n" + md_table(
        ["states", "proxy processes", "applied ops/s"],
        [[f"{r['states']:,}", r["procs"], fmt_rate(r["ops_per_s"])] for r in rows],
    )
    md += "\n" + md_table(
        ["client", "ops/s", "cogs ratio"],
        [
            ["cogs batch (best, 100k states)", fmt_rate(best), "1.0"],
            ["redis-py pipelined INCRBY", fmt_rate(piped), f"{best / piped:.1f}x"],
            ["redis-py naive (await per op)", fmt_rate(naive), f"{best / naive:.0f}x"],
        ],
    )
    path = write_results("coordinator", data, md, out)
    _plot(path, rows, sizes, naive, piped)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _plot(path: Path, rows: list[dict[str, Any]], sizes: list[int], naive: float, piped: float) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for procs in sorted({r["procs"] for r in rows}):
        pts = [(r["states"], r["ops_per_s"]) for r in rows if r["procs"] == procs]
        ax.plot(
            [p[0] for p in pts],
            [p[1] / 1e3 for p in pts],
            marker="o",
            label=f"cogs, {procs} proxy proc(s)",
        )
    ax.axhline(piped / 1e3, color="gray", linestyle="--", label="redis-py pipelined")
    ax.axhline(naive / 1e3, color="red", linestyle=":", label="redis-py naive")
    ax.set_xscale("log")
    ax.set_xlabel("states in the coordinator")
    ax.set_ylabel("applied ops/s (thousands)")
    ax.set_title("Coordinator throughput, 3-primary Redis Cluster")
    ax.legend(fontsize=8)
    save_plot(fig, path)
