"""Coordinator throughput (paper Fig. 12): applied ops/s vs number of states and of
proxies, per op type, against redis-py with the same concurrency.

Simulated proxies are worker processes (started together behind a barrier), each
with its own Coordinator connections: per primary, ``INFLIGHT`` batches of ``BATCH``
ops in flight. Every batch has the same op mix whatever the number of states
(positions cycle int add, set add, int add, set add, get: 40% int adds with a
threshold checker, 40% set adds with a windowed cardinality checker, 20% gets); keys
cycle over the node's share of the states, so with 1k states a batch holds a key
several times (every op is still applied by Lua: nothing is coalesced here). Every
count is read back at the end of each state count and must equal what was sent.

Baselines in the same run, with the same processes, connections, keys per node and
mix: redis-py pipelines of ``BATCH`` plain commands (INCRBY / SADD / GET, no
checkers) and redis-py awaiting one command at a time; and the calibration's
``redis-benchmark -t incr -P 64`` on one node: the ceiling of a node doing nothing
but INCR.
"""

from __future__ import annotations

import json
import operator
import random
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis

from cogs import runtime
from cogs.benchmarks.common import Progress, fmt_rate, noop, write_results
from cogs.benchmarks.coordinator_report import markdown, plot
from cogs.benchmarks.harness import BenchError, Calibration, environment, repeats, stat
from cogs.benchmarks.site import Site, bench_site
from cogs.benchmarks.workers import Gate, Workers, account
from cogs.coordinator.client import Coordinator
from cogs.coordinator.frames import runs
from cogs.coordinator.ops import Op, StateTable
from cogs.keys import escape, slot
from cogs.protocol import Mode
from cogs.settings import load_settings

BATCH = 2000
INFLIGHT = 2  # batches in flight per node per process: Redis never waits for Python
MIXES = {
    "mix": ("int", "set", "int", "set", "get"),
    "int_add": ("int",),
    "set_add": ("set",),
    "get": ("get",),
    "populate": ("int", "set"),
}
_keys_memo: dict[tuple[str, int], tuple[list[str], list[list[int]]]] = {}
_MEMBERS = [f',"{c}"' for c in range(1024)]


