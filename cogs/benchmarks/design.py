"""Design choices (paper Fig. 10 + Table III): the trigger-update hot path end to end,
the NAT in sync/async x singleton/replica mode, replica hits and discards.

Everything is measured in one run against one cluster (its own unless ``url``), in
rounds: every round samples the calibration and runs every configuration once, so
a drift of this machine's speed hits all configurations alike; the summary holds
the median of the rounds (min, max and n beside it).

* **trigger path**: NF processes (started together behind a barrier) issue
  ``proxy.update`` (half int adds, half set inserts) over 100k keys with Zipf
  popularity (s = 1.1 as a real trace gives, and 0.99, 0.8 and uniform beside it);
  the final states are read back and must equal what was issued. On a cluster of
  its own the bench also runs the Zipf(1.1) path with the coordinator's AOF off.
* **NAT**: packets of 10k Zipf-popular flows through ``NatTable``; sync (one packet
  at a time), async with request merging (concurrent lookups of one mapping share a
  round trip) and async without it (one lookup per packet: the pipelining gain
  alone, which ``async_vs_sync_ratio`` reports).
* **replica hit**, **sync retrieve** round trips, **discards** to 1, 4, 16 holders.
"""

from __future__ import annotations

import contextlib
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
from cogs.benchmarks import design_nat as dn
from cogs.benchmarks.common import Progress, coordinator_nodes, fmt_rate, noop, write_results, zipf_keys
from cogs.benchmarks.cpu import CpuMeter, check_physical
from cogs.benchmarks.design_report import markdown, plot
from cogs.benchmarks.harness import Calibration, environment, pct, repeats, stat
from cogs.benchmarks.site import Site, bench_site
from cogs.benchmarks.workers import Gate, Workers, account
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.protocol import Mode
from cogs.proxy import StateProxy

KEYS = 100_000
#: (name, Zipf s (0: uniform), NF processes, coordinator AOF); the first is the headline
TRIGGER = [
    ("zipf1.1", 1.1, 1, True),
    ("zipf0.99", 0.99, 1, True),
    ("zipf0.8", 0.8, 1, True),
    ("uniform", 0.0, 1, True),
    ("zipf1.1_2procs", 1.1, 2, True),
    ("zipf1.1_no_aof", 1.1, 1, False),
]
NAT_STATES = {"singleton": "bench_nat_single", "replica": "bench_nat"}
TARGETS = {"trigger_updates_per_s": 1_200_000, "sync_retrieve_p50_us": 150, "sync_retrieve_p99_us": 1000,
           "replica_hit_us": 2, "discard_p99_ms": 5, "async_vs_sync_ratio": 20}  # fmt: skip


# -- trigger hot path (runs in a worker process) -------------------------------------------


def _workload(n: int, s: float, seed: int, prefix: str) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    return zipf_keys(KEYS, n, s, seed, prefix), [str(rng.randrange(64)) for _ in range(n)]


async def trigger_job(url: str, n: int, s: float, seed: int, prefix: str, gate: Gate) -> dict[str, Any]:
    """``n`` updates through one StateProxy, timed between the barrier and the flush;
    with what they should have made of the states (the parent sums the workers' and
    reads the states back)."""
    seq, members = _workload(n, s, seed, prefix)
    async with StateProxy(url, batch_delay_ms=1.0) as p:
        upd = p.update
        await gate.start()
        for j in range(0, n, 2000):
            for i in range(j, min(j + 2000, n), 2):
                upd("bench_int", seq[i], "add", 1)
                upd("bench_set", seq[i + 1], "add", members[i])
            # room for the whole next chunk: with uniform keys each update is a new op
            await p.wait_room(2000)
            await anyio.lowlevel.checkpoint()
        await p.flush()
        gate.stop()
        st = p.statistics()
    want_int: dict[str, int] = {}
    want_set: dict[str, set[str]] = {}
    for j in range(0, len(seq), 2):
        want_int[seq[j]] = want_int.get(seq[j], 0) + 1
        want_set.setdefault(seq[j + 1], set()).add(members[j])
    return {"updates": st.updates, "ops_sent": st.ops_sent, "errors": st.errors, "want": (want_int, want_set)}


