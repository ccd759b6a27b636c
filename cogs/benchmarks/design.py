"""Design choices (paper Fig. 10 + Table III): sync/async x singleton/replica on the
NAT, the trigger-update hot path end to end, replica hits and discards.

Everything is measured in one run against one cluster (its own unless ``url``):

* **trigger path**: NF processes issue ``proxy.update`` (half int adds, half set
  inserts) over 100k keys with Zipf(1.1) popularity, as a real trace gives, and with
  uniform popularity beside it; the final states are read back and must equal what
  was issued. On a cluster of its own the bench repeats the Zipf run with the
  coordinator's AOF off (what ``cogs cluster up --persistence none`` gives).
* **NAT**: packets of 10k Zipf-popular flows through ``NatTable`` (the first packet
  of a flow allocates its external port; 40% are replies translated back); sync (one
  packet at a time, RTT per packet) and async (callback + packet, many in flight) on
  a singleton and a replica portmap state.
* **replica hit**: ``await syn_retrieve`` served from the replica cache.
* **discards**: update at one proxy -> discard seen by 1, 4, 16 holder proxies.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing as mp
import os
import queue
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import redis

from cogs import runtime
from cogs.benchmarks.common import (
    Progress,
    bench_cluster,
    coordinator_cpu,
    coordinator_nodes,
    environment,
    fmt_rate,
    md_table,
    noop,
    pyplot,
    save_plot,
    write_results,
)
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Mode, Op, StateTable
from cogs.nf.nat_table import NatTable
from cogs.proxy import StateProxy


def zipf_keys(n_keys: int, n: int, s: float, seed: int, prefix: str) -> list[str]:
    keys = [f"{prefix}{i}" for i in range(n_keys)]
    if s == 0:
        rng = random.Random(seed)
        return [keys[rng.randrange(n_keys)] for _ in range(n)]
    cum = list(itertools.accumulate(1 / (k**s) for k in range(1, n_keys + 1)))
    return random.Random(seed).choices(keys, cum_weights=cum, k=n)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


# -- trigger hot path ----------------------------------------------------------------------


async def _trigger(url: str, seq: list[str], members: list[str], start: Any) -> dict[str, Any]:
    async with StateProxy(url, batch_delay_ms=1.0) as p:
        upd = p.update
        start.wait()
        t0, cpu0 = time.perf_counter(), time.process_time()
        for j in range(0, len(seq), 2000):
            for i in range(j, min(j + 2000, len(seq)), 2):
                upd("bench_int", seq[i], "add", 1)
                upd("bench_set", seq[i + 1], "add", members[i])
            # room for the whole next chunk: with uniform keys each update is a new op
            await p.wait_room(2000)
            await anyio.lowlevel.checkpoint()
        await p.flush()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        s = p.statistics()
    return {"updates": s.updates, "elapsed": elapsed, "cpu": cpu, "ops_sent": s.ops_sent, "errors": s.errors}


def _trigger_proc(url: str, n: int, s: float, seed: int, prefix: str, start: Any, q: Any) -> None:
    seq = zipf_keys(100_000, n, s, seed, prefix)
    rng = random.Random(seed)
    members = [str(rng.randrange(64)) for _ in range(n)]
    q.put(runtime.run(_trigger, url, seq, members, start))


def _result(q: Any, ps: list[Any], timeout: float = 600) -> Any:
    """The next result from the NF processes; an error naming the exit code as soon as
    one of them died without sending one (not a wait for the whole timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in ps if p.exitcode not in (None, 0)]
            if dead:
                msg = f"an NF process of the trigger bench exited with code {dead[0]} (its traceback is above)"
                raise RuntimeError(msg) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the trigger bench's NF processes sent no result in {timeout:g} s") from None


