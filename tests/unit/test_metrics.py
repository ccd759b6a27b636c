"""Statistics dataclasses as Prometheus families: generic over fields, nested ones too."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from cogs.metrics.stats import families, field_docs, metric_kind
from cogs.proxy import ProxyStatistics


@dataclass(frozen=True)
class Cache:
    #: values held right now
    cached_entries: int
    #: lookups answered here
    hits: int = field(default=0, metadata={"metric": "counter"})


@dataclass(frozen=True)
class Stats:
    proxy_id: str
    #: update() calls by the NF
    updates: int
    longest_pause_s: float
    cache: Cache
    #: set once known
    later: int | None = None
    linked: bool = True


class One(Collector):
    def __init__(self, rows: list[tuple[tuple[str, ...], object]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.rows, "t", ["proxy"]))


def _scrape(rows: list[tuple[tuple[str, ...], object]]) -> dict[str, Metric]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(One(rows))
    return {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}


def test_fields_become_families_with_their_docs_and_kinds() -> None:
    a = Stats("a", 40, 1.5, Cache(3, 7))
    b = Stats("b", 2, 0.0, Cache(0, 1), later=9, linked=False)
    fams = _scrape([(("a",), a), (("b",), b)])
    assert set(fams) == {"t_updates", "t_longest_pause_seconds", "t_cache_cached_entries", "t_cache_hits",
                         "t_later", "t_linked"}  # fmt: skip
    ups = fams["t_updates"]
    assert (ups.type, ups.documentation) == ("counter", "update() calls by the NF")
    assert {(s.labels["proxy"], s.value) for s in ups.samples} == {("a", 40.0), ("b", 2.0)}
    assert fams["t_cache_cached_entries"].type == "gauge"
    assert fams["t_cache_hits"].type == "counter"  # declared in metadata
    assert fams["t_longest_pause_seconds"].documentation == "Stats.longest_pause_s"
    later = fams["t_later"]
    assert [(s.labels["proxy"], s.value) for s in later.samples] == [("b", 9.0)]  # None: no sample


def test_every_proxy_statistic_is_classified_and_documented_or_named() -> None:
    docs = field_docs(ProxyStatistics)
    assert docs["updates"] == "update() calls by the NF (trigger path)"
    assert docs["ops_sent"].startswith("ops sent to the coordinator")
    kinds = {f.name: metric_kind(f) for f in fields(ProxyStatistics)}
    assert kinds["updates"] == kinds["errors"] == kinds["discards"] == "counter"
    assert kinds["pending_ops"] == kinds["owned_bytes"] == kinds["cached_entries"] == "gauge"


def test_the_grafana_dashboard_only_queries_metrics_cogs_exports() -> None:
    import json
    import re
    from pathlib import Path

    from cogs.metrics.exporter import CoordinatorView
    from cogs.monitor.collect import NodeView, ProxyView, Snapshot, StateView

    stats = ProxyStatistics(**{f.name: "p" if f.type == "str" else 0 for f in fields(ProxyStatistics)})  # type: ignore[arg-type]
    view = CoordinatorView()
    view.show(
        Snapshot(
            "redis://x", 0.0,
            [NodeView("a:1", "primary", "0-16383", 5, "1M", 3, "v/c", "", 1 << 20, "v", "c")],
            [StateView("s", "direct", "replica", "int", 3, 1, 2)], 1.0,
            [ProxyView("p", "h", "-", 1.0, True, 10.0, 2.0, 0.5, 0, 0, 0)],
        )
    )  # fmt: skip
    exported = {s.name for f in [*families([(("p",), stats)], "cogs_proxy", ["proxy"]), *view.collect()]
                for s in f.samples}  # fmt: skip
    dash = json.loads((Path(__file__).parents[2] / "examples" / "grafana" / "cogs-dashboard.json").read_text())
    queried = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"\bcogs_\w+", t["expr"])}
    assert len(queried) > 15
    assert queried <= exported, queried - exported


def test_the_monitor_reads_statistics_flat_or_nested() -> None:
    from cogs.monitor.collect import _flat

    flat = {"ops_sent": 10, "batches": 2, "errors": 1}
    nested = {"batcher": {"ops_sent": 10, "batches": 2}, "errors": 1, "cache": {"hits": 3}}
    assert _flat(flat) == flat
    assert _flat(nested) == {"ops_sent": 10, "batches": 2, "errors": 1, "hits": 3}
    assert _flat(None) == {}
