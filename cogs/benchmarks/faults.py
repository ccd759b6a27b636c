"""Network faults (issue 20): what survives which fault, proved by histories.

The bench builds a lab of its own (6 nodes: 3 primaries + 3 replicas; middlebox
hosts ``mb1`` and ``mb2``; needs root), forms the cluster with the fault runs'
catalog (:data:`cogs.faults.run.CATALOG`), and runs every scenario of
:mod:`cogs.faults.scenarios` under load: a load process per middlebox host with a
default-mode and a durable-mode proxy (:mod:`cogs.faults.load`), the fault, the
heal, recovery, the final states read back, the histories checked
(:mod:`cogs.faults.check`). Per scenario: acknowledged updates lost (default and
durable, both bounds), applied twice, stale reads past the bound (and within it,
with the oldest value served), calls unanswered within their bound (by kind),
recovery from the heal. Counts add up over rounds; recovery is the median of the
rounds (min, max, n beside it) and the summary's ``max_recovery_s`` the longest.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cogs.benchmarks.common import Progress, noop, write_results
from cogs.benchmarks.faults_report import TARGETS, markdown, plot
from cogs.benchmarks.harness import BenchError, environment, stat


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
    scenario: tuple[str, ...] = (),
) -> dict[str, Any]:
    from cogs.faults.run import CATALOG, STALENESS_BOUND_S, Plan, bounds, run_scenario
    from cogs.faults.scenarios import SCENARIOS
    from cogs.lab import Lab

    if url:
        raise BenchError("the faults bench builds a lab of its own (6 nodes, 2 middlebox hosts): no --url")
    unknown = [s for s in scenario if s not in SCENARIOS]
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(unknown)} (have: {', '.join(SCENARIOS)})")
    names = list(scenario or SCENARIOS)
    n = rounds if rounds is not None else (1 if quick else 3)
    if n < 1:
        raise BenchError(f"rounds must be at least 1 (got {n})")
    plan = Plan.of(quick)
    t0 = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    place = "lab: 6 nodes (3 primaries + 3 replicas), 2 middlebox hosts, one load process each"
    with (
        tempfile.TemporaryDirectory(prefix="cogs-faults-bench-") as d,
        Lab.up(Path(d) / "lab", nodes=6, replicas=1, middleboxes=2, rtt="200us", catalog=CATALOG,
               progress=progress) as lab,
    ):  # fmt: skip
        env = lab.call("mb2", lambda: environment(lab.url, place))
        for r in range(n):
            for i, name in enumerate(names):
                progress(f"round {r + 1}/{n}, scenario {i + 1}/{len(names)}: {name} ({SCENARIOS[name].title})")
                runs[name].append(run_scenario(lab, SCENARIOS[name], plan, Path(d) / f"r{r}", progress))
    from cogs.faults.load import LoadConfig

    b = bounds(LoadConfig(host="", ns="", out="", **plan.load))
    data = results(quick, env, runs, n, plan, time.monotonic() - t0)
    data["bounds"] = {"calls_s": dict(b.calls), "staleness_s": dict(b.staleness),
                      "staleness_bound_s": STALENESS_BOUND_S}  # fmt: skip
    path = write_results("faults", data, markdown(data), out)
    plot(data, path)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _sum(rs: list[dict[str, Any]], k: str) -> int:
    return sum(int(r["figures"][k]) for r in rs)


def scenario_figures(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario over its rounds: counts added up, recovery as median (min-max, n)."""
    rec = [r["figures"]["recovery_s"] for r in rs]
    by_kind: dict[str, int] = {}
    staleness: dict[str, float] = {}
    for r in rs:
        for k, v in r["report"]["unanswered_by_kind"].items():
            by_kind[k] = by_kind.get(k, 0) + v
        for k, v in r["report"]["max_staleness_s"].items():
            staleness[k] = max(staleness.get(k, 0.0), v)
    return {
        "rounds": len(rs),
        "acked_lost_durable": _sum(rs, "acked_lost_durable"),
        "acked_lost_durable_max": _sum(rs, "acked_lost_durable_max"),
        "acked_lost_default": _sum(rs, "acked_lost_default"),
        "acked_lost_default_max": _sum(rs, "acked_lost_default_max"),
        "lost_reported": sum(m["lost_reports"] for r in rs for m in r["report"]["modes"].values()),
        "unreported_loss": any(r["figures"]["unreported_loss"] for r in rs),
        "applied_twice": _sum(rs, "applied_twice"),
        "stale_reads_beyond_bound": _sum(rs, "stale_reads_beyond_bound"),
        "stale_reads_within_bound": sum(r["report"]["stale_within_bound"] for r in rs),
        "max_staleness_s": staleness,
        "reads_judged": sum(r["report"]["reads_judged"] for r in rs),
        "calls": sum(r["report"]["calls"] for r in rs),
        "calls_unanswered": _sum(rs, "calls_unanswered"),
        "calls_unanswered_by_kind": by_kind,
        "alerts_repeated": _sum(rs, "alerts_repeated"),
        "alerts_missing": _sum(rs, "alerts_missing"),
        "alerts_unexpected": _sum(rs, "alerts_unexpected"),
        "alert_keys": sum(r["report"]["alert_keys"] for r in rs),
        "recovery_s": stat([x for x in rec if x is not None], 2) if any(x is not None for x in rec) else None,
        "not_recovered": sum(x is None for x in rec),
        "fault_s": stat([r["fault_s"] for r in rs], 1),
    }


def results(
    quick: bool, env: dict[str, Any], runs: dict[str, list[dict[str, Any]]], rounds: int, plan: Any, took: float
) -> dict[str, Any]:  # fmt: skip
    per = {name: scenario_figures(rs) for name, rs in runs.items()}
    recs = [r["figures"]["recovery_s"] for rs in runs.values() for r in rs]
    summary: dict[str, Any] = {
        "scenarios": len(runs),
        "rounds": rounds,
        "acked_lost_durable": sum(s["acked_lost_durable"] for s in per.values()),
        "acked_lost_default": sum(s["acked_lost_default"] for s in per.values()),
        "applied_twice": sum(s["applied_twice"] for s in per.values()),
        "stale_reads_beyond_bound": sum(s["stale_reads_beyond_bound"] for s in per.values()),
        "calls_unanswered": sum(s["calls_unanswered"] for s in per.values()),
        "max_recovery_s": None if None in recs or not recs else max(recs),
        "not_recovered": sum(s["not_recovered"] for s in per.values()),
        "seconds": round(took, 1),
    }
    summary["targets_met"] = {k: summary[k] is not None and summary[k] <= v for k, v in TARGETS.items()}
    first = {name: rs[0] for name, rs in runs.items()}
    return {
        "bench": "faults", "quick": quick, "environment": env,
        "plan": {"warmup_s": plan.warmup_s, "min_cooldown_s": plan.min_cooldown_s,
                 "max_cooldown_s": plan.max_cooldown_s, "load": plan.load},
        "summary": summary,
        "scenarios": {name: {"number": first[name]["number"], "title": first[name]["title"], **per[name]}
                      for name in runs},
        "runs": runs,
    }  # fmt: skip
