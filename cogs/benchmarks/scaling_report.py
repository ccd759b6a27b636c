"""The scaling bench's capacity model, Markdown report and plot.

The model extends what was measured to clusters larger than this box, and is
labelled a model wherever it appears:

    packets/s(N) = min(N / box_cpu_per_packet,  P / (coordinator_cpu_per_op * ops_per_packet))

with one core per middlebox and per coordinator primary (P primaries), from the
medians of the 1-middlebox runs. Where the second term wins, the coordinator saturates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogs.benchmarks.common import fmt_rate, md_table, pyplot, save_plot
from cogs.benchmarks.design_report import calibration_line, fmt_stat

MODEL_N = (1, 2, 4, 8, 16, 32, 64)


def model(s: dict[str, Any], primaries: int) -> dict[str, Any]:
    box = s["box_cpu_us_per_packet"]["median"] / 1e6
    ops = s["ops_per_packet"]["median"]
    op_cost = s["coordinator_cpu_us_per_op"]["median"] / 1e6
    coord = primaries / (op_cost * ops) if ops and op_cost else None
    curve = {str(n): round(min(n / box, coord) if coord else n / box) for n in MODEL_N}
    return {
        "kind": "model (not measured): one core per middlebox and per primary",
        "primaries": primaries,
        "coordinator_capacity_packets_per_s": round(coord) if coord else None,
        "saturation_middleboxes": round(coord * box, 1) if coord else None,
        "packets_per_s": curve,
    }


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    nfs = [k for k, v in s.items() if isinstance(v, dict) and "packets_per_s" in v]
    md = "# NF scaling (paper Fig. 11a, 11b)\n\n" + calibration_line(data) + "\n"
    md += (
        f"Every middlebox worked at least {s['min_box_seconds']:g} s (whole passes over its share of the trace), "
        "parsing included; all started behind one barrier; rate = packets / (last end - first start). "
        f"Every run's CPU fit in the {s['cores']} cores (checked). Runs with more middleboxes than cores are "
        "oversubscribed: they share the cores with each other and with the coordinator.\n\n"
    )
    ns = list(s[nfs[0]]["packets_per_s"])
    rows = []
    for nf in nfs:
        v = s[nf]
        for n in ns:
            rows.append([nf, n, fmt_stat(v["packets_per_s"][n]), fmt_rate(v["per_box_packets_per_cpu_s"][n]["median"])])
    md += md_table(["NF", "middleboxes", "packets/s: median (min-max, n)", "per box: packets per CPU-second"], rows)
    md += "\n" + md_table(
        ["NF", "box CPU us/packet", "ops/packet", "coordinator CPU us/op", "alerts as the trace's truth"],
        [[nf, s[nf]["box_cpu_us_per_packet"]["median"], s[nf]["ops_per_packet"]["median"],
          s[nf]["coordinator_cpu_us_per_op"]["median"], s[nf].get("alerts_exact", "n/a")] for nf in nfs],
    )  # fmt: skip
    md += "\n**Model** (not measured; one core per middlebox and per primary, from the 1-middlebox medians):\n\n"
    md += md_table(
        ["NF", *[f"N={n}" for n in MODEL_N], "coordinator saturates at N"],
        [[nf, *[fmt_rate(s[nf]["model"]["packets_per_s"][str(n)]) for n in MODEL_N],
          s[nf]["model"]["saturation_middleboxes"]] for nf in nfs],
    )  # fmt: skip
    return md


def plot(path: Path, data: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    s = data["summary"]
    nfs = [k for k, v in s.items() if isinstance(v, dict) and "packets_per_s" in v]
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    colors = ("#47a", "#a47", "#4a7", "#a74")
    for nf, color in zip(nfs, colors, strict=False):
        by = s[nf]["packets_per_s"]
        xs = [int(n) for n in by]
        ax.errorbar(xs, [v["median"] / 1e3 for v in by.values()],
                    yerr=[[(v["median"] - v["min"]) / 1e3 for v in by.values()],
                          [(v["max"] - v["median"]) / 1e3 for v in by.values()]],
                    fmt="o", color=color, capsize=3, label=f"{nf} measured (median)")  # fmt: skip
        curve = s[nf]["model"]["packets_per_s"]
        ax.plot(MODEL_N, [curve[str(n)] / 1e3 for n in MODEL_N], "--", color=color, alpha=0.5, label=f"{nf} model")
    ax.axvline(s["cores"], color="gray", linestyle=":", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("middleboxes")
    ax.set_ylabel("packets/s (thousands)")
    ax.set_title(f"NF scaling: measured on {s['cores']} cores, model beyond (dashed)")
    ax.legend(fontsize=6, ncol=2)
    save_plot(fig, path)