def trigger_path(url: str, primaries: list[str], n: int, s: float, procs: int) -> dict[str, Any]:
    """``procs`` NF processes issuing ``n`` updates each; with the CPU every update cost
    in the NF processes and in the coordinator, and the rate those costs allow on
    this machine's cores (the ceiling whatever the code's latency or batching)."""
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    ctx = mp.get_context("spawn")
    start, q = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_trigger_proc, args=(url, n, s, 7 + i, prefix, start, q)) for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(1.0 + 0.5 * procs + n / 1e6)  # spawned interpreters build their sequences
    coord0 = coordinator_cpu(primaries)
    start.set()
    try:
        res = [_result(q, ps) for _ in ps]
    except BaseException:
        for p in ps:
            p.terminate()
        raise
    coord = coordinator_cpu(primaries) - coord0
    for p in ps:
        p.join()
    issued = sum(r["updates"] for r in res)
    nf_us, coord_us = sum(r["cpu"] for r in res) / issued * 1e6, coord / issued * 1e6
    elapsed = max(r["elapsed"] for r in res)
    ok = runtime.run(_verify, url, n, s, procs, prefix)
    return {
        "zipf_s": s,
        "procs": procs,
        "updates": issued,
        "ops_sent": sum(r["ops_sent"] for r in res),
        "seconds": round(elapsed, 3),
        "updates_per_s": issued / elapsed,
        "errors": sum(r["errors"] for r in res),
        "final_state_exact": ok,
        "nf_cpu_us_per_update": round(nf_us, 3),
        "coordinator_cpu_us_per_update": round(coord_us, 3),
        "cpu_ceiling_updates_per_s": round((os.cpu_count() or 1) * 1e6 / (nf_us + coord_us)),
    }


async def _verify(url: str, n: int, s: float, procs: int, prefix: str) -> bool:
    """Every issued update is reflected in the final state (exact counts and sets)."""
    want_int: dict[str, int] = {}
    want_set: dict[str, set[str]] = {}
    for i in range(procs):
        seq = zipf_keys(100_000, n, s, 7 + i, prefix)
        rng = random.Random(7 + i)
        members = [str(rng.randrange(64)) for _ in range(n)]
        for j in range(0, n, 2):
            want_int[seq[j]] = want_int.get(seq[j], 0) + 1
            want_set.setdefault(seq[j + 1], set()).add(members[j])
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        for keys, state, want in ((list(want_int), "bench_int", want_int), (list(want_set), "bench_set", want_set)):
            for i in range(0, len(keys), 5000):
                chunk = keys[i : i + 5000]
                got = await table.execute([Op(Mode.RETRIEVE, state, k, None) for k in chunk])
                if any(g != want[k] for g, k in zip(got, chunk, strict=True)):
                    return False
    return True


@contextlib.contextmanager
def _appendonly(primaries: list[str], on: bool) -> Iterator[None]:
    """AOF off on ``primaries`` inside (when ``on`` is False), back on after, once its
    rewrite is done (so it does not run under the next measurement)."""
    if on:
        yield
        return
    for a in primaries:
        host, _, port = a.rpartition(":")
        with redis.Redis(host=host, port=int(port), socket_timeout=10) as r:
            r.config_set("appendonly", "no")
    try:
        yield
    finally:
        deadline = time.monotonic() + 120
        for a in primaries:
            host, _, port = a.rpartition(":")
            with redis.Redis(host=host, port=int(port), socket_timeout=10) as r:
                r.config_set("appendonly", "yes")
                while time.monotonic() < deadline:
                    p = r.info("persistence")
                    if p["aof_enabled"] and not p["aof_rewrite_in_progress"] and not p["aof_rewrite_scheduled"]:
                        break
                    time.sleep(0.1)


# -- NAT: sync / async x singleton / replica ------------------------------------------------


