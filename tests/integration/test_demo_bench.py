"""The main demo and the coordinator bench run end to end (no timing asserted here:
timing goals live in bench/)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cogs.benchmarks.coordinator import main as bench_main
from cogs.demo import run_demo
from tests.conftest import Standalone, load_default_catalog


@pytest.mark.slow
def test_demo_global_state_catches_split_attacks(standalone: Standalone) -> None:
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    shown, said = io.StringIO(), io.StringIO()
    out = run_demo(standalone.url, 4, Console(file=shown, width=200), Console(file=said, width=200))
    text, progress = shown.getvalue(), said.getvalue()
    expected = Counter(t["nf"] for t in out["truth"])
    # the header's counts are the ground truth's, as the table's are
    assert f"{expected['portscan']} portscan alerts (one per scanner), {expected['dnstunnel']} dnstunnel" in text
    for nf in ("portscan", "dnstunnel", "sidejack"):
        assert re.search(rf"\b{nf}\W+{expected[nf]}\W", text), nf
        for label in ("with cogs", "local state only"):  # a line per step while it works
            assert f"{nf} {label}: " in progress, (nf, label)
    assert "still running" in text
    assert f"alerts --url {standalone.url}" in text
    assert "cluster down" in text
    assert "ALERT dnstunnel" in text
    assert ">= 50%" in text  # alerts say why they fired
    for nf, res in out["nfs"].items():
        want = {t["key"] for t in out["truth"] if t["nf"] == nf}
        assert {a["key"] for a in res["global"]} == want, nf
    local = {a["key"] for res in out["nfs"].values() for a in res["local"]}
    scanners = {t["key"] for t in out["truth"] if t["nf"] == "portscan"}
    assert not scanners & local  # no box alone saw enough of a scan


def _common(data: dict[str, Any], out: Path) -> dict[str, Any]:
    """What every bench's results carry: median headlines, runs, environment, calibration."""
    s: dict[str, Any] = data["summary"]
    assert len(data["environment"]["commit"]) >= 7
    assert data["environment"]["primaries"] == 3
    assert data["environment"]["event_loop"] in ("uvloop", "asyncio")
    assert s["redis_incr_p64_per_s"] > 0
    assert data["calibration"]["redis_incr_p64_per_s"]["n"] >= 1
    assert 0 < s["ping_p50_us"] <= s["ping_p99_us"]
    assert data["runs"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(data))
    assert out.with_suffix(".md").read_text().startswith("# ")
    return s


def _median(x: dict[str, Any]) -> float:
    assert set(x) == {"median", "min", "max", "n"}
    assert x["min"] <= x["median"] <= x["max"]
    return float(x["median"])


@pytest.mark.slow
def test_bench_coordinator_smoke(tmp_path: Path) -> None:
    out = tmp_path / "coord.json"
    s = _common(bench_main(quick=True, out=out, rounds=1), out)
    assert _median(s["applied_ops_per_s"]) > 0
    assert s["applied_vs_redis_incr"] == pytest.approx(s["applied_ops_per_s"]["median"] / s["redis_incr_p64_per_s"],
                                                       rel=0.01)  # fmt: skip
    assert set(s["applied_ops_per_s_by_states"]) == {"1000", "100000"}
    assert set(s["applied_ops_per_s_by_op"]) == {"int_add", "set_add", "get"}
    assert _median(s["redis_py_pipelined_ops_per_s"]) > 0
    assert s["read_back_exact"] is True
    assert s["physically_possible"] is True
    data = json.loads(out.read_text())
    assert all(r["applied"] == r["ops"] for r in data["runs"])  # every op sent was applied
    assert [c["mismatches"] for c in data["read_back"]] == [0, 0, 0]
    mixes = [r for r in data["runs"] if r["client"] == "cogs" and r["mix"] == "mix"]
    assert {r["states"] for r in mixes} == {1_000, 100_000}
    assert all(r["cores_busy"] <= r["cores"] + 0.05 for r in data["runs"])


