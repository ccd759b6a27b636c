"""Coordinator capacity at 3 vs 6 primaries (issue 23), same run: ``cogs bench scale``.

A lab (cogs/lab: every coordinator node on its own host, links with ``--rtt``) starts
with 3 primaries; simulated proxies on a middlebox host send ``cogs_batch`` calls of
trigger updates (int adds with a threshold checker, ``INFLIGHT`` batches of
``BATCH`` ops in flight per primary per process, as proxies do) for a few seconds;
``cogs lab scale`` grows the cluster to 6 primaries (slots and keys move) and the
same load runs again; the next round starts at 6 and shrinks to 3 (ABBA: a drift of
the machine's speed hits both sizes alike). Every count is read back at the end and
must equal what was sent, across all the moves.

What a 2-core machine can and cannot show: every node and the load generators share
the same 2 cores whatever the number of primaries, so the measured rate cannot rise
with primaries here (``cores_busy`` says how close to the cores each run was). It
does show the coordinator's CPU per op at both sizes (flat: no cross-node cost), how
evenly the ops spread over the primaries, and what scaling costs (seconds, keys
moved); the capacity with a core per primary is given as a model, labelled as one:
``primaries / (coordinator CPU seconds per op)``.
"""

from __future__ import annotations

import json
import operator
import random
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

import anyio

from cogs import runtime
from cogs.benchmarks.common import BENCH_CATALOG, Progress, fmt_rate, md_table, noop, write_results
from cogs.benchmarks.cpu import CpuMeter
from cogs.benchmarks.harness import BenchError, Calibration, environment, repeats, stat
from cogs.benchmarks.workers import Gate, Workers, account
from cogs.coordinator.client import Coordinator
from cogs.coordinator.frames import runs
from cogs.coordinator.ops import Op, StateTable
from cogs.keys import slot
from cogs.protocol import Mode

STATE = "soak_count"  # no window: counts stay exact however long the bench runs
BATCH = 2000
INFLIGHT = 2
PROCS = 2
SIZES = (3, 6)
MB = "mb1"


def _frame(si: int, keys: list[str], batch: list[int]) -> str:
    return f'[0,{si},"add",{len(batch)},' + ",".join(keys[i] + ',"1"' for i in batch) + "]"


async def load_job(
    netns: str, url: str, prefix: str, nkeys: int, seconds: float, seed: int, gate: Gate
) -> dict[str, Any]:
    """One simulated proxy, on the middlebox host ``netns``: batches of int adds to every
    primary for ``seconds``; the adds sent per key (for the read-back) and per primary
    (the spread)."""
    enter_netns(netns)
    async with Coordinator(url=url) as co:
        catalog, token = await co.stored_catalog()
        assert co.topology is not None
        topo = co.topology
        si = catalog.index(STATE)
        names = [f"{prefix}{i}" for i in range(nkeys)]
        keys = [json.dumps(k) for k in names]
        if json.loads(_frame(si, keys, [0])) != runs([(0, si, "add", names[0], "1")]):
            raise BenchError("the scale bench's frames no longer match cogs/coordinator/frames.py")
        per_node: list[list[int]] = [[] for _ in topo.nodes]
        for i, k in enumerate(names):
            per_node[topo.node_of(slot(k))].append(i)
        counts = array("I", bytes(4 * nkeys))
        by_node = [0] * len(topo.nodes)
        applied = 0

        async def pump(node: int, lane: int, deadline: float) -> None:
            nonlocal applied
            order = list(per_node[node])
            random.Random(seed * 1000 + node).shuffle(order)
            n, off, stream = len(order), lane * BATCH, co.alert_stream(node)
            while n and time.perf_counter() < deadline:
                batch = [order[(off + j) % n] for j in range(BATCH)]
                off = (off + BATCH * INFLIGHT) % n
                reply = await co.call_batch(node, token, stream, _frame(si, keys, batch))
                if reply.errors:
                    raise BenchError(f"the coordinator refused a bench op: {next(iter(reply.errors.values()))}")
                for i in batch:
                    counts[i] += 1
                applied += reply.applied
                by_node[node] += len(batch)

        await gate.start()
        deadline = time.perf_counter() + seconds
        async with anyio.create_task_group() as tg:
            for node in range(len(per_node)):
                for lane in range(INFLIGHT):
                    tg.start_soon(pump, node, lane, deadline)
        gate.stop()
    return {"ops": sum(by_node), "applied": applied, "by_node": by_node, "counts": counts.tobytes()}


