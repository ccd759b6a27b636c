"""What one "who has this object?" costs in each design, in CPU and time: a cogs
locator lookup (one coordinator call) and an ICP query to every sibling (a datagram
each way per sibling), both for objects nobody has (every sibling answers MISS,
the common case of a miss), from one asking process with ``CONCURRENCY`` queries in
flight. The CPU counts the asker and whoever answers (the coordinator's nodes, or
every sibling cache)."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import anyio

from cogs.benchmarks.cpu import CpuMeter
from cogs.benchmarks.harness import BenchError, pct, stat
from cogs.benchmarks.workers import Gate, Workers
from cogs.nf.webcache.cluster import WebCacheCluster
from cogs.nf.webcache.icp import IcpAgent
from cogs.proxy import StateProxy

CONCURRENCY = 16


async def query_job(mode: str, url: str, siblings: list[str], state: str, n: int, gate: Gate) -> dict[str, Any]:
    """``n`` lookups of absent objects, ``CONCURRENCY`` at a time; their latencies."""
    urls = [f"http://origin.invalid/absent/{uuid.uuid4().hex}" for _ in range(n)]
    lat: list[float] = []
    it = iter(urls)
    sibs = [(h, int(p)) for h, _, p in (s.rpartition(":") for s in siblings)]
    async with StateProxy(url, peer_secret=secrets.token_hex(8)) if mode == "cogs" else _Null() as proxy:
        agent = IcpAgent(lambda _u: False, "0.0.0.0")  # siblings may be on other (lab) hosts
        if mode == "icp":
            await agent.start()
        found = 0

        async def asker() -> None:
            nonlocal found
            for u in it:
                t = time.perf_counter()
                if mode == "cogs":
                    got = await proxy.syn_retrieve(state, u)
                else:
                    got, _late = await agent.ask(sibs, u, 1.0)
                lat.append(time.perf_counter() - t)
                found += got is not None

        await gate.start()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENCY):
                tg.start_soon(asker)
        gate.stop()
        await agent.aclose()
    if found:
        raise BenchError(f"{found} lookups of absent objects found something: the query measurement is wrong")
    return {"latencies": lat, "lost": agent.lost}


class _Null:
    async def __aenter__(self) -> Any:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def query_cost(
    w: Workers, meter: CpuMeter, c: WebCacheCluster, url: str, state: str, coord_pids: list[int], reps: int
) -> dict[str, Any]:
    """CPU per query (asker + answerers) and latency, median of ``reps`` rounds."""
    answer = coord_pids if c.mode == "cogs" else [p.pid for p in c.procs if p.pid is not None]
    cpu, p50 = [], []
    for _ in range(reps):
        rnd = w.run(query_job, [(c.mode, url, c.peers, state, 2000)], meter)
        lat = rnd.results[0]["latencies"]
        used = rnd.worker_cpu_s + rnd.used(meter, answer)
        cpu.append(used / len(lat) * 1e6)
        p50.append(pct(lat, 50) * 1e6)
    return {"siblings": len(c.peers) if c.mode == "icp" else 0, "queries": 2000, "concurrency": CONCURRENCY,
            "cpu_us_per_query": stat(cpu, 1), "p50_us": stat(p50, 1)}  # fmt: skip
