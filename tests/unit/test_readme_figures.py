"""The README's benchmark figures are the results files' (`cogs bench readme`), never typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogs.benchmarks.common import RESULTS_DIR
from cogs.benchmarks.readme import blocks, render, rewrite
from cogs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_readme_benchmark_blocks_match_the_results_files() -> None:
    readme = ROOT / "README.md"
    assert {"design", "coordinator", "scaling", "webcache", "indirect", "soak"} <= set(blocks(readme.read_text()))
    _, changed = rewrite(readme, ROOT / RESULTS_DIR, ROOT)
    assert changed == [], f"README blocks {changed} differ from bench/results: run `cogs bench readme`"


SOAK = {"seconds": 25.0, "updates": 1000, "updates_per_s": 40.0, "proxies_joined": 6, "proxies_left": 4, "lost": 0,
        "applied_twice": 0, "alerts_missing": 0, "alerts_unexpected": 0, "alerts_repeated": 0,
        "redis_mb_growth": 0.01, "proxy_rss_mb_growth": -0.02}  # fmt: skip


def test_blocks_are_rendered_from_the_full_run_else_the_quick_one(tmp_path: Path) -> None:
    results = tmp_path / "bench" / "results"
    (results / "quick").mkdir(parents=True)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:soak -->\nhand-typed 99x\n<!-- /bench:soak -->\nafter\n")
    text, changed = rewrite(readme, results, tmp_path)
    assert changed == ["soak"]
    assert "No results yet: run `cogs bench soak`" in text
    (results / "quick" / "soak.json").write_text(json.dumps({"quick": True, "summary": SOAK}))
    text, _ = rewrite(readme, results, tmp_path)
    assert "From `bench/results/quick/soak.json`" in text
    assert "1,000 updates" in text
    assert "hand-typed" not in text
    assert text.startswith("intro\n<!-- bench:soak -->\n")
    assert text.endswith("<!-- /bench:soak -->\nafter\n")
    readme.write_text(text)
    assert rewrite(readme, results, tmp_path)[1] == []  # current: nothing to change
    (results / "soak.json").write_text(json.dumps({"quick": False, "summary": {**SOAK, "updates": 2000}}))
    assert "2,000 updates" in render("soak", results, tmp_path)
    readme.write_text("<!-- bench:nosuch -->\n<!-- /bench:nosuch -->\n")
    with pytest.raises(ConfigError, match="bench:nosuch: no such bench"):
        rewrite(readme, results, tmp_path)
