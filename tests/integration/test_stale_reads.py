"""Stale-read stress: processes update and read the same replicated keys at once.

Every read must return a value at least as new as the last update acknowledged (to
any process) before the read started, minus the discard delay D; counters only
grow, so "as new" is "as large". Most reads are replica hits, so this exercises the
discard path, versions and the discard-overtakes-reply race under load.
"""

from __future__ import annotations

import bisect
import multiprocessing as mp
import random
import time
from typing import Any

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.proxy import StateProxy

PROCS, KEYS, SECONDS = 4, 6, 4.0
DISCARD_DELAY = 0.1  # seconds: a discard must have arrived by then (bench: p99 is ~1 ms)


async def _work(url: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    acks: list[tuple[float, str, int]] = []
    reads: list[tuple[float, str, int]] = []
    async with StateProxy(url) as p:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            key = f"stale{rng.randrange(KEYS)}"
            if rng.random() < 0.15:
                v = await p.syn_up("nat", key, "add", 1)
                acks.append((time.monotonic(), key, v))
            else:
                t = time.monotonic()
                v = await p.syn_retrieve("nat", key)
                reads.append((t, key, v or 0))
            if rng.random() < 0.05:
                await anyio.sleep(0.001)
        s = p.statistics()
    return {"acks": acks, "reads": reads, "hits": s.cache_hits, "discards": s.discards}


def _proc(url: str, seed: int, q: Any) -> None:
    try:
        q.put(anyio.run(_work, url, seed))
    except BaseException as e:
        q.put({"error": repr(e)})
        raise


@pytest.mark.slow
def test_no_stale_read_after_the_discard_delay(cluster: LocalCluster) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_proc, args=(cluster.url, 100 + i, q)) for i in range(PROCS)]
    for p in ps:
        p.start()
    results = [q.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(30)
    assert not [r["error"] for r in results if "error" in r]
    acks = sorted(a for r in results for a in r["acks"])
    reads = [x for r in results for x in r["reads"]]
    hits = sum(r["hits"] for r in results)
    assert len(acks) > 200
    assert hits > len(reads) / 2, "the test must exercise replica hits"
    assert sum(r["discards"] for r in results) > 100

    # newest acknowledged value per key before each instant: times and running maxima
    times: dict[str, list[float]] = {}
    best: dict[str, list[int]] = {}
    for t, key, v in acks:
        times.setdefault(key, []).append(t)
        b = best.setdefault(key, [])
        b.append(max(v, b[-1]) if b else v)
    stale = []
    for t, key, v in reads:
        i = bisect.bisect_left(times.get(key, []), t - DISCARD_DELAY)
        floor = best[key][i - 1] if i else 0
        if v < floor:
            stale.append((key, v, floor))
    assert stale == [], f"{len(stale)} stale reads of {len(reads)}, e.g. {stale[:5]}"
