"""Soak: a steady load for minutes while proxies join and leave.

Proxies (in one process, each with its own connections) come and go every second
or so; the live ones issue trigger updates at a steady total rate with
backpressure, and read a replicated state. At the end every counter must equal
what was issued (nothing lost, nothing twice), every counter past the threshold
must have raised exactly one alert, and the memory of Redis and of the proxy
process must have levelled off (second half of the run vs first).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from cogs import runtime
from cogs.alerts import read_alerts
from cogs.benchmarks.common import Progress, bench_cluster, fmt_rate, md_table, noop, write_results
from cogs.benchmarks.harness import environment
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.protocol import Mode
from cogs.proxy import StateProxy

THRESHOLD = 5000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _redis_mb(co: Coordinator) -> float:
    assert co.topology is not None
    total = 0
    for i in range(len(co.topology.nodes)):
        total += int((await co.node_client(i).info("memory"))["used_memory"])
    return total / 2**20


async def soak(url: str, seconds: float, keys: int, rate: int, max_proxies: int, progress: Progress) -> dict[str, Any]:
    ns = f"soak-{uuid.uuid4().hex[:6]}:"
    issued: Counter[str] = Counter()
    rng = random.Random(3)
    hot = [f"{ns}{i}" for i in range(keys)]
    live: dict[int, anyio.Event] = {}
    joined = left = reads = 0
    samples: list[dict[str, float]] = []

    async def worker(stop: anyio.Event, share: float) -> None:
        nonlocal reads
        async with StateProxy(url) as p:
            per_tick = max(1, int(rate * share / 100))  # 100 ticks a second
            while not stop.is_set():
                await p.wait_room(per_tick)
                for _ in range(per_tick):
                    k = hot[min(int(rng.paretovariate(1.2)) - 1, keys - 1)]  # a few hot keys
                    p.update("soak_count", k, "add", 1)
                    issued[k] += 1
                await p.syn_retrieve("soak_replica", hot[rng.randrange(32)])
                reads += 1
                await anyio.sleep(0.01)
            await p.flush()

    async with Coordinator(url=url) as co, anyio.create_task_group() as tg:
        deadline = time.monotonic() + seconds
        t0 = time.monotonic()
        n = 0
        while time.monotonic() < deadline:
            if len(live) < 2 or (len(live) < max_proxies and rng.random() < 0.5):
                stop = anyio.Event()
                live[n] = stop
                tg.start_soon(worker, stop, 1 / max_proxies)
                joined += 1
                n += 1
            elif live:
                victim = rng.choice(list(live))
                live.pop(victim).set()
                left += 1
            await anyio.sleep(1.0)
            samples.append(
                {"t": round(time.monotonic() - t0, 1), "redis_mb": await _redis_mb(co), "proxy_rss_mb": _rss_mb()}
            )
            progress(f"{samples[-1]['t']:.0f}s: {len(live)} proxies, {sum(issued.values()):,} updates")
        for stop in live.values():
            stop.set()
    elapsed = time.monotonic() - t0
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        got = await table.execute([Op(Mode.RETRIEVE, "soak_count", k, None) for k in hot])
        final = {k: v or 0 for k, v in zip(hot, got, strict=True)}
        alerted = Counter(a.key for a in await read_alerts(co, state="soak_count") if a.key.startswith(ns))
        await table.execute([Op(Mode.UPDATE, "soak_count", k, "clear") for k in hot])
    lost = sum(max(0, issued[k] - final[k]) for k in hot)
    doubled = sum(max(0, final[k] - issued[k]) for k in hot)
    want_alerts = {k for k in hot if issued[k] >= THRESHOLD}
    half = len(samples) // 2
    first, second = samples[: max(half, 1)], samples[half:] or samples

    def avg(xs: list[dict[str, float]], f: str) -> float:
        return sum(x[f] for x in xs) / len(xs)

    return {
        "seconds": round(elapsed, 1),
        "updates": sum(issued.values()),
        "updates_per_s": sum(issued.values()) / elapsed,
        "replica_reads": reads,
        "proxies_joined": joined,
        "proxies_left": left,
        "lost": lost,
        "applied_twice": doubled,
        "alerts_expected": len(want_alerts),
        "alerts_missing": len(want_alerts - set(alerted)),
        "alerts_unexpected": len(set(alerted) - want_alerts),
        "alerts_repeated": sum(1 for v in alerted.values() if v > 1),
        "redis_mb_growth": avg(second, "redis_mb") / avg(first, "redis_mb") - 1,
        "proxy_rss_mb_growth": avg(second, "proxy_rss_mb") / avg(first, "proxy_rss_mb") - 1,
        "samples": samples,
    }


def main(
    url: str | None = None, quick: bool = False, out: Path | None = None, progress: Progress = noop
) -> dict[str, Any]:
    seconds = 25.0 if quick else 180.0
    with bench_cluster(url, progress) as seed:
        env = environment(seed)
        r = runtime.run(soak, seed, seconds, 2000, 20_000, 6, progress)
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "samples"}
    data = {"bench": "soak", "quick": quick, "environment": env, "summary": summary, "samples": r["samples"]}
    md = "# Soak: steady load, proxies joining and leaving\n\n" + md_table(
        ["what", "value"],
        [
            ["duration", f"{r['seconds']} s"],
            ["updates", f"{r['updates']:,} ({fmt_rate(r['updates_per_s'])}/s)"],
            ["proxies joined / left", f"{r['proxies_joined']} / {r['proxies_left']}"],
            ["lost / applied twice", f"{r['lost']} / {r['applied_twice']}"],
            ["alerts expected / missing / unexpected / repeated",
             f"{r['alerts_expected']} / {r['alerts_missing']} / {r['alerts_unexpected']} / {r['alerts_repeated']}"],
            ["Redis memory, 2nd half vs 1st", f"{r['redis_mb_growth']:+.1%}"],
            ["proxy process RSS, 2nd half vs 1st", f"{r['proxy_rss_mb_growth']:+.1%}"],
        ],
    )  # fmt: skip
    path = write_results("soak", data, md, out)
    progress(f"wrote {path}")
    return data