async def nat(url: str, state: str, mode: str, seconds: float) -> dict[str, Any]:
    """Packets of 10k flows (Zipf(1.1) popular) through a NatTable: 60% outbound (the
    first packet of a flow allocates its port), 40% replies to a mapped flow."""
    tag = uuid.uuid4().int
    flows = [(6, f"10.{tag % 200}.{i // 250}.{1 + i % 250}", 1024 + (tag + i) % 60000) for i in range(10_000)]
    seq = [int(k) for k in zipf_keys(10_000, 200_000, 1.1, 3, "")]
    rng = random.Random(5)
    replies = [rng.random() < 0.4 for _ in range(len(seq))]
    ext: dict[int, tuple[str, int]] = {}
    rtts: list[float] = []
    done = 0
    async with StateProxy(url) as p:
        table = NatTable(p, state)
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
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
            while outstanding:  # noqa: ASYNC110 - callbacks arrive from the batcher
                await anyio.sleep(0.001)
        elapsed = time.perf_counter() - t0
        s = p.statistics()
        exhausted = table.exhausted
    return {
        "state": state,
        "mode": mode,
        "packets": done,
        "packets_per_s": done / elapsed,
        "rtt_p50_us": pct(rtts, 50) * 1e6,
        "rtt_p99_us": pct(rtts, 99) * 1e6,
        "cache_hit_rate": round(s.cache_hit_rate, 3),
        "lookups_per_packet": round(s.ops_sent / max(done, 1), 4),
        "flows_mapped": len(ext),
        "exhausted": exhausted,
    }


async def ping_rtt(url: str, n: int) -> list[float]:
    """Plain redis-py PINGs to one node: the round trip any client pays on this machine."""
    async with Coordinator(url=url) as co:
        node = co.node_client(0)
        await node.ping()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await node.ping()
            out.append(time.perf_counter() - t)
        return out


async def sync_retrieve_rtt(url: str, n: int) -> list[float]:
    async with StateProxy(url) as p:
        await p.syn_up("bench_direct", "rtt", "set", 1)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await p.syn_retrieve("bench_direct", "rtt")
            out.append(time.perf_counter() - t)
        return out


async def replica_hit(url: str, n: int) -> dict[str, float]:
    async with StateProxy(url) as p:
        await p.syn_up("bench_replica", "hit", "set", 1)
        await p.syn_retrieve("bench_replica", "hit")
        best_await = best_peek = 1e9
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                await p.syn_retrieve("bench_replica", "hit")
            best_await = min(best_await, (time.perf_counter() - t) / n)
            t = time.perf_counter()
            for _ in range(n):
                p.cached("bench_replica", "hit")
            best_peek = min(best_peek, (time.perf_counter() - t) / n)
        assert p.statistics().cache_hits >= 10 * n
    return {"await_syn_retrieve_us": best_await * 1e6, "cached_peek_us": best_peek * 1e6}


def _seen_at(seen: dict[int, float], j: int, sidx: int, key: str, version: int) -> None:
    seen[j] = time.perf_counter()


async def discard_fanout(url: str, holders: int, rounds: int) -> dict[str, Any]:
    """One updater, ``holders`` proxies caching the key: update latency, discard latency."""
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
    return {
        "holders": holders,
        "update_p50_us": pct(upd, 50) * 1e6,
        "discard_p50_ms": pct(lat, 50) * 1e3,
        "discard_p99_ms": pct(lat, 99) * 1e3,
    }


# -- the run -------------------------------------------------------------------------------


