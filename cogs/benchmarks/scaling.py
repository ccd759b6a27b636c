"""NF scaling (paper Fig. 11a): total packets/s vs number of middleboxes, for the
three flow-inspection NFs, measured up to the cores of this box, plus a capacity
model for larger clusters built from what was measured:

    throughput(N) = min(N / box_cpu_per_packet,  P / (coordinator_cpu_per_op * ops_per_packet))

with one core per middlebox and per coordinator primary (P primaries). Where the
second term wins, the coordinator saturates.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

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
from cogs.catalog import DEFAULT_CATALOG
from cogs.nf.detectors import DETECTORS
from cogs.nf.packets import read_trace
from cogs.nf.runner import run_nf
from cogs.nf.synth import Synth
from cogs.proxy import StateProxy

NFS = ("portscan", "dnstunnel", "sidejack")
MODEL_N = (1, 2, 4, 8, 16, 32, 64)


async def _calibrate(url: str, primaries: list[str], nf: str, trace: Path, rounds: int) -> float:
    """Coordinator CPU per op for this NF's op mix: its updates for the trace, replayed
    ``rounds`` times under fresh key prefixes so there are enough ops to measure
    against the idle background (gossip, AOF, heartbeats)."""
    calls: list[tuple[str, str, str, Any]] = []
    det = DETECTORS[nf](lambda *a: calls.append(a))
    for p in read_trace(trace):
        det.packet(p)
    det.finish()
    cpu0 = coordinator_cpu(primaries)
    async with StateProxy(url) as proxy:
        for r in range(rounds):
            for i, (state, key, op, delta) in enumerate(calls):
                proxy.update(state, f"cal{r}|{key}", op, delta)
                if i % 1000 == 0:
                    await proxy.wait_room(1000)
        await proxy.flush()
        ops = proxy.statistics().ops_sent
    cpu1 = coordinator_cpu(primaries)
    return (cpu1 - cpu0) / ops if ops else 0.0


def main(
    url: str | None = None, quick: bool = False, out: Path | None = None, progress: Progress = noop
) -> dict[str, Any]:
    cores = os.cpu_count() or 2
    ns = sorted({1, min(2, cores), min(4, 2 * cores)})
    flows = 4000 if quick else 25_000
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cogs-scaling-") as d,
        bench_cluster(url, progress, catalog=DEFAULT_CATALOG) as seed,
    ):
        trace, _ = (
            Synth(seed=5, benign_flows=flows, scans=4, tunnels=2, sidejacks=4, duration=120)
            .build()
            .write(Path(d) / "scaling.pcap")
        )
        primary_addrs = coordinator_nodes(seed, replicas=False)
        for nf in NFS:
            per_op = runtime.run(_calibrate, seed, primary_addrs, nf, trace, 10 if quick else 40)
            progress(f"{nf}: coordinator CPU {per_op * 1e6:.1f} us per op (calibrated)")
            for n in ns:
                primaries = len(primary_addrs)
                r = run_nf(nf, trace, n, seed)
                packets = sum(b.packets for b in r.boxes)
                ops = sum(b.ops_sent for b in r.boxes)
                row: dict[str, Any] = {
                    "nf": nf,
                    "middleboxes": n,
                    "oversubscribed": n > cores,
                    "packets": packets,
                    "packets_per_s": r.packets_per_s,
                    "per_box_packets_per_s": [round(b.packets_per_s) for b in r.boxes],
                    "box_cpu_us_per_packet": sum(b.cpu_seconds for b in r.boxes) / packets * 1e6,
                    "ops_per_packet": ops / packets,
                    "coordinator_cpu_us_per_op": per_op * 1e6,
                    "alerts": len(r.alerts),
                    "primaries": primaries,
                }
                rows.append(row)
                rate = fmt_rate(r.packets_per_s)
                progress(f"{nf}, {n} middlebox(es): {rate} packets/s, {row['alerts']} alert(s)")
    models = {nf: _model([r for r in rows if r["nf"] == nf and not r["oversubscribed"]]) for nf in NFS}
    data = {
        "bench": "scaling",
        "quick": quick,
        "environment": environment(),
        "summary": {
            nf: {
                "measured_packets_per_s": {
                    str(r["middleboxes"]): round(r["packets_per_s"]) for r in rows if r["nf"] == nf
                },
                **{k: v for k, v in models[nf].items() if k != "curve"},
            }
            for nf in NFS
        },
        "runs": rows,
        "model": {nf: models[nf]["curve"] for nf in NFS},
    }

    def measured(r: dict[str, Any]) -> list[Any]:
        n = f"{r['middleboxes']}{' (oversubscribed)' if r['oversubscribed'] else ''}"
        costs = (
            f"{r['box_cpu_us_per_packet']:.1f}",
            f"{r['ops_per_packet']:.3f}",
            f"{r['coordinator_cpu_us_per_op']:.1f}",
        )
        return [r["nf"], n, fmt_rate(r["packets_per_s"]), *costs]

    md = (
        "# NF scaling (paper Fig. 11a)\n\nMeasured on this box. A middlebox's work is the NF logic on its share of "
        "the trace plus its StateProxy; L2-L4 parsing and the flow hash are the splitter's (the load balancer's). "
        "Most packets of a mixed trace need little work from a given NF, hence the high rates. "
        "Coordinator CPU per op is calibrated by replaying the NF's updates in bulk; it includes the checkers "
        "(PFCOUNT for the DNS tunnel's HyperLogLog is the dearest).\n\n"
    ) + md_table(
        ["NF", "middleboxes", "packets/s", "box CPU us/packet", "ops/packet", "coordinator CPU us/op"],
        [measured(r) for r in rows],
    )
    md += "\nCapacity model (one core per middlebox and per primary, 3 primaries):\n\n" + md_table(
        ["NF", *[f"N={n}" for n in MODEL_N], "coordinator saturates at"],
        [
            [nf, *[fmt_rate(models[nf]["curve"][str(n)]) for n in MODEL_N], f"N = {models[nf]['saturation_n']:.0f}"]
            for nf in NFS
        ],
    )
    path = write_results("scaling", data, md, out)
    _plot(path, rows, models)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _model(rows: list[dict[str, Any]], primaries: int = 3) -> dict[str, Any]:
    """Capacity model from the measured per-packet and per-op CPU costs."""
    box = min(r["box_cpu_us_per_packet"] for r in rows) / 1e6
    ops = max(r["ops_per_packet"] for r in rows)
    op_cost = max(r["coordinator_cpu_us_per_op"] for r in rows) / 1e6
    coord_cap = primaries / (op_cost * ops) if ops and op_cost else float("inf")
    curve = {str(n): min(n / box, coord_cap) for n in MODEL_N}
    return {
        "box_cpu_us_per_packet": box * 1e6,
        "ops_per_packet": ops,
        "coordinator_cpu_us_per_op": op_cost * 1e6,
        "coordinator_capacity_packets_per_s": coord_cap,
        "saturation_n": coord_cap * box,
        "curve": curve,
    }


def _plot(path: Path, rows: list[dict[str, Any]], models: dict[str, dict[str, Any]]) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for nf, color in zip(NFS, ("#47a", "#a47", "#4a7"), strict=True):
        pts = [(r["middleboxes"], r["packets_per_s"]) for r in rows if r["nf"] == nf]
        ax.plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], "o", color=color, label=f"{nf} measured")
        curve = models[nf]["curve"]
        ax.plot(MODEL_N, [curve[str(n)] / 1e3 for n in MODEL_N], "--", color=color, alpha=0.6, label=f"{nf} model")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("middleboxes")
    ax.set_ylabel("packets/s (thousands)")
    ax.set_title("NF scaling on cogs (measured on 2 cores; model beyond)")
    ax.legend(fontsize=7)
    save_plot(fig, path)
