"""Parts of the fault runs that need no lab: load configs, the load's key choice, the
scenario list, the bench's arguments and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cogs.benchmarks.faults import main as bench_main
from cogs.benchmarks.faults import results
from cogs.benchmarks.faults_report import TARGETS, markdown
from cogs.benchmarks.harness import BenchError
from cogs.catalog import Catalog
from cogs.faults import SCENARIO_NAMES
from cogs.faults.load import COUNT, OBJ, REG, Load, LoadConfig
from cogs.faults.run import CATALOG, STALENESS_BOUND_S, THRESHOLD, Plan, bounds
from cogs.faults.scenarios import SCENARIOS
from cogs.keys import escape, slot


def test_the_scenarios_are_issue_20s() -> None:
    assert tuple(SCENARIOS) == SCENARIO_NAMES
    assert sorted({s.number for s in SCENARIOS.values()}) == list(range(1, 8))
    for s in SCENARIOS.values():
        assert 0 < s.quick_hold_s <= s.hold_s
        assert Plan.of(True).hold(s) == s.quick_hold_s


def test_the_catalog_has_the_load_states() -> None:
    cat = Catalog.from_file(CATALOG)
    assert {COUNT, REG, OBJ} <= {st.name for st in cat}
    assert cat.get(COUNT).checker == "threshold"
    assert cat.get(REG).mode == "replica"
    assert cat.get(OBJ).state_class == "indirect"
    assert cat.get(COUNT).params["threshold"] == THRESHOLD


def test_load_config_round_trips_and_refuses_bad_fields() -> None:
    cfg = LoadConfig(host="mb1", ns="n", out="/tmp/x", owner=True, index=1, hosts=2)
    assert LoadConfig.from_json(cfg.to_json()) == cfg
    for bad, why in (({"host": "h", "ns": "n", "out": "o", "speed": 1}, "unknown load config field"),
                     ({"host": "h", "ns": "n", "out": "o", "modes": ["fast"]}, "modes must be among"),
                     ({"host": "h", "ns": "n", "out": "o", "index": 2, "hosts": 2}, "0 <= index < hosts"),
                     ([1], "a JSON object")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            LoadConfig.from_json(json.dumps(bad))


def test_load_refuses_a_bad_config_file_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{"host": "mb1"}')
    r = subprocess.run([sys.executable, "-m", "cogs.faults.load", str(f)], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: load config {f}:")
    assert len(r.stderr.strip().splitlines()) == 1


def test_every_host_picks_the_same_keys_of_one_node(tmp_path: Path) -> None:
    a = Load(LoadConfig(host="mb1", ns="n", out=str(tmp_path / "a")))
    b = Load(LoadConfig(host="mb2", ns="n", out=str(tmp_path / "b")))
    assert a.keys("n|default|r", 4) == ["n|default|r.0", "n|default|r.1", "n|default|r.2", "n|default|r.3"]
    a.slots = b.slots = frozenset(range(5461))  # the first primary's slots
    ka = a.keys("n|default|c7", 6)
    assert ka == b.keys("n|default|c7", 6)
    assert all(slot(escape(k)) < 5461 for k in ka)
    a.rec.close()
    b.rec.close()


def test_bounds_follow_the_settings() -> None:
    b = bounds(LoadConfig(host="h", ns="n", out="o", delivery_timeout_s=4.0, peer_timeout_s=1.0))
    assert b.calls["inc"] == b.calls["add"] == 4.0 + 0.5 + 1.0  # the bound, the watch step, slack
    assert b.calls["oget"] > b.calls["inc"]
    assert b.staleness[REG] == STALENESS_BOUND_S == 3.5  # DEAD_AFTER and a margin
    assert b.staleness[OBJ] == 0.0


def test_the_bench_refuses_a_url_and_unknown_scenarios() -> None:
    with pytest.raises(BenchError, match="builds a lab of its own"):
        bench_main(url="redis://127.0.0.1:7000", quick=True)
    with pytest.raises(BenchError, match="unknown scenario"):
        bench_main(quick=True, scenario=("nope",))


def _run(name: str, **fig: object) -> dict[str, object]:
    figures = {"acked_lost_durable": 0, "acked_lost_durable_max": 0, "acked_lost_default": 0,
               "acked_lost_default_max": 0, "applied_twice": 0, "stale_reads_beyond_bound": 0, "calls_unanswered": 0,
               "recovery_s": 1.5, "unreported_loss": False, "alerts_repeated": 0, "alerts_missing": 0,
               "alerts_unexpected": 0} | fig  # fmt: skip
    report = {"unanswered_by_kind": {"add": 1} if fig.get("calls_unanswered") else {}, "max_staleness_s": {REG: 2.0},
              "modes": {"default": {"lost_reports": 1 if fig.get("acked_lost_default") else 0}},
              "stale_within_bound": 3, "reads_judged": 100, "calls": 1000, "alert_keys": 8}  # fmt: skip
    return {"name": name, "number": SCENARIOS[name].number, "title": SCENARIOS[name].title, "fault_s": 8.0,
            "figures": figures, "report": report}  # fmt: skip


def test_the_summary_adds_rounds_up_and_judges_the_targets() -> None:
    env = {"commit": "abc", "when": "2026-01-01T00:00", "cpu_model": "cpu", "cores": 2, "load_average": [1.0],
           "redis": "7", "placement": "lab"}  # fmt: skip
    runs = {"minority-primary": [_run("minority-primary", acked_lost_default=5, acked_lost_default_max=7,
                                      recovery_s=4.0), _run("minority-primary", recovery_s=6.0)],
            "host-cut": [_run("host-cut", calls_unanswered=1), _run("host-cut", recovery_s=None)]}  # fmt: skip
    data = results(False, env, runs, 2, Plan(), 99.0)
    s = data["summary"]
    assert (s["scenarios"], s["rounds"], s["acked_lost_default"], s["calls_unanswered"]) == (2, 2, 5, 1)
    assert s["max_recovery_s"] is None  # a round that never recovered: no longest recovery to give
    assert s["not_recovered"] == 1
    assert s["targets_met"] == {k: k not in ("calls_unanswered", "max_recovery_s") for k in TARGETS}
    mp = data["scenarios"]["minority-primary"]
    assert mp["recovery_s"] == {"median": 5.0, "min": 4.0, "max": 6.0, "n": 2}
    assert mp["acked_lost_default_max"] == 7
    md = markdown(data)
    assert "5-7 (reported)" in md
    assert "**1** of 2,000 (add 1)" in md
    assert "1.5, 1 not" in md