def main(
    url: str | None = None, quick: bool = False, out: Path | None = None, progress: Progress = noop
) -> dict[str, Any]:
    n = 600_000 if quick else 2_000_000
    secs = 1.5 if quick else 4.0
    data: dict[str, Any] = {"bench": "design", "quick": quick, "environment": environment()}
    with bench_cluster(url, progress) as seed:
        primaries = coordinator_nodes(seed, replicas=False)
        trig = []
        # this box shares its 2 cores with 3 primaries: repeat and keep every run. On a
        # cluster of its own the bench also measures what AOF costs (never on a given one)
        configs = [(1.1, 1, True), (1.1, 2, True), (0.0, 2, True)] + ([(1.1, 2, False)] if url is None else [])
        for s, procs, aof in configs:
            with _appendonly(primaries, aof):
                for rep in range(1 if quick else 3):
                    r = trigger_path(seed, primaries, n // procs, s, procs)
                    r.update(repeat=rep, aof=aof)
                    trig.append(r)
                    label = ("Zipf(1.1)" if s else "uniform") + ("" if aof else ", AOF off")
                    rate = fmt_rate(r["updates_per_s"])
                    progress(
                        f"trigger path, {label}, {procs} NF proc(s): {rate} updates/s, exact={r['final_state_exact']}; "
                        f"CPU/update {r['nf_cpu_us_per_update']:.2f} us NF + "
                        f"{r['coordinator_cpu_us_per_update']:.2f} us coordinator "
                        f"(ceiling {fmt_rate(r['cpu_ceiling_updates_per_s'])}/s)"
                    )
        nats = []
        for state in ("bench_nat_single", "bench_nat"):
            for mode in ("sync", "async"):
                r = runtime.run(nat, seed, state, mode, secs)
                nats.append(r)
                progress(
                    f"NAT {mode} {state}: {fmt_rate(r['packets_per_s'])} pkts/s, RTT p50 {r['rtt_p50_us']:.0f} us, "
                    f"{r['lookups_per_packet']:.3f} lookups/packet"
                )
        ping = runtime.run(ping_rtt, seed, 2000 if quick else 5000)
        rtt = runtime.run(sync_retrieve_rtt, seed, 2000 if quick else 5000)
        hit = runtime.run(replica_hit, seed, 20_000)
        p50, p99, hit_us = pct(rtt, 50) * 1e6, pct(rtt, 99) * 1e6, hit["await_syn_retrieve_us"]
        progress(
            f"sync retrieve p50 {p50:.0f} us p99 {p99:.0f} us (a plain PING: p50 {pct(ping, 50) * 1e6:.0f} us); "
            f"replica hit {hit_us:.2f} us"
        )
        fan = [runtime.run(discard_fanout, seed, h, 30 if quick else 100) for h in (1, 4, 16)]
        for f in fan:
            upd, dis = f["update_p50_us"], f["discard_p99_ms"]
            progress(f"{f['holders']} holder(s): update p50 {upd:.0f} us, discard p99 {dis:.2f} ms")
    default = [r for r in trig if r["aof"]]  # the headline: the shipped config (AOF on)
    zipf_best = max((r for r in default if r["zipf_s"]), key=lambda r: r["updates_per_s"])
    zipf_median = sorted(r["updates_per_s"] for r in default if r["zipf_s"] and r["procs"] == zipf_best["procs"])
    uniform = max((r for r in default if not r["zipf_s"]), key=lambda r: r["updates_per_s"])
    no_aof = max((r for r in trig if not r["aof"]), key=lambda r: r["updates_per_s"], default=None)
    by = {(r["state"], r["mode"]): r for r in nats}
    sync_single = by[("bench_nat_single", "sync")]["packets_per_s"]
    data["summary"] = {
        "trigger_updates_per_s": round(zipf_best["updates_per_s"]),
        "trigger_updates_per_s_median": round(zipf_median[len(zipf_median) // 2]),
        "trigger_updates_per_s_uniform": round(uniform["updates_per_s"]),
        "trigger_final_state_exact": all(r["final_state_exact"] for r in trig),
        "trigger_cpu_us_per_update": {"nf": zipf_best["nf_cpu_us_per_update"],
                                      "coordinator": zipf_best["coordinator_cpu_us_per_update"]},
        "trigger_cpu_ceiling_updates_per_s": zipf_best["cpu_ceiling_updates_per_s"],
        # the same Zipf path with the coordinator's AOF off (cogs cluster up --persistence none)
        "trigger_updates_per_s_no_aof": round(no_aof["updates_per_s"]) if no_aof else None,
        "trigger_cpu_us_per_update_no_aof": None if no_aof is None else {
            "nf": no_aof["nf_cpu_us_per_update"], "coordinator": no_aof["coordinator_cpu_us_per_update"]},
        "ping_p50_us": round(pct(ping, 50) * 1e6, 1),
        "sync_retrieve_p50_us": round(pct(rtt, 50) * 1e6, 1),
        "sync_retrieve_p99_us": round(pct(rtt, 99) * 1e6, 1),
        "replica_hit_us": round(hit["await_syn_retrieve_us"], 3),
        "replica_peek_us": round(hit["cached_peek_us"], 3),
        "discard_p99_ms": round(max(f["discard_p99_ms"] for f in fan), 3),
        "async_vs_sync_ratio": round(by[("bench_nat_single", "async")]["packets_per_s"] / sync_single, 1),
        "nat_packets_per_s": {f"{m}_{'replica' if st == 'bench_nat' else 'singleton'}": round(r["packets_per_s"])
                              for (st, m), r in by.items()},
        "targets": {
            "trigger_updates_per_s": 1_200_000, "sync_retrieve_p50_us": 150, "sync_retrieve_p99_us": 1000,
            "replica_hit_us": 2, "discard_p99_ms": 5, "async_vs_sync_ratio": 20,
        },
    }  # fmt: skip
    data.update({"trigger": trig, "nat": nats, "replica_hit": hit, "discard_fanout": fan})
    md = "# Design choices (paper Fig. 10 + Table III)\n\n## Trigger updates, end to end\n\n" + md_table(
        ["popularity", "NF processes", "coordinator AOF", "updates/s", "ops sent", "final state exact",
         "CPU/update: NF + coordinator (us)", "CPU ceiling (updates/s)"],
        [
            [
                "Zipf(1.1)" if r["zipf_s"] else "uniform",
                r["procs"],
                "on" if r["aof"] else "off",
                fmt_rate(r["updates_per_s"]),
                f"{r['ops_sent']:,}",
                r["final_state_exact"],
                f"{r['nf_cpu_us_per_update']:.2f} + {r['coordinator_cpu_us_per_update']:.2f}",
                fmt_rate(r["cpu_ceiling_updates_per_s"]),
            ]
            for r in trig
        ],
    )  # fmt: skip
    md += (
        "\nCPU ceiling: this machine's cores divided by the CPU one update costs in the NF processes and"
        " the coordinator together; no batching or latency change can go past it.\n"
    )
    md += "\n## NAT (portmap state, 10k Zipf flows, 40% replies)\n\n" + md_table(
        ["mode", "state", "packets/s", "RTT p50 (us)", "RTT p99 (us)", "cache hit rate", "lookups/packet"],
        [
            [
                r["mode"],
                r["state"],
                fmt_rate(r["packets_per_s"]),
                f"{r['rtt_p50_us']:.0f}",
                f"{r['rtt_p99_us']:.0f}",
                r["cache_hit_rate"],
                r["lookups_per_packet"],
            ]
            for r in nats
        ],
    )
    md += "\n## Discard fan-out\n\n" + md_table(
        ["holder proxies", "update p50 (us)", "discard p50 (ms)", "discard p99 (ms)"],
        [
            [f["holders"], f"{f['update_p50_us']:.0f}", f"{f['discard_p50_ms']:.2f}", f"{f['discard_p99_ms']:.2f}"]
            for f in fan
        ],
    )
    md += f"\nSync retrieve p50 {p50:.0f} us, p99 {p99:.0f} us; a plain redis-py PING, same run: p50 "
    md += f"{pct(ping, 50) * 1e6:.0f} us.\n"
    md += f"\nReplica hit: {hit['await_syn_retrieve_us']:.2f} us per `await syn_retrieve`, "
    md += f"{hit['cached_peek_us']:.2f} us per `cached()`.\n"
    path = write_results("design", data, md, out)
    _plot(path, nats, trig)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _plot(path: Path, nat: list[dict[str, Any]], trig: list[dict[str, Any]]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    labels = [f"{r['mode']}\n{'replica' if 'replica' in r['state'] else 'singleton'}" for r in nat]
    a.bar(labels, [r["packets_per_s"] / 1e3 for r in nat], color=["#888", "#4a7", "#888", "#4a7"])
    a.set_ylabel("packets/s (thousands)")
    a.set_title("NAT: sync/async x singleton/replica")
    a.set_yscale("log")
    tl = [f"{'Zipf' if r['zipf_s'] else 'uniform'}\n{r['procs']} proc" for r in trig]
    b.bar(tl, [r["updates_per_s"] / 1e6 for r in trig], color="#47a")
    b.axhline(1.2, color="red", linestyle=":", label="target 1.2M/s")
    b.set_ylabel("trigger updates/s (millions)")
    b.set_title("Trigger path, end to end")
    b.legend(fontsize=8)
    save_plot(fig, path)
