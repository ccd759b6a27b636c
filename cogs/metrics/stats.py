"""A statistics dataclass as Prometheus metric families, generically.

Every numeric field becomes a family ``<prefix>_<field>`` (a nested dataclass adds
its field name to the prefix), a counter or a gauge by :func:`metric_kind`, with the
field's ``#:`` comment as its HELP. So a field added to ``ProxyStatistics`` (or to a
component's statistics it composes) is exported without touching this module; only a
new *gauge* should be named in ``GAUGES`` (or declared with
``field(metadata={"metric": "gauge"})``), as anything unknown is exported as a gauge
too but a counter is what ``rate()`` wants.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: fields that go up and down (levels, sizes); read as a gauge
GAUGES = frozenset(
    {
        "cached_entries", "pending_ops", "inflight_ops", "pending_packets", "longest_pause_s", "owned", "owned_bytes",
        "unconfirmed_batches", "stalled_channels",
    }
)  # fmt: skip
#: fields that only grow while the proxy lives (events); read as a counter
COUNTERS = frozenset(
    {
        "updates", "coalesced", "ops_sent", "ops_applied", "batches", "sync_ops", "async_ops", "cache_hits",
        "cache_misses", "discards", "cache_drops", "expired_reads", "errors", "backpressure", "rerouted",
        "resent_batches", "outages", "evicted", "stale_locators", "indirect_local_hits", "remote_ops",
        "locator_lookups", "peer_served", "collapsed_reads", "gaps", "lost_batches", "lost_ops", "overdue_batches",
        "callback_errors", "lease_checks", "lease_lost", "bad_discards",
        "cache_releases", "discard_links_lost",
    }
)  # fmt: skip
_FIELD = re.compile(r"^\s*(\w+)\s*:")


@functools.cache
def field_docs(cls: type[Any]) -> dict[str, str]:
    """The ``#:`` comment lines just above each field of dataclass ``cls`` (Sphinx's
    convention), joined; a field without one is absent. A class composed of parts
    (``PARTS``, as ProxyStatistics) takes its parts' docs too."""
    merged: dict[str, str] = {}
    for part in getattr(cls, "PARTS", ()):
        merged.update(field_docs(part))
    return merged | _own_docs(cls)


def _own_docs(cls: type[Any]) -> dict[str, str]:
    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):  # no source (a frozen app): HELP falls back to the name
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines[1:]:
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = _FIELD.match(line)
        if m and pending:
            docs[m[1]] = " ".join(pending)
        pending = []
    return docs


def metric_kind(f: dataclasses.Field[Any]) -> str:
    """ "counter" or "gauge" for a field: its metadata, else the tables, else gauge."""
    declared = f.metadata.get("metric")
    if declared in ("counter", "gauge"):
        return str(declared)
    return "counter" if f.name in COUNTERS and f.name not in GAUGES else "gauge"


def _metric_name(prefix: str, name: str) -> str:
    if name.endswith("_s"):  # Prometheus base units: seconds, spelt out
        name = name[:-2] + "_seconds"
    return f"{prefix}_{name}"


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, str, str, float]]:
    """(metric name, kind, help, value) of each numeric field, nested ones included."""
    cls = obj.__class__
    docs = field_docs(cls)
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        doc = docs.get(f.name) or f"{cls.__name__}.{f.name}"  # undocumented: at least where it comes from
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from _walk(v, f"{prefix}_{f.name}")
        elif isinstance(v, bool):
            yield _metric_name(prefix, f.name), "gauge", doc, float(v)
        elif isinstance(v, int | float):
            yield _metric_name(prefix, f.name), metric_kind(f), doc, float(v)
        # text (ids), None (not known yet) and containers are no samples


def families(rows: Iterable[tuple[Sequence[str], Any]], prefix: str, label_names: Sequence[str]) -> list[Metric]:
    """One family per numeric field of the dataclasses in ``rows`` (each with its
    label values), in field order."""
    out: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for labels, stats in rows:
        for name, kind, doc, value in _walk(stats, prefix):
            fam = out.get(name)
            if fam is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam = out[name] = cls(name, doc, labels=list(label_names))
            fam.add_metric(list(labels), value)
    return list(out.values())
