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
import uuid
from typing import Any

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.proxy import StateProxy
from cogs.proxy.blocking import BlockingStateProxy
from cogs.proxy.discard import DEAD_AFTER
from tests.helpers import eventually

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


@pytest.mark.anyio
async def test_a_stalled_loop_serves_no_replica_older_than_the_bound(cluster: LocalCluster) -> None:
    """Proxy A holds a replica; its loop stalls (a CPU-bound callback, a SIGSTOP) longer
    than DEAD_AFTER while B, on a loop of its own, updates the key and is acknowledged:
    the discard sits unread in A's socket. The first read A's loop makes after the stall
    must not be the old replica (its freshness was last proven before the stall)."""
    key = f"stall-{uuid.uuid4().hex[:8]}"
    with BlockingStateProxy(cluster.url) as b:
        async with StateProxy(cluster.url) as a:
            b.syn_up("nat", key, "set", 1)
            assert await a.syn_retrieve("nat", key) == 1
            assert a.cached("nat", key) == 1  # a replica, served from the cache
            # A's loop is blocked from here: B's update is acknowledged, its discard waits for A
            assert b.syn_up("nat", key, "add", 1) == 2
            time.sleep(DEAD_AFTER + 0.5)  # noqa: ASYNC251 - the stall under test
            assert await a.syn_retrieve("nat", key) == 2  # the first thing A's loop runs
            s = a.statistics()
            assert s.expired_reads == 1
            # the link was stalled, not lost: new PONGs vouch again, the fresh replica is served
            await eventually(lambda: a.cache.fresh_until > time.monotonic())
            assert await a.syn_retrieve("nat", key) == 2
            assert a.statistics().cache_hits == s.cache_hits + 1
            assert a.statistics().cache_drops == s.cache_drops == 0
