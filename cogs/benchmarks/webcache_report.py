"""The web cache bench's summary, Markdown report and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogs.benchmarks.common import md_table, pyplot, save_plot
from cogs.benchmarks.design_report import calibration_line, fmt_stat
from cogs.benchmarks.harness import stat

MODES = ("cogs", "icp")


def summarize(b: Any, env: dict[str, Any], sizes: list[int], quick: bool, load: dict[str, Any]) -> dict[str, Any]:
    """The summary (medians per point) and the results document."""

    def per(mode: str, key: str, ndigits: int | None = 0) -> dict[str, Any]:
        return {str(n): stat([r[key] for r in b.runs if r["mode"] == mode and r["instances"] == n], ndigits)
                for n in sizes}  # fmt: skip

    rps = {m: per(m, "requests_per_s", 1) for m in MODES}
    cpu = {m: {str(n): stat([r["node_cpu_us_per_request"] + r["coordinator_cpu_us_per_request"] for r in b.runs
                             if r["mode"] == m and r["instances"] == n]) for n in sizes} for m in MODES}  # fmt: skip
    per_cpu = {m: per(m, "requests_per_cpu_s", 1) for m in MODES}
    top = str(max(sizes))

    def ratio(d: dict[str, Any], n: str) -> float:
        return round(d["cogs"][n]["median"] / d["icp"][n]["median"], 2) if d["icp"][n]["median"] else 0.0

    summary = {
        "requests_per_s": rps,
        "requests_per_s_vs_redis_incr": {m: {n: b.cal.ratio(v["median"]) for n, v in rps[m].items()} for m in MODES},
        "ratio_vs_icp": {n: ratio(rps, n) for n in map(str, sizes)},
        f"ratio_vs_icp_at_{top}": ratio(rps, top),
        "hit_ratio": {m: per(m, "hit_ratio", 3) for m in MODES},
        "cpu_us_per_request": cpu,
        "coordinator_cpu_us_per_request": per("cogs", "coordinator_cpu_us_per_request"),
        "requests_per_cpu_s": per_cpu,
        f"requests_per_cpu_s_ratio_at_{top}": ratio(per_cpu, top),
        "query_cost": {str(q["instances"]): {} for q in b.queries},
        "errors": sum(r["errors"] for r in b.runs),
        "physically_possible": True,  # every run passed the CPU checks, or the bench failed
        "target_ratio_vs_icp_at_9": 1.4,
        **b.cal.headline(),
    }
    for q in b.queries:
        summary["query_cost"][str(q["instances"])][q["mode"]] = {
            "siblings": q["siblings"], "cpu_us_per_query": q["cpu_us_per_query"], "p50_us": q["p50_us"]}  # fmt: skip
    return {
        "bench": "webcache", "quick": quick, "environment": env, "calibration": b.cal.result(), "load": load,
        "summary": summary, "runs": b.runs, "query_cost": b.queries,
    }  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    place = data["environment"]["placement"]
    where = (
        f"Caches and coordinator on CPUs {place['tested_cpus']}, load generators and origin on {place['rest_cpus']}."
        if place.get("mode") == "split"
        else "Caches, coordinator, load generators and origin share every CPU (the same for both modes)."
    )
    md = "# Cooperative web cache: cogs vs ICP (paper Fig. 11c)\n\n" + calibration_line(data) + "\n" + where + "\n"
    md += "Both clusters up at once per size, measured in alternation; each cell: median (min-max, n).\n\n"
    rows = []
    for n in s["ratio_vs_icp"]:

        def both(key: str, fmt: str, n: str = n) -> str:
            return f"{s[key]['cogs'][n]['median']:{fmt}} / {s[key]['icp'][n]['median']:{fmt}}"

        rows.append([n, fmt_stat(s["requests_per_s"]["cogs"][n], _int), fmt_stat(s["requests_per_s"]["icp"][n], _int),
                     f"{s['ratio_vs_icp'][n]}x", both("hit_ratio", ".1%"), both("cpu_us_per_request", ",.0f"),
                     both("requests_per_cpu_s", ",.0f")])  # fmt: skip
    md += md_table(["caches", "cogs requests/s", "ICP requests/s", "cogs / ICP", "hit ratio cogs / ICP",
                    "CPU us per request cogs / ICP", "requests per CPU-second cogs / ICP"], rows)  # fmt: skip
    top = max(s["ratio_vs_icp"], key=int)
    md += (
        f"\nAt {top} caches: cogs / ICP throughput {s['ratio_vs_icp'][top]}x (target 1.4x), requests per CPU-second "
        f"{s[f'requests_per_cpu_s_ratio_at_{top}']}x. CPU per request counts the caches and, for cogs, the "
        f"coordinator ({s['coordinator_cpu_us_per_request'][top]['median']} us of it at {top}). "
        f"Errors: {s['errors']}.\n"
    )
    qrows = [[n, q["cogs"]["cpu_us_per_query"]["median"], q["cogs"]["p50_us"]["median"], q["icp"]["siblings"],
              q["icp"]["cpu_us_per_query"]["median"], q["icp"]["p50_us"]["median"]]
             for n, q in s["query_cost"].items()]  # fmt: skip
    md += "\nOne lookup of an object nobody has (asker + answerers' CPU; 16 in flight):\n\n" + md_table(
        ["caches", "cogs CPU us", "cogs p50 us", "ICP siblings asked", "ICP CPU us", "ICP p50 us"], qrows
    )
    return md


def _int(x: float) -> str:
    return f"{x:,.0f}"


def plot(path: Path, data: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    s = data["summary"]
    sizes = [int(n) for n in s["ratio_vs_icp"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for mode, color in (("cogs", "#4a7"), ("icp", "#888")):
        for ax, key in ((a, "requests_per_s"), (b, "requests_per_cpu_s")):
            pts = s[key][mode]
            med = [pts[str(n)]["median"] for n in sizes]
            ax.errorbar(sizes, med, yerr=[[m - pts[str(n)]["min"] for n, m in zip(sizes, med, strict=True)],
                                          [pts[str(n)]["max"] - m for n, m in zip(sizes, med, strict=True)]],
                        marker="o", capsize=3, color=color, label=mode)  # fmt: skip
    a.set_ylabel("requests/s (median)")
    a.set_title("Throughput")
    b.set_ylabel("requests per CPU-second (median)")
    b.set_title("Caches + coordinator CPU")
    for ax in (a, b):
        ax.set_xlabel("caching proxies")
        ax.legend(fontsize=8)
        ax.set_xticks(sizes)
    save_plot(fig, path)
