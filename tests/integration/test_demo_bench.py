"""The main demo and the coordinator bench run end to end (no timing asserted here:
timing goals live in bench/)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

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


@pytest.mark.slow
def test_bench_quick_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "coord.json"
    bench_main(quick=True, out=out)
    data = json.loads(out.read_text())
    s = data["summary"]
    for k in ("applied_ops_per_s", "naive_ops_per_s", "pipelined_ops_per_s", "ratio_vs_naive"):
        assert s[k] > 0, k
    # the ratio of the unrounded rates: within rounding of the ratio of the rounded ones
    assert s["ratio_vs_naive"] == pytest.approx(s["applied_ops_per_s"] / s["naive_ops_per_s"], abs=0.051)
    assert {r["states"] for r in data["runs"]} == {1_000, 100_000}
    assert all(r["applied"] == r["ops"] for r in data["runs"])  # every op sent was applied
    assert out.with_suffix(".md").exists()
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_scaling_quick_writes_model(tmp_path: Path) -> None:
    from cogs.benchmarks.scaling import NFS
    from cogs.benchmarks.scaling import main as scaling_main

    out = tmp_path / "scaling.json"
    scaling_main(quick=True, out=out)
    data = json.loads(out.read_text())
    for nf in NFS:
        s = data["summary"][nf]
        assert s["measured_packets_per_s"]["1"] > 0
        assert s["box_cpu_us_per_packet"] > 0
        assert s["coordinator_cpu_us_per_op"] > 0
        assert s["saturation_n"] > 0
    assert {r["alerts"] for r in data["runs"] if r["nf"] == "portscan"} == {4}  # 4 scans, any N
    assert out.with_suffix(".png").exists()


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