async def _verify(url: str, wants: list[tuple[dict[str, int], dict[str, set[str]]]]) -> bool:
    """Every update the workers issued is reflected in the final state (exact counts
    and sets, summed over the workers)."""
    want_int: dict[str, int] = {}
    want_set: dict[str, set[str]] = {}
    for ints, sets in wants:
        for k, v in ints.items():
            want_int[k] = want_int.get(k, 0) + v
        for k, m in sets.items():
            want_set.setdefault(k, set()).update(m)
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        for state, want in (("bench_int", want_int), ("bench_set", want_set)):
            keys = list(want)
            for i in range(0, len(keys), 5000):
                chunk = keys[i : i + 5000]
                got = await table.execute([Op(Mode.RETRIEVE, state, k, None) for k in chunk])
                if any(g != want[k] for g, k in zip(got, chunk, strict=True)):
                    return False
    return True


def trigger_run(
    w: Workers, meter: CpuMeter, coord_pids: list[int], url: str, cfg: tuple[Any, ...], n: int
) -> dict[str, Any]:
    name, s, procs, aof = cfg
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    rnd = w.run(trigger_job, [(url, n // procs, s, 7 + i, prefix) for i in range(procs)], meter)
    updates = sum(r["updates"] for r in rnd.results)
    ops = sum(r["ops_sent"] for r in rnd.results)
    acc = account(f"trigger path {name}", rnd, meter, updates, coord_pids)
    exact = runtime.run(_verify, url, [r.pop("want") for r in rnd.results])
    return {
        "config": name, "zipf_s": s, "procs": procs, "aof": aof, "updates": updates, "ops_sent": ops,
        "updates_per_s": updates / rnd.wall_s, "coordinator_ops_per_s": ops / rnd.wall_s,
        "ops_per_update": round(ops / updates, 4), "errors": sum(r["errors"] for r in rnd.results),
        "final_state_exact": exact, **acc,
    }  # fmt: skip


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


# -- in-process parts, metered ------------------------------------------------------------


def nat_run(meter: CpuMeter, url: str, kind: str, mode: str, secs: float, wl: Any) -> dict[str, Any]:
    before = meter.sample()
    t0 = time.perf_counter()
    r = runtime.run(dn.nat, url, NAT_STATES[kind], mode, secs, wl)
    window = time.perf_counter() - t0  # includes the releases after the measured part: an upper bound
    after = meter.sample()
    phys = check_physical(f"NAT {mode} {kind}", cpu_s=meter.used(before, after), wall_s=window, cores=meter.cores,
                          processes=len(after.local))  # fmt: skip
    r.update(kind=kind, cores_busy=phys["cores_busy"])
    return r


# -- the run -------------------------------------------------------------------------------


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
    lab_rtt: str | None = None,
) -> dict[str, Any]:
    """Run the bench on ``url`` (default: a cluster of its own) or, with ``lab_rtt``, in a
    lab whose middlebox <-> node round trip is ``lab_rtt`` (needs root)."""
    with bench_site(url, progress, lab_rtt=lab_rtt, middleboxes=2) as site:
        data = site.call(lambda: _run(site, url is None, quick, rounds, progress))
    path = write_results("design" + site.name, data, markdown(data), out)
    plot(path, data)
    s = data["summary"]
    rate = fmt_rate(s["trigger_updates_per_s"]["median"])
    progress(f"trigger path (median of {s['trigger_updates_per_s']['n']}): {rate} updates/s = "
             f"{s['trigger_vs_redis_incr']} x redis-benchmark INCR; wrote {path}")  # fmt: skip
    return data


def _run(site: Site, own: bool, quick: bool, rounds: int | None, progress: Progress) -> dict[str, Any]:
    n = 400_000 if quick else 1_600_000
    secs = 1.0 if quick else 2.0
    reps = repeats(quick, rounds)
    configs = [c for c in TRIGGER if c[3] or own]  # AOF is never switched on a given cluster
    seed = site.url
    primaries = coordinator_nodes(seed, replicas=False)
    meter = site.meter()
    env = environment(seed, site.info, nf_processes=[1, 2], trigger_updates_per_run=n)
    cal = Calibration(seed, quick=quick, progress=progress, run=site.calibration_runner())
    wl = dn.nat_workload()
    trig: list[dict[str, Any]] = []
    nats: list[dict[str, Any]] = []
    rtt: list[float] = []
    hits: list[dict[str, float]] = []
    fan: dict[int, dict[str, list[float]]] = {h: {"update_s": [], "discard_s": []} for h in (1, 4, 16)}
    with Workers(2, start=site.starter()) as w:
        meter.add(w.pids)
        env["nf_processes_net_namespaces"] = w.net_namespaces()
        for rep in range(reps):
            progress(f"round {rep + 1} of {reps}")
            cal.sample()
            for cfg in configs:
                with _appendonly(primaries, cfg[3]):
                    r = trigger_run(w, meter, site.coord_pids, seed, cfg, n)
                trig.append({**r, "round": rep})
                progress(
                    f"  trigger {cfg[0]}: {fmt_rate(r['updates_per_s'])} updates/s, "
                    f"{r['ops_per_update']:.3f} ops/update, exact={r['final_state_exact']}; CPU/update "
                    f"{r['cpu_us_per_item']['workers']:.2f} us NF + {r['cpu_us_per_item']['coordinator']:.2f} us "
                    f"coordinator, {r['cores_busy']:.2f} cores busy"
                )
            for kind in NAT_STATES:
                for mode in dn.NAT_MODES:
                    r = nat_run(meter, seed, kind, mode, secs, wl)
                    nats.append({**r, "round": rep})
                    progress(f"  NAT {mode} {kind}: {fmt_rate(r['packets_per_s'])} packets/s, RTT p50 "
                             f"{r['rtt_p50_us']:.0f} us, {r['lookups_per_packet']:.3f} lookups/packet")  # fmt: skip
            rtt += runtime.run(dn.sync_retrieve_rtt, seed, 1000 if quick else 2000)
            hits.append(runtime.run(dn.replica_hit, seed, 20_000))
            for h, got in fan.items():
                f = runtime.run(dn.discard_fanout, seed, h, 10 if quick else 20)
                got["update_s"] += f["update_s"]
                got["discard_s"] += f["discard_s"]
    cal.sample()  # and once after the last round
    return _results(quick, env, cal, trig, nats, rtt, hits, fan)


def _results(quick: bool, env: dict[str, Any], cal: Calibration, trig: list[dict[str, Any]],
             nats: list[dict[str, Any]], rtt: list[float], hits: list[dict[str, float]],
             fan: dict[int, dict[str, list[float]]]) -> dict[str, Any]:  # fmt: skip
    def runs(name: str) -> list[dict[str, Any]]:
        return [r for r in trig if r["config"] == name]

    def col(rows: list[dict[str, Any]], key: str, sub: str | None = None) -> list[float]:
        return [r[key][sub] if sub else r[key] for r in rows]

    head = runs("zipf1.1")
    by_nat = {(k, m): [r for r in nats if r["kind"] == k and r["mode"] == m] for k in NAT_STATES for m in dn.NAT_MODES}
    nat_rate = {f"{m}_{k}".replace("-", "_"): stat(col(rs, "packets_per_s")) for (k, m), rs in by_nat.items()}
    sync = stat(col(by_nat[("singleton", "sync")], "packets_per_s"))["median"]
    unmerged = nat_rate["async_unmerged_singleton"]["median"]
    merged = nat_rate["async_singleton"]["median"]
    rate = stat(col(head, "updates_per_s"))
    fan_rows = [{"holders": h, "update_p50_us": round(pct(f["update_s"], 50) * 1e6, 1),
                 "discard_p50_ms": round(pct(f["discard_s"], 50) * 1e3, 3),
                 "discard_p99_ms": round(pct(f["discard_s"], 99) * 1e3, 3), "n": len(f["discard_s"])}
                for h, f in fan.items()]  # fmt: skip
    no_aof = runs("zipf1.1_no_aof")
    summary: dict[str, Any] = {
        "trigger_updates_per_s": rate,
        "trigger_vs_redis_incr": cal.ratio(rate["median"]),
        "coordinator_ops_per_s": stat(col(head, "coordinator_ops_per_s")),
        "ops_per_update": stat(col(head, "ops_per_update"), 4),
        "trigger_cpu_us_per_update": {"nf": stat(col(head, "cpu_us_per_item", "workers"), 3),
                                      "coordinator": stat(col(head, "cpu_us_per_item", "coordinator"), 3)},
        "trigger_cpu_ceiling_updates_per_s": stat(col(head, "cpu_ceiling_per_s")),
        "trigger_updates_per_s_2procs": stat(col(runs("zipf1.1_2procs"), "updates_per_s")),
        "trigger_updates_per_s_no_aof": stat(col(no_aof, "updates_per_s")) if no_aof else None,
        "zipf_sensitivity": {name.removeprefix("zipf"): {"updates_per_s": stat(col(runs(name), "updates_per_s")),
                                                         "ops_per_update": stat(col(runs(name), "ops_per_update"), 4)}
                             for name in ("zipf0.8", "zipf0.99", "zipf1.1", "uniform")},
        "trigger_final_state_exact": all(r["final_state_exact"] for r in trig),
        "physically_possible": True,  # every run passed the CPU checks, or the bench failed
        "sync_retrieve_p50_us": round(pct(rtt, 50) * 1e6, 1),
        "sync_retrieve_p99_us": round(pct(rtt, 99) * 1e6, 1),
        "replica_hit_us": stat(col(hits, "await_syn_retrieve_us"), 3),
        "replica_peek_us": stat(col(hits, "cached_peek_us"), 3),
        "discard_p99_ms": max(f["discard_p99_ms"] for f in fan_rows),
        "nat_packets_per_s": nat_rate,
        "nat_lookups_per_packet": {f"{m}_{k}".replace("-", "_"): stat(col(rs, "lookups_per_packet"), 4)
                                   for (k, m), rs in by_nat.items()},
        "async_vs_sync_ratio": round(unmerged / sync, 1),
        "async_vs_sync_ratio_merged": round(merged / sync, 1),
        **cal.headline(),
    }  # fmt: skip
    summary["targets"] = TARGETS
    summary["targets_met"] = {
        "trigger_updates_per_s": rate["median"] >= TARGETS["trigger_updates_per_s"],
        "sync_retrieve_p50_us": summary["sync_retrieve_p50_us"] <= TARGETS["sync_retrieve_p50_us"],
        "sync_retrieve_p99_us": summary["sync_retrieve_p99_us"] <= TARGETS["sync_retrieve_p99_us"],
        "replica_hit_us": summary["replica_hit_us"]["median"] <= TARGETS["replica_hit_us"],
        "discard_p99_ms": summary["discard_p99_ms"] <= TARGETS["discard_p99_ms"],
        "async_vs_sync_ratio": summary["async_vs_sync_ratio"] >= TARGETS["async_vs_sync_ratio"],
    }
    return {
        "bench": "design", "quick": quick, "environment": env, "calibration": cal.result(), "summary": summary,
        "runs": trig, "nat": nats, "replica_hit": hits, "discard_fanout": fan_rows,
        "sync_retrieve_samples": len(rtt),
    }  # fmt: skip
