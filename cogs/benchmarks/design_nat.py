"""Design bench, direct-retrieval parts (paper Fig. 10 + Table III): the NAT in sync
and async mode on a singleton and a replica portmap state, with request merging on
and off; sync retrieve round trips; replica hits; discard fan-out.

Each function is one measurement; design.py repeats them and takes the medians.
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from typing import Any

import anyio
import anyio.lowlevel

from cogs.benchmarks.common import zipf_keys
from cogs.benchmarks.harness import BenchError
from cogs.nf.nat_table import NatTable, flow_id
from cogs.proxy import StateProxy

FLOWS = 10_000
NAT_MODES = ("sync", "async", "async-unmerged")  # async: concurrent lookups of a flow merged


def nat_workload(seed: int = 3) -> tuple[list[int], list[bool]]:
    """Which flow each packet belongs to (Zipf(1.1) over 10k flows) and whether it is
    a reply (40%): the same sequence for every run."""
    seq = [int(k) for k in zipf_keys(FLOWS, 200_000, 1.1, seed, "")]
    rng = random.Random(seed + 2)
    return seq, [rng.random() < 0.4 for _ in seq]


async def nat(
    url: str, state: str, mode: str, seconds: float, workload: tuple[list[int], list[bool]]
) -> dict[str, Any]:
    """Packets of 10k flows through a NatTable for ``seconds``: 60% outbound (the first
    packet of a flow allocates its port), 40% replies to a mapped flow. At the end the
    run's mappings are released (so repeats within the ports' idle time do not
    exhaust the pool)."""
    seq, replies = workload
    tag = uuid.uuid4().int
    flows = [(6, f"10.{tag % 200}.{i // 250}.{1 + i % 250}", 1024 + (tag + i) % 60000) for i in range(FLOWS)]
    ext: dict[int, tuple[str, int]] = {}
    rtts: list[float] = []
    done = 0
    async with StateProxy(url) as p:
        table = NatTable(p, state, merge=mode != "async-unmerged")
        s0 = p.statistics()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        i = 0
        if mode == "sync":
            while time.perf_counter() < deadline:
                f = seq[i % len(seq)]
                t = time.perf_counter()
                if replies[i % len(seq)] and f in ext:
                    await table.inbound(6, *ext[f])
                else:
                    m = await table.outbound(*flows[f])
                    if m is not None:
                        ext[f] = m
                rtts.append(time.perf_counter() - t)
                i += 1
            done = i
        else:
            window = 4000
            outstanding = 0

            def cb(m: Any, pkt: tuple[int, float, bool]) -> None:
                nonlocal outstanding, done
                f, t, out = pkt
                outstanding -= 1
                done += 1
                if out and m is not None:
                    ext[f] = m
                rtts.append(time.perf_counter() - t)

            while time.perf_counter() < deadline:
                for _ in range(200):
                    if outstanding >= window:
                        break
                    f = seq[i % len(seq)]
                    outstanding += 1
                    if replies[i % len(seq)] and f in ext:
                        table.asyn_inbound(6, *ext[f], cb, (f, time.perf_counter(), False))
                    else:
                        table.asyn_outbound(*flows[f], cb, (f, time.perf_counter(), True))
                    i += 1
                await anyio.lowlevel.checkpoint()
            await p.flush()
            with anyio.fail_after(60):
                while outstanding:  # noqa: ASYNC110 - callbacks arrive from the batcher
                    await anyio.sleep(0.001)
        elapsed = time.perf_counter() - t0
        s = p.statistics()
        await _release(p, table, [flows[f] for f in ext])
    return {
        "state": state,
        "mode": mode,
        "seconds": round(elapsed, 3),
        "packets": done,
        "packets_per_s": done / elapsed,
        "rtt_p50_us": _pct(rtts, 50) * 1e6,
        "rtt_p99_us": _pct(rtts, 99) * 1e6,
        "cache_hit_rate": round(s.cache_hit_rate, 3),
        "lookups_per_packet": round((s.ops_sent - s0.ops_sent) / max(done, 1), 4),
        "flows_mapped": len(ext),
        "exhausted": table.exhausted,
        "errors": table.errors,
    }


async def _release(p: StateProxy, table: NatTable, flows: list[tuple[int, str, int]]) -> None:
    left = len(flows)
    done = anyio.Event()

    def released(_: Any, __: Any) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    for proto, ip, port in flows:
        fid = flow_id(proto, ip, port)
        await p.wait_room()
        p.asyn_up(table.state, table.block_of_flow(fid), "release", fid, released)
    if flows:
        await p.flush()
        with anyio.fail_after(60):
            await done.wait()


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        raise BenchError("a NAT run translated no packet")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def sync_retrieve_rtt(url: str, n: int) -> list[float]:
    """``await syn_retrieve`` of a singleton state: one coordinator round trip each."""
    async with StateProxy(url) as p:
        await p.syn_up("bench_direct", "rtt", "set", 1)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await p.syn_retrieve("bench_direct", "rtt")
            out.append(time.perf_counter() - t)
        return out


async def replica_hit(url: str, n: int) -> dict[str, float]:
    """Mean time of ``n`` ``await syn_retrieve`` served by the replica cache, and of
    ``n`` ``cached()`` peeks (one measurement: the bench takes the median of repeats)."""
    async with StateProxy(url) as p:
        await p.syn_up("bench_replica", "hit", "set", 1)
        await p.syn_retrieve("bench_replica", "hit")
        hits0 = p.statistics().cache_hits
        t = time.perf_counter()
        for _ in range(n):
            await p.syn_retrieve("bench_replica", "hit")
        awaited = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for _ in range(n):
            p.cached("bench_replica", "hit")
        peek = (time.perf_counter() - t) / n
        if p.statistics().cache_hits - hits0 < n:
            raise BenchError("the replica-hit measurement missed the cache: its figure would be a round trip")
    return {"await_syn_retrieve_us": awaited * 1e6, "cached_peek_us": peek * 1e6}


def _seen_at(seen: dict[int, float], j: int, sidx: int, key: str, version: int) -> None:
    seen[j] = time.perf_counter()


async def discard_fanout(url: str, holders: int, rounds: int) -> dict[str, Any]:
    """One updater, ``holders`` proxies caching the key: update and discard latencies."""
    async with StateProxy(url) as writer:
        readers = [StateProxy(url) for _ in range(holders)]
        for r in readers:
            await r.__aenter__()
        try:
            key = f"fan{uuid.uuid4().hex[:6]}"
            seen: dict[int, float] = {}
            for j, r in enumerate(readers):
                r.add_discard_listener(functools.partial(_seen_at, seen, j))
            lat, upd = [], []
            for _ in range(rounds):
                for r in readers:
                    await r.syn_retrieve("bench_replica", key)  # cached + registered
                seen.clear()
                t0 = time.perf_counter()
                await writer.syn_up("bench_replica", key, "add", 1)
                upd.append(time.perf_counter() - t0)
                with anyio.fail_after(5):
                    while len(seen) < holders:  # noqa: ASYNC110 - discards arrive on another link
                        await anyio.sleep(0.0002)
                lat += [t - t0 for t in seen.values()]
        finally:
            for r in readers:
                await r.aclose()
    return {"holders": holders, "update_s": upd, "discard_s": lat}