def key_name(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


async def _keys(co: Coordinator, prefix: str, nkeys: int) -> tuple[list[str], list[list[int]]]:
    """The escaped key names and, per primary, the indices of the keys it owns (the slot
    map a proxy caches); kept for the next job of the same worker on the same keys."""
    got = _keys_memo.get((prefix, nkeys))
    if got is None:
        assert co.topology is not None
        topo = co.topology
        names = [escape(prefix + key_name(i)) for i in range(nkeys)]
        per_node: list[list[int]] = [[] for _ in topo.nodes]
        for i, k in enumerate(names):
            per_node[topo.node_of(slot(k))].append(i)
        _keys_memo.clear()
        got = _keys_memo[(prefix, nkeys)] = (names, per_node)
    return got


class _Encoder:
    """Run frames (cogs/coordinator/frames.py) built from JSON strings made once per key,
    so the simulated proxies spend their CPU on sending, not on encoding (a real proxy
    encodes its own way: the design bench measures that). Checked against
    ``frames.runs`` before use."""

    def __init__(self, names: list[str], si: int, ss: int) -> None:
        self.keys = [json.dumps(k) for k in names]
        self.heads = (f'0,{si},"add",', f'0,{ss},"add",', f'2,{si},"get",')

    def frame(self, ints: list[str], sets: list[str], gets: list[str]) -> str:
        parts = [
            f"{head}{len(items)},{','.join(items)}"
            for head, items in zip(self.heads, (ints, sets, gets), strict=True)
            if items
        ]
        return "[" + ",".join(parts) + "]"

    def check(self, names: list[str], si: int, ss: int) -> None:
        ops = [(0, si, "add", names[0], "1"), (0, ss, "add", names[1], "7"), (2, si, "get", names[0], None)]
        mine = self.frame([self.keys[0] + ',"1"'], [self.keys[1] + _MEMBERS[7]], [self.keys[0] + ",null"])
        if json.loads(mine) != runs(ops):
            raise BenchError("the coordinator bench's frame encoder no longer matches cogs/coordinator/frames.py")


async def cogs_job(
    url: str, prefix: str, nkeys: int, seconds: float, mix: str, seed: int, gate: Gate
) -> dict[str, Any]:
    """One simulated proxy: ``cogs_batch`` calls for ``seconds`` (``populate``: every
    key once); the ops sent per key so the parent can check every count."""
    async with Coordinator(url=url) as co:
        catalog, token = await co.stored_catalog()
        si, ss = catalog.index("bench_int"), catalog.index("bench_set")
        names, per_node = await _keys(co, prefix, nkeys)
        enc = _Encoder(names, si, ss)
        enc.check(names, si, ss)
        keys = enc.keys
        ints, sets = array("I", bytes(4 * nkeys)), array("I", bytes(4 * nkeys))
        kinds = MIXES[mix]
        sent = applied = 0
        by_kind = dict.fromkeys(("int", "set", "get"), 0)

        async def pump(node: int, lane: int, deadline: float) -> None:
            nonlocal sent, applied
            order = list(per_node[node])
            random.Random(seed * 100 + node).shuffle(order)
            populate = mix == "populate"
            n, chunk = len(order), BATCH // len(kinds) if populate else BATCH
            stream = co.alert_stream(node)
            off = lane * chunk
            while n and time.perf_counter() < deadline:
                if populate:  # every key once: an int and a set state each
                    if off >= n:
                        return
                    batch = order[off : off + chunk]
                    off += chunk * INFLIGHT
                else:
                    batch = [order[(off + j) % n] for j in range(chunk)]
                    off = (off + chunk * INFLIGHT) % n
                i_ops: list[str] = []
                s_ops: list[str] = []
                g_ops: list[str] = []
                for j, i in enumerate(batch):
                    for kind in kinds if populate else (kinds[j % len(kinds)],):
                        if kind == "int":
                            ints[i] += 1
                            i_ops.append(keys[i] + ',"1"')
                        elif kind == "set":
                            s_ops.append(keys[i] + _MEMBERS[sets[i] % 1024])
                            sets[i] += 1
                        else:
                            g_ops.append(keys[i] + ",null")
                reply = await co.call_batch(node, token, stream, enc.frame(i_ops, s_ops, g_ops))
                if reply.errors:
                    raise BenchError(f"the coordinator refused a bench op: {next(iter(reply.errors.values()))}")
                sent += len(i_ops) + len(s_ops) + len(g_ops)
                applied += reply.applied
                by_kind["int"] += len(i_ops)
                by_kind["set"] += len(s_ops)
                by_kind["get"] += len(g_ops)

        await gate.start()
        deadline = time.perf_counter() + (3600 if mix == "populate" else seconds)
        async with anyio.create_task_group() as tg:
            for node in range(len(per_node)):
                for lane in range(INFLIGHT):
                    tg.start_soon(pump, node, lane, deadline)
        gate.stop()
    return {"ops": sent, "applied": applied, "by_kind": by_kind, "ints": ints.tobytes(), "sets": sets.tobytes()}


async def redis_py_job(
    url: str, prefix: str, nkeys: int, seconds: float, pipelined: bool, seed: int, gate: Gate
) -> dict[str, Any]:
    """The baseline: the same mix as plain commands (INCRBY, SADD, GET) on the same
    nodes with the same concurrency, ``BATCH`` per pipeline or one awaited at a time."""
    settings = load_settings(url=url)
    async with Coordinator(settings) as co:
        names, per_node = await _keys(co, prefix, nkeys)
        assert co.topology is not None
        nodes = co.topology.nodes
    tls = settings.url.startswith("rediss://")
    clients = [aioredis.Redis(host=n.host, port=n.port, ssl=tls, **settings.connection_kwargs()) for n in nodes]
    kinds = MIXES["mix"]
    done = 0

    async def pump(node: int, lane: int, deadline: float) -> None:
        nonlocal done
        c, order = clients[node], list(per_node[node])
        random.Random(seed * 100 + node).shuffle(order)
        off, n = lane * BATCH, len(order)
        while time.perf_counter() < deadline and n:
            if pipelined:
                pipe = c.pipeline(transaction=False)
                for j in range(BATCH):
                    k, kind = names[order[(off + j) % n]], kinds[j % len(kinds)]
                    if kind == "int":
                        pipe.incrby(f"bl:{{{k}}}:i", 1)
                    elif kind == "set":
                        pipe.sadd(f"bl:{{{k}}}:s", str(j % 1024))
                    else:
                        pipe.get(f"bl:{{{k}}}:i")
                await pipe.execute()
                done += BATCH
            else:
                for j in range(100):
                    k, kind = names[order[(off + j) % n]], kinds[j % len(kinds)]
                    if kind == "int":
                        await c.incrby(f"bl:{{{k}}}:i", 1)
                    elif kind == "set":
                        await c.sadd(f"bl:{{{k}}}:s", str(j % 1024))
                    else:
                        await c.get(f"bl:{{{k}}}:i")
                done += 100
            off += BATCH * INFLIGHT

    try:
        for c in clients:
            await c.ping()
        await gate.start()
        deadline = time.perf_counter() + seconds
        async with anyio.create_task_group() as tg:
            for node in range(len(clients)):
                for lane in range(INFLIGHT):
                    tg.start_soon(pump, node, lane, deadline)
        gate.stop()
    finally:
        for c in clients:
            await c.aclose()
    return {"ops": done, "applied": done}


async def _unlink_baseline(url: str, prefix: str, nkeys: int) -> None:
    """The baseline's keys go (the bench may run on someone's cluster)."""
    settings = load_settings(url=url)
    async with Coordinator(settings) as co:
        names, per_node = await _keys(co, prefix, nkeys)
        for i in range(len(per_node)):
            for j in range(0, len(per_node[i]), 1000):
                pipe = co.node_client(i).pipeline(transaction=False)
                for x in per_node[i][j : j + 1000]:
                    pipe.unlink(f"bl:{{{names[x]}}}:i", f"bl:{{{names[x]}}}:s")  # one slot: one hash tag
                await pipe.execute()


async def _read_back(url: str, prefix: str, nkeys: int, ints: array[int], sets: array[int]) -> dict[str, Any]:
    """Every int state equals the adds sent to it; every set holds the members sent."""
    bad = 0
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        for lo in range(0, nkeys, 2500):
            idx = range(lo, min(lo + 2500, nkeys))
            keys = [prefix + key_name(i) for i in idx]
            got = await table.execute(
                [Op(Mode.RETRIEVE, st, k, None) for st in ("bench_int", "bench_set") for k in keys]
            )
            for j, i in enumerate(idx):
                want_set = {str(c) for c in range(min(1024, sets[i]))}
                bad += int(got[j] != ints[i]) + int(set(got[len(keys) + j] or ()) != want_set)
    return {"states_checked": 2 * nkeys, "mismatches": bad}


# -- the run -------------------------------------------------------------------------------


class _Bench:
    def __init__(self, site: Site, quick: bool, progress: Progress, rounds: int | None) -> None:
        self.url, self.quick, self.progress = site.url, quick, progress
        self.seconds = 1.0 if quick else 2.0
        self.reps = repeats(quick, rounds)
        self.coord_pids = site.coord_pids
        self.meter = site.meter()
        self.cal = Calibration(site.url, quick=quick, progress=progress, run=site.calibration_runner())
        self.rows: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []

    def one(self, w: Workers, job: Any, what: dict[str, Any], args: list[tuple[Any, ...]]) -> dict[str, Any]:
        rnd = w.run(job, args, self.meter)
        ops = sum(r["applied"] for r in rnd.results)
        label = f"{what['client']} {what['mix']}, {what['states']:,} states, {what['procs']} proc(s)"
        row = {**what, "ops": sum(r["ops"] for r in rnd.results), "applied": ops, "ops_per_s": ops / rnd.wall_s,
               **account(label, rnd, self.meter, ops, self.coord_pids)}  # fmt: skip
        row["results"] = rnd.results
        return row

    def block(self, w: Workers, nkeys: int, configs: list[tuple[str, int]]) -> None:
        """One key space: populate, every config ``reps`` times (in rounds), read back."""
        prefix = f"c{uuid.uuid4().hex[:6]}:"
        ints, sets = array("Q", bytes(8 * nkeys)), array("I", bytes(4 * nkeys))
        t0 = time.monotonic()

        def fold(row: dict[str, Any]) -> None:
            nonlocal ints, sets
            for r in row.pop("results"):
                ints = array("Q", map(operator.add, ints, array("I", r["ints"])))
                sets = array("I", map(max, sets, array("I", r["sets"])))

        self.progress(f"{nkeys:,} states: populating")
        fold(self.one(w, cogs_job, {"client": "cogs", "mix": "populate", "states": nkeys, "procs": 1},
                      [(self.url, prefix, nkeys, 0.0, "populate", 99)]))  # fmt: skip
        for rep in range(self.reps):
            self.cal.sample()
            for mix, procs in configs:
                what = {"client": "cogs", "mix": mix, "states": nkeys, "procs": procs, "round": rep}
                row = self.one(
                    w, cogs_job, what, [(self.url, prefix, nkeys, self.seconds, mix, i) for i in range(procs)]
                )
                fold(row)
                self.rows.append(row)
                self.progress(f"  {mix}, {procs} proc(s): {fmt_rate(row['ops_per_s'])} applied ops/s, "
                              f"CPU/op {row['cpu_us_per_item']['workers']:.2f} us proxies + "
                              f"{row['cpu_us_per_item']['coordinator']:.2f} us coordinator")  # fmt: skip
        if time.monotonic() - t0 > 110:
            took = time.monotonic() - t0
            raise BenchError(f"the {nkeys:,}-state runs took {took:.0f} s: past the bench states' 2-minute window "
                             "some expired, so the read-back cannot be exact; run fewer repeats")  # fmt: skip
        check = runtime.run(_read_back, self.url, prefix, nkeys, ints, sets)
        self.checks.append({"states": nkeys, **check})
        self.progress(f"  read back {check['states_checked']:,} states: {check['mismatches']} mismatch(es)")

    def baselines(self, w: Workers, nkeys: int, procs: int) -> None:
        prefix = f"b{uuid.uuid4().hex[:6]}:"
        for rep in range(self.reps):
            for client, pipelined in (("redis-py pipelined", True), ("redis-py naive", False)):
                what = {"client": client, "mix": "mix", "states": nkeys, "procs": procs, "round": rep}
                args = [(self.url, prefix, nkeys, self.seconds, pipelined, i) for i in range(procs)]
                row = self.one(w, redis_py_job, what, args)
                row.pop("results")
                self.rows.append(row)
                self.progress(f"  {client}, {procs} proc(s): {fmt_rate(row['ops_per_s'])} ops/s")
        runtime.run(_unlink_baseline, self.url, prefix, nkeys)


HEADLINE = (100_000, 2)  # states, proxy processes


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
    lab_rtt: str | None = None,
) -> dict[str, Any]:
    """Run the bench on ``url`` (default: a cluster of its own) or, with ``lab_rtt``, in a
    lab: each simulated proxy on a host of its own (paper Fig. 12b; needs root)."""
    procs_list = [1, 2] if quick else [1, 2, 4]
    with bench_site(url, progress, lab_rtt=lab_rtt, middleboxes=max(procs_list)) as site:
        data = site.call(lambda: _run(site, quick, rounds, procs_list, progress))
    path = write_results("coordinator" + site.name, data, markdown(data), out)
    plot(path, data)
    s = data["summary"]
    progress(f"applied (median): {fmt_rate(s['applied_ops_per_s']['median'])} ops/s = {s['applied_vs_redis_incr']} x "
             f"redis-benchmark INCR; wrote {path} and {path.with_suffix('.md')}")  # fmt: skip
    return data