def enter_netns(name: str) -> None:
    """Move this (worker) process's thread into network namespace ``name``, once: the
    sockets it opens from now on are the middlebox host's."""
    if _ENTERED.get("netns") == name:
        return
    import ctypes
    import os

    from cogs.lab.netns import RUN_NETNS

    fd = os.open(RUN_NETNS / name, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise BenchError(f"cannot enter the middlebox host's namespace {name}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    _ENTERED["netns"] = name


_ENTERED: dict[str, str] = {}


class _Calibration(Calibration):
    """The harness's calibration, re-aimed before each sample at the node that owns its
    key now (scaling moves it)."""

    def sample(self) -> float:
        from cogs.benchmarks.harness import CAL_KEY, _benchmark_argv, _node_of_key

        self.host, self.port = runtime.run(_node_of_key, self.settings, CAL_KEY)
        self.argv, self.shown = _benchmark_argv(self.settings, self.host, self.port, self.requests)
        return super().sample()


async def _read_back(url: str, prefix: str, counts: array[int]) -> int:
    bad = 0
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        for lo in range(0, len(counts), 2500):
            idx = range(lo, min(lo + 2500, len(counts)))
            got = await table.execute([Op(Mode.RETRIEVE, STATE, f"{prefix}{i}", None) for i in idx])
            bad += sum(int((g or 0) != counts[i]) for g, i in zip(got, idx, strict=True))
    return bad


class _Run:
    """The lab, its load generators (processes on the middlebox host) and what they measured."""

    def __init__(self, lab: Any, quick: bool, nkeys: int, seconds: float, progress: Progress) -> None:
        self.lab, self.nkeys, self.seconds, self.progress = lab, nkeys, seconds, progress
        self.cal = lab.call(MB, lambda: _Calibration(lab.url, quick=quick, progress=progress))
        self.prefix = f"s{uuid.uuid4().hex[:6]}:"
        self.counts = array("Q", bytes(8 * nkeys))
        self.rows: list[dict[str, Any]] = []
        self.scales: list[dict[str, Any]] = []
        self.netns = lab.hosts[MB].netns
        self.workers = Workers(PROCS)  # each enters the middlebox host's namespace (load_job)

    def scale(self, size: int) -> None:
        from cogs.lab import scale_lab

        r = scale_lab(self.lab, size)
        self.scales.append({"to": size, "seconds": round(r.seconds, 2), "slots": r.slots_moved, "keys": r.keys_moved})

    def measure(self, size: int, rep: int) -> None:
        lab = self.lab
        node_pids = [p for n in lab.hosts if n.startswith("node") and (p := lab.node_pid(n))]
        meter = CpuMeter([*node_pids, *self.workers.pids])
        args = [(self.netns, lab.url, self.prefix, self.nkeys, self.seconds, rep * 10 + i) for i in range(PROCS)]
        rnd = self.workers.run(load_job, args, meter)
        ops = sum(x["applied"] for x in rnd.results)
        row = {"primaries": size, "round": rep, "ops_per_s": ops / rnd.wall_s, "applied": ops,
               **account(f"{size} primaries", rnd, meter, ops, node_pids)}  # fmt: skip
        by_node = [sum(x["by_node"][i] for x in rnd.results) for i in range(size)]
        row["node_share"] = [round(b / max(1, sum(by_node)), 4) for b in by_node]
        for x in rnd.results:
            self.counts = array("Q", map(operator.add, self.counts, array("I", x["counts"])))
        self.rows.append(row)
        coord = row["cpu_us_per_item"]["coordinator"]
        self.progress(f"  {size} primaries: {fmt_rate(row['ops_per_s'])} applied ops/s, coordinator CPU "
                      f"{coord:.2f} us/op, cores busy {row['cores_busy']:.2f}")  # fmt: skip

    def read_back(self) -> int:
        lab = self.lab
        bad: int = lab.call(MB, lambda: runtime.run(_read_back, lab.url, self.prefix, self.counts))
        self.progress(f"read back {self.nkeys:,} counts after {len(self.scales)} scale(s): {bad} mismatch(es)")
        return bad


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
    rtt: str = "200us",
) -> dict[str, Any]:
    from cogs.lab import Lab
    from cogs.lab.netns import require_privileges

    if url:
        raise BenchError("the scale bench builds its own lab (it adds and removes coordinator hosts): run it "
                         "without --url")  # fmt: skip
    require_privileges()
    reps = repeats(quick, rounds)
    seconds = 1.5 if quick else 3.0
    nkeys = 20_000 if quick else 100_000
    extra = {"rtt": rtt, "batch_ops": BATCH, "inflight_per_node": INFLIGHT, "proxy_processes": PROCS,
             "seconds_per_run": seconds, "keys": nkeys}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cogs-bench-scale-") as d:
        progress(f"building a lab: {SIZES[0]} primaries on their own hosts, 1 middlebox host, rtt {rtt}")
        with Lab.up(Path(d) / "lab", nodes=SIZES[0], replicas=0, middleboxes=1, rtt=rtt, catalog=BENCH_CATALOG) as lab:
            where = "lab: every node and the middlebox on a host of its own"
            env = lab.call(MB, lambda: environment(lab.url, where, **extra))
            env["primaries"] = " and ".join(map(str, SIZES))
            run = _Run(lab, quick, nkeys, seconds, progress)
            try:
                size = SIZES[0]
                for rep in range(reps):  # ABBA: 3, 6 | 6, 3 | 3, 6 ...
                    lab.call(MB, run.cal.sample)
                    run.measure(size, rep)
                    size = SIZES[1] if size == SIZES[0] else SIZES[0]
                    progress(f"round {rep + 1}/{reps}: scaling to {size} primaries")
                    run.scale(size)
                    run.measure(size, rep)
            finally:
                run.workers.close()
            lab.call(MB, run.cal.sample)
            bad = run.read_back()
    data = _results(run.rows, run.scales, env, run.cal, quick, bad, nkeys)
    path = write_results("scale", data, markdown(data), out)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _results(
    rows: list[dict[str, Any]], scales: list[dict[str, Any]], env: dict[str, Any], cal: Calibration, quick: bool,
    bad: int, nkeys: int,
) -> dict[str, Any]:  # fmt: skip
    by: dict[str, Any] = {}
    for n in SIZES:
        mine = [r for r in rows if r["primaries"] == n]
        coord = [r["cpu_us_per_item"]["coordinator"] for r in mine]
        by[str(n)] = {
            "applied_ops_per_s": stat([r["ops_per_s"] for r in mine]),
            "coordinator_cpu_us_per_op": stat(coord, 3),
            "proxy_cpu_us_per_op": stat([r["cpu_us_per_item"]["workers"] for r in mine], 3),
            "cores_busy": stat([r["cores_busy"] for r in mine], 2),
            "largest_node_share": stat([max(r["node_share"]) for r in mine], 3),
            "model_ops_per_s": round(n / (stat(coord, 3)["median"] / 1e6)) if coord and coord[0] else None,
        }
    a, b = (by[str(n)]["applied_ops_per_s"]["median"] for n in SIZES)
    summary = {
        "by_primaries": by,
        "measured_ratio": round(b / a, 3) if a else None,
        "model_ratio": round(by[str(SIZES[1])]["model_ops_per_s"] / by[str(SIZES[0])]["model_ops_per_s"], 3)
        if by[str(SIZES[0])]["model_ops_per_s"] else None,
        "scale_seconds": {f"to_{n}": stat([s["seconds"] for s in scales if s["to"] == n], 2)
                          for n in SIZES if any(s["to"] == n for s in scales)},
        "keys_moved_per_scale": stat([s["keys"] for s in scales]) if scales else None,
        "read_back_exact": bad == 0,
        "cores": rows[0]["cores"] if rows else None,
        "physically_possible": True,  # every run passed the CPU checks, or the bench failed
        **cal.headline(),
    }  # fmt: skip
    return {
        "bench": "scale", "quick": quick, "environment": env, "calibration": cal.result(), "keys": nkeys,
        "summary": summary, "runs": rows, "scales": scales,
    }  # fmt: skip


def table(data: dict[str, Any]) -> str:
    """The figures as a Markdown table and a paragraph (results file and README)."""
    s = data["summary"]
    by = s["by_primaries"]

    def f(x: dict[str, Any], fmt: str = "rate") -> str:
        show = fmt_rate if fmt == "rate" else (lambda v: f"{v:.2f}")
        return f"**{show(x['median'])}** ({show(x['min'])}-{show(x['max'])}, n={x['n']})"

    rows = [[n, f(v["applied_ops_per_s"]), f(v["coordinator_cpu_us_per_op"], "num") + " us",
             f"{v['cores_busy']['median']:.2f} of {s['cores']}", f"{v['largest_node_share']['median']:.1%}",
             fmt_rate(v["model_ops_per_s"]) if v["model_ops_per_s"] else "-"] for n, v in by.items()]  # fmt: skip
    heads = ["primaries", "applied ops/s", "coordinator CPU per op", "cores busy", "busiest primary's share of ops",
             "model: a core per primary"]  # fmt: skip
    moves = ", ".join(f"to {k[3:]} primaries {v['median']:.1f} s" for k, v in s["scale_seconds"].items())
    keys = s["keys_moved_per_scale"]
    c0, c1 = (by[str(n)]["coordinator_cpu_us_per_op"]["median"] for n in SIZES)
    b0, b1 = (by[str(n)]["cores_busy"]["median"] for n in SIZES)
    return md_table(heads, rows) + (
        f"\nMeasured {s['measured_ratio']}x from {SIZES[0]} to {SIZES[1]} primaries (cores busy {b0:.2f} -> "
        f"{b1:.2f}); coordinator CPU per op {c0:.2f} -> {c1:.2f} us ({c1 / c0 - 1:+.0%}); the model (primaries / "
        f"coordinator CPU per op, not a measurement) {s['model_ratio']}x. Every node and the load generators share "
        f"this machine's {s['cores']} cores whatever the number of primaries, so the measured rate cannot show what "
        "a primary per machine gives: a change here comes from how much of the cores the run kept busy (with more "
        "primaries the proxies keep more batches in flight). What carries over is the CPU per op and how evenly the "
        f"ops spread (ideal share: 1/primaries); the model is that. Scaling took {moves} (median), moving "
        f"{keys['median']:,.0f} keys each time (no load meanwhile); every count read back after all the moves: "
        f"{'exact' if s['read_back_exact'] else 'NOT exact'}.\n"
    )


def markdown(data: dict[str, Any]) -> str:
    e = data["environment"]
    return (
        "# Coordinator capacity at 3 vs 6 primaries (`cogs bench scale`)\n\n"
        f"The {e['placement']}, rtt {e['rtt']}; {e['proxy_processes']} simulated proxies, {BATCH}-op batches, "
        f"{INFLIGHT} in flight per primary each; {data['keys']:,} keys of `{STATE}` (int add, threshold checker).\n\n"
        + table(data)
    )
