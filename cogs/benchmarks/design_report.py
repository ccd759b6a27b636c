"""The design bench's Markdown report and plot, from its results document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogs.benchmarks.common import fmt_rate, md_table, pyplot, save_plot
from cogs.benchmarks.harness import stat


def fmt_stat(s: dict[str, Any], fmt: Any = fmt_rate) -> str:
    """``median (min-max, n=N)``."""
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])}, n={s['n']})"


def calibration_line(data: dict[str, Any]) -> str:
    c, e = data["calibration"], data["environment"]
    dirty = " (uncommitted changes)" if e.get("dirty") else ""
    where = lab_line(e)
    return (
        f"Commit `{str(e['commit'])[:12]}`{dirty}, {e['when']}, {e['cpu_model']} x {e['cores']}, Python "
        f"{e['python']}, Redis {e['redis']}, {e['event_loop']}, {e['primaries']} primaries x "
        f"{e['replicas_per_primary']} replicas, AOF {e['aof']}{', QUICK run' if data['quick'] else ''}{where}. "
        f"Calibration, same run: `redis-benchmark -t incr -P 64` {fmt_stat(c['redis_incr_p64_per_s'])}/s; "
        f"PING from Python p50 {c['ping_us']['p50']:.0f} us, p99 {c['ping_us']['p99']:.0f} us.\n"
    )


def lab_line(env: dict[str, Any]) -> str:
    """``, in the lab (...)`` for a lab run, else nothing."""
    p = env.get("placement")
    if not isinstance(p, dict) or p.get("kind") != "lab":
        return ""
    ping = p["ping_mb1_node1_us"]
    return (f", in the lab: --rtt {p['rtt']}, ping middlebox -> node median {ping['median']} us (min {ping['min']}), "
            f"{p['middleboxes']} middlebox hosts")  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    s = data["summary"]
    md = "# Design choices (paper Fig. 10 + Table III)\n\n" + calibration_line(data)
    md += "\n## Trigger updates, end to end (median of the rounds)\n\n"
    rows = []
    for name in dict.fromkeys(r["config"] for r in data["runs"]):
        rs = [r for r in data["runs"] if r["config"] == name]
        r0 = rs[0]
        rate = stat([r["updates_per_s"] for r in rs])
        nf = stat([r["cpu_us_per_item"]["workers"] for r in rs], 2)["median"]
        co = stat([r["cpu_us_per_item"]["coordinator"] for r in rs], 2)["median"]
        rows.append([
            "uniform" if not r0["zipf_s"] else f"Zipf({r0['zipf_s']})", r0["procs"], "on" if r0["aof"] else "off",
            fmt_stat(rate), f"{stat([r['ops_per_update'] for r in rs], 3)['median']:.3f}",
            all(r["final_state_exact"] for r in rs), f"{nf:.2f} + {co:.2f}",
        ])  # fmt: skip
    md += md_table(["popularity", "NF processes", "AOF", "updates/s: median (min-max, n)", "ops/update",
                    "final state exact", "CPU/update NF + coordinator (us)"], rows)  # fmt: skip
    md += (
        f"\nHeadline (Zipf(1.1), 1 NF process): {fmt_stat(s['trigger_updates_per_s'])} updates/s, "
        f"{s['trigger_vs_redis_incr']} x the same run's redis-benchmark INCR; the coordinator applied "
        f"{fmt_stat(s['coordinator_ops_per_s'])} ops/s. Every run's CPU fit in the cores it had "
        "(checked; a run that does not fails the bench).\n"
    )
    md += "\n## NAT (portmap state, 10k Zipf flows, 40% replies)\n\n"
    nat_rows = []
    for key, rate in s["nat_packets_per_s"].items():
        nat_rows.append([key.replace("_", " "), fmt_stat(rate), s["nat_lookups_per_packet"][key]["median"]])
    md += md_table(["mode, state", "packets/s (median, min-max, n)", "lookups/packet"], nat_rows)
    md += (
        f"\nasync / sync (singleton, no request merging): **{s['async_vs_sync_ratio']}x**; with merging "
        f"{s['async_vs_sync_ratio_merged']}x.\n"
    )
    md += "\n## Latencies\n\n"
    md += (
        f"Sync retrieve p50 {s['sync_retrieve_p50_us']:.0f} us, p99 {s['sync_retrieve_p99_us']:.0f} us "
        f"({data['sync_retrieve_samples']} round trips); replica hit {fmt_stat(s['replica_hit_us'], _us)} per "
        f"`await syn_retrieve`, {fmt_stat(s['replica_peek_us'], _us)} per `cached()`.\n\n"
    )
    md += md_table(
        ["holder proxies", "update p50 (us)", "discard p50 (ms)", "discard p99 (ms)", "n"],
        [[f["holders"], f"{f['update_p50_us']:.0f}", f"{f['discard_p50_ms']:.2f}", f"{f['discard_p99_ms']:.2f}",
          f["n"]] for f in data["discard_fanout"]],
    )  # fmt: skip
    met = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in s["targets_met"].items())
    return md + f"\nTargets (on the medians): {met}.\n"


def _us(x: float) -> str:
    return f"{x:.2f} us"


def plot(path: Path, data: dict[str, Any]) -> None:
    plt = pyplot()
    if plt is None:
        return
    s = data["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    labels = list(s["nat_packets_per_s"])
    meds = [s["nat_packets_per_s"][k]["median"] / 1e3 for k in labels]
    err = [[m - s["nat_packets_per_s"][k]["min"] / 1e3 for k, m in zip(labels, meds, strict=True)],
           [s["nat_packets_per_s"][k]["max"] / 1e3 - m for k, m in zip(labels, meds, strict=True)]]  # fmt: skip
    a.bar([k.replace("_", "\n") for k in labels], meds, yerr=err, color="#4a7")
    a.set_ylabel("packets/s (thousands), median")
    a.set_title("NAT")
    a.set_yscale("log")
    a.tick_params(axis="x", labelsize=7)
    zs = s["zipf_sensitivity"]
    names = ["uniform", "0.8", "0.99", "1.1"]
    zm = [zs[k]["updates_per_s"]["median"] / 1e6 for k in names]
    zerr = [[m - zs[k]["updates_per_s"]["min"] / 1e6 for k, m in zip(names, zm, strict=True)],
            [zs[k]["updates_per_s"]["max"] / 1e6 - m for k, m in zip(names, zm, strict=True)]]  # fmt: skip
    b.bar([f"Zipf {k}" if k != "uniform" else k for k in names], zm, yerr=zerr, color="#47a")
    b.axhline(s["redis_incr_p64_per_s"] / 1e6, color="gray", linestyle="--", label="redis-benchmark INCR -P 64")
    b.axhline(s["targets"]["trigger_updates_per_s"] / 1e6, color="red", linestyle=":", label="target")
    b.set_ylabel("trigger updates/s (millions), median")
    b.set_title("Trigger path, 1 NF process")
    b.legend(fontsize=7)
    save_plot(fig, path)