@pytest.mark.slow
def test_bench_design_smoke(tmp_path: Path) -> None:
    from cogs.benchmarks.design import main as design_main

    out = tmp_path / "design.json"
    s = _common(design_main(quick=True, out=out, rounds=1), out)
    assert _median(s["trigger_updates_per_s"]) > 0
    assert s["trigger_final_state_exact"] is True
    assert 0 < _median(s["ops_per_update"]) <= 1
    assert _median(s["coordinator_ops_per_s"]) > 0
    assert set(s["zipf_sensitivity"]) == {"0.8", "0.99", "1.1", "uniform"}
    # merging off: one lookup per packet on the singleton state; on: fewer
    assert s["nat_lookups_per_packet"]["async_unmerged_singleton"]["median"] == pytest.approx(1.0, abs=0.01)
    assert s["nat_lookups_per_packet"]["async_singleton"]["median"] < 1.0
    assert s["async_vs_sync_ratio"] == pytest.approx(
        s["nat_packets_per_s"]["async_unmerged_singleton"]["median"]
        / s["nat_packets_per_s"]["sync_singleton"]["median"],
        abs=0.06,
    )
    assert _median(s["replica_hit_us"]) > 0
    assert s["physically_possible"] is True


@pytest.mark.slow
def test_bench_scaling_smoke(tmp_path: Path) -> None:
    from cogs.benchmarks.scaling import NFS
    from cogs.benchmarks.scaling import main as scaling_main

    out = tmp_path / "scaling.json"
    s = _common(scaling_main(quick=True, out=out, rounds=1), out)
    assert s["physically_possible"] is True
    for nf in NFS:
        assert set(s[nf]["packets_per_s"]) == {"1", "2", "4"}
        assert _median(s[nf]["per_box_packets_per_cpu_s"]["1"]) > 0
        assert s[nf]["model"]["kind"].startswith("model")
    for nf in ("portscan", "dnstunnel", "sidejack"):
        assert s[nf]["alerts_exact"] is True  # each pass alerts on exactly the trace's attacks, any N
    for r in json.loads(out.read_text())["runs"]:
        assert min(b["t_end"] for b in r["boxes"]) - max(b["t_start"] for b in r["boxes"]) > 0  # they overlapped
        assert r["wall_s"] >= 1.0  # every box worked its second
        assert sum(b["cpu_s"] for b in r["boxes"]) <= r["cores"] * r["wall_s"]


@pytest.mark.slow
def test_bench_webcache_smoke(tmp_path: Path) -> None:
    from cogs.benchmarks.webcache import main as webcache_main

    out = tmp_path / "webcache.json"
    s = _common(webcache_main(quick=True, out=out, rounds=1), out)
    for mode in ("cogs", "icp"):
        assert _median(s["requests_per_s"][mode]["3"]) > 0
        assert _median(s["requests_per_cpu_s"][mode]["3"]) > 0
        assert 0.4 < s["hit_ratio"][mode]["3"]["median"] < 0.8  # offered: 60%
    assert s["errors"] == 0
    assert s["query_cost"]["3"]["icp"]["siblings"] == 3
    assert _median(s["query_cost"]["3"]["cogs"]["cpu_us_per_query"]) > 0
    modes = [r["mode"] for r in json.loads(out.read_text())["runs"] if r["instances"] == 3]
    assert modes == ["cogs", "icp"]  # alternated, one round


@pytest.mark.slow
def test_soak_quick_loses_nothing(tmp_path: Path) -> None:
    from cogs.benchmarks.soak import main as soak_main

    s = soak_main(quick=True, out=tmp_path / "soak.json")["summary"]
    assert s["proxies_joined"] >= 5
    assert s["proxies_left"] >= 3
    assert s["lost"] == 0
    assert s["applied_twice"] == 0
    assert s["alerts_expected"] >= 1
    assert s["alerts_missing"] == s["alerts_unexpected"] == s["alerts_repeated"] == 0
    assert s["redis_mb_growth"] < 0.5  # levelled off, not growing with time
    assert s["proxy_rss_mb_growth"] < 0.5
