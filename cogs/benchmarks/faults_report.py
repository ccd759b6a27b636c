"""The faults bench's Markdown, README block and plot (cogs/benchmarks/faults.py measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cogs.benchmarks.common import md_table, pyplot, save_plot

#: issue 20's targets: the summary figure -> its largest acceptable value
TARGETS = {
    "acked_lost_durable": 0,
    "applied_twice": 0,
    "calls_unanswered": 0,
    "stale_reads_beyond_bound": 0,
    "max_recovery_s": 10.0,
}


def _rec(s: dict[str, Any]) -> str:
    r = s["recovery_s"]
    if r is None:
        return "not recovered"
    shown = f"{r['median']:.1f}" if r["n"] == 1 else f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}, n={r['n']})"
    return shown + (f", {s['not_recovered']} not" if s["not_recovered"] else "")


def _late(s: dict[str, Any]) -> str:
    if not s["calls_unanswered"]:
        return f"0 of {s['calls']:,}"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["calls_unanswered_by_kind"].items()))
    return f"**{s['calls_unanswered']}** of {s['calls']:,} ({kinds})"


def _alerts(s: dict[str, Any]) -> str:
    odd = [f"{s[k]} {k.split('_')[1]}" for k in ("alerts_repeated", "alerts_missing", "alerts_unexpected") if s[k]]
    return f"{', '.join(odd)} of {s['alert_keys']}" if odd else f"1 each ({s['alert_keys']} keys)"


def table(data: dict[str, Any]) -> str:
    rows = []
    for name, s in data["scenarios"].items():
        stale = f"{s['stale_reads_beyond_bound']} / {s['stale_reads_within_bound']}"
        age = max(s["max_staleness_s"].values(), default=0.0)
        lost = f"{s['acked_lost_default']}-{s['acked_lost_default_max']}"
        rows.append([
            s["number"], f"`{name}`: {s['title']}", f"{s['fault_s']['median']:.0f}",
            f"{s['acked_lost_durable']}", lost + (" (reported)" if s["lost_reported"] else ""),
            s["applied_twice"], f"{stale} ({age:.1f} s)", _late(s), _alerts(s), _rec(s),
        ])  # fmt: skip
    heads = ["#", "fault", "fault s", "acked lost, durable", "acked lost, default", "applied twice",
             "stale reads past / within bound (oldest)", "calls unanswered in bound", "alerts",
             "recovery s"]  # fmt: skip
    return md_table(heads, rows)


def verdict(data: dict[str, Any]) -> str:
    s = data["summary"]
    missed = [k for k, ok in s["targets_met"].items() if not ok]
    b = data.get("bounds", {})
    return (
        f"Summary over {s['scenarios']} scenarios x {s['rounds']} round(s): acknowledged updates lost durable "
        f"**{s['acked_lost_durable']}**, default {s['acked_lost_default']}; applied twice **{s['applied_twice']}**; "
        f"stale reads past the bound **{s['stale_reads_beyond_bound']}**; calls unanswered within their bound "
        f"**{s['calls_unanswered']}**; longest recovery **{s['max_recovery_s']}** s. Targets missed: "
        f"{', '.join(missed) or 'none'}. Replica reads were held to {_replica_bound(b)} s past a write "
        "acknowledged elsewhere; indirect values are read at their owner (bound 0).\n"
    )


def _replica_bound(b: dict[str, Any]) -> Any:
    """The bound the checker held replica reads to in that run (older runs: their own)."""
    held = [v for v in b.get("staleness_s", {}).values() if v]
    return max(held) if held else b.get("staleness_bound_s", "?")


def _about(data: dict[str, Any]) -> str:
    e = data["environment"]
    kind = "a QUICK run (1 round, faults of 2-12 s)" if data["quick"] else "a full run"
    return (
        f"{kind}: commit `{str(e['commit'])[:10]}`, {e['when'][:16]}, {e['cpu_model']} x {e['cores']} (load average "
        f"{e['load_average'][0] if e.get('load_average') else '?'}), Redis {e['redis']}, {e['placement']}; "
        f"{data['summary']['seconds']:.0f} s.\n\n"
    )


def markdown(data: dict[str, Any]) -> str:
    return "# Network faults: what survives what\n\n" + _about(data) + table(data) + "\n" + verdict(data)


def readme_block(data: dict[str, Any]) -> str:
    """The README's figure block (``<!-- bench:faults -->``)."""
    return _about(data)[0].upper() + _about(data)[1:] + table(data) + "\n" + verdict(data)


def plot(data: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    names = list(data["scenarios"])
    s = [data["scenarios"][n] for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    med = [x["recovery_s"]["median"] if x["recovery_s"] else 0 for x in s]
    lo = [m - x["recovery_s"]["min"] if x["recovery_s"] else 0 for m, x in zip(med, s, strict=True)]
    hi = [x["recovery_s"]["max"] - m if x["recovery_s"] else 0 for m, x in zip(med, s, strict=True)]
    a.bar(names, med, yerr=[lo, hi], color="#4c72b0", capsize=3)
    a.axhline(TARGETS["max_recovery_s"], color="#c44e52", ls="--", label="target")
    a.set_ylabel("recovery after the heal (s)")
    a.legend()
    x = range(len(names))
    b.bar([i - 0.2 for i in x], [v["acked_lost_durable"] for v in s], 0.4, label="durable", color="#55a868")
    b.bar([i + 0.2 for i in x], [v["acked_lost_default"] for v in s], 0.4, label="default", color="#dd8452")
    b.set_xticks(list(x), names)
    b.set_ylabel("acknowledged updates lost")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=40)
    fig.suptitle("cogs under network faults" + (" (quick)" if data["quick"] else ""))
    save_plot(fig, path)