def _run(site: Site, quick: bool, rounds: int | None, procs_list: list[int], progress: Progress) -> dict[str, Any]:
    b = _Bench(site, quick, progress, rounds)
    env = environment(site.url, site.info, batch_ops=BATCH, inflight_per_node=INFLIGHT, seconds_per_run=b.seconds)
    with Workers(max(procs_list), start=site.starter()) as w:
        b.meter.add(w.pids)
        env["proxy_processes_net_namespaces"] = w.net_namespaces()
        b.block(w, 1_000, [("mix", HEADLINE[1])])
        b.block(w, 100_000, [("mix", p) for p in procs_list])
        b.block(w, 100_000, [(m, HEADLINE[1]) for m in ("int_add", "set_add", "get")])
        if not quick:
            b.block(w, 1_000_000, [("mix", HEADLINE[1])])
        progress("baselines (same processes, connections, keys and mix)")
        b.baselines(w, HEADLINE[0], HEADLINE[1])
    b.cal.sample()
    return _results(b, env)


def _results(b: _Bench, env: dict[str, Any]) -> dict[str, Any]:
    def rates(**match: Any) -> dict[str, Any]:
        rs = [r["ops_per_s"] for r in b.rows if all(r[k] == v for k, v in match.items())]
        return stat(rs)

    states, procs = HEADLINE
    head = rates(client="cogs", mix="mix", states=states, procs=procs)
    piped = rates(client="redis-py pipelined")
    naive = rates(client="redis-py naive")
    head_rows = [r for r in b.rows if (r["client"], r["mix"], r["states"], r["procs"]) == ("cogs", "mix", *HEADLINE)]
    summary = {
        "applied_ops_per_s": head,
        "applied_vs_redis_incr": b.cal.ratio(head["median"]),
        "applied_ops_per_s_by_states": {str(n): rates(client="cogs", mix="mix", states=n, procs=procs)
                                        for n in sorted({r["states"] for r in b.rows if r["mix"] == "mix"})},
        "applied_ops_per_s_by_procs": {str(p): rates(client="cogs", mix="mix", states=states, procs=p)
                                       for p in sorted({r["procs"] for r in b.rows if r["client"] == "cogs"})},
        "applied_ops_per_s_by_op": {m: rates(client="cogs", mix=m) for m in ("int_add", "set_add", "get")},
        "cpu_us_per_op": {"proxies": stat([r["cpu_us_per_item"]["workers"] for r in head_rows], 3),
                          "coordinator": stat([r["cpu_us_per_item"]["coordinator"] for r in head_rows], 3)},
        "redis_py_pipelined_ops_per_s": piped,
        "redis_py_naive_ops_per_s": naive,
        "applied_vs_pipelined": round(head["median"] / piped["median"], 2),
        "applied_vs_naive": round(head["median"] / naive["median"], 1),
        "read_back_exact": all(c["mismatches"] == 0 for c in b.checks),
        "physically_possible": True,  # every run passed the CPU checks, or the bench failed
        **b.cal.headline(),
    }  # fmt: skip
    summary["targets"] = {"applied_ops_per_s": 400_000}
    return {
        "bench": "coordinator", "quick": b.quick, "environment": env, "calibration": b.cal.result(),
        "mix": "per batch, positions cycle: int add (threshold checker), set add (cardinality checker, windowed), "
               "int add, set add, int get",
        "headline": {"states": states, "procs": procs}, "summary": summary, "runs": b.rows, "read_back": b.checks,
    }  # fmt: skip
