"""The coordinator bench's Markdown report and plot, from its results document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogs.benchmarks.common import fmt_rate, md_table, pyplot, save_plot
from cogs.benchmarks.design_report import calibration_line, fmt_stat


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    md = "# Coordinator throughput (paper Fig. 12)\n\n" + calibration_line(data) + "\n"
    md += f"Op mix: {data['mix']}; every count read back: {'exact' if s['read_back_exact'] else 'MISMATCHES'}.\n\n"
    states, procs = data["headline"]["states"], data["headline"]["procs"]
    st = f"{states:,}"
    rows = [["cogs", "mix", f"{int(n):,}", procs, fmt_stat(v)] for n, v in s["applied_ops_per_s_by_states"].items()]
    rows += [["cogs", "mix", st, p, fmt_stat(v)] for p, v in s["applied_ops_per_s_by_procs"].items() if int(p) != procs]
    rows += [["cogs", m.replace("_", " "), st, procs, fmt_stat(v)] for m, v in s["applied_ops_per_s_by_op"].items()]
    for client, key in (("redis-py, pipelined per op", "redis_py_pipelined_ops_per_s"),
                        ("redis-py, one await per op", "redis_py_naive_ops_per_s")):  # fmt: skip
        rows.append([client, "mix, no checkers", st, procs, fmt_stat(s[key])])
    md += md_table(["client", "ops", "states", "proxy processes", "applied ops/s: median (min-max, n)"], rows)
    md += (
        f"\ncogs ({st} states, {procs} processes) applied {fmt_stat(s['applied_ops_per_s'])} ops/s: "
        f"{s['applied_vs_pipelined']}x redis-py pipelined and {s['applied_vs_naive']}x redis-py awaiting each "
        f"command, with the same processes and connections; {s['applied_vs_redis_incr']} x the same run's "
        f"redis-benchmark INCR -P 64 on one node ({fmt_rate(s['redis_incr_p64_per_s'])}/s, the ceiling of a node "
        f"doing nothing but INCR). CPU per applied op: {s['cpu_us_per_op']['proxies']['median']:.2f} us in the "
        f"proxies, {s['cpu_us_per_op']['coordinator']['median']:.2f} us in the coordinator.\n"
    )
    return md


def plot(path: Path, data: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    s = data["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    by = s["applied_ops_per_s_by_states"]
    xs = [int(n) for n in by]
    a.errorbar(xs, [v["median"] / 1e3 for v in by.values()],
               yerr=[[(v["median"] - v["min"]) / 1e3 for v in by.values()],
                     [(v["max"] - v["median"]) / 1e3 for v in by.values()]],
               marker="o", capsize=3, label=f"cogs, {data['headline']['procs']} proxy processes")  # fmt: skip
    a.axhline(s["redis_py_pipelined_ops_per_s"]["median"] / 1e3, color="gray", linestyle="--",
              label="redis-py pipelined (same concurrency)")  # fmt: skip
    a.axhline(s["redis_incr_p64_per_s"] / 1e3, color="black", linestyle=":", label="redis-benchmark INCR -P 64, 1 node")
    a.set_xscale("log")
    a.set_xlabel("states in the coordinator")
    a.set_ylabel("applied ops/s (thousands), median")
    a.set_title("Same op mix at every state count")
    a.legend(fontsize=7)
    ops = s["applied_ops_per_s_by_op"]
    b.bar([k.replace("_", " ") for k in ops], [v["median"] / 1e3 for v in ops.values()], color="#47a")
    b.set_ylabel("applied ops/s (thousands), median")
    b.set_title(f"Per op type, {data['headline']['states']:,} states")
    save_plot(fig, path)
