"""``cogs exporter``: the coordinator's view for Prometheus.

What ``cogs monitor`` collects (:mod:`cogs.monitor.collect`, read-only, the
``cogs-monitor`` ACL user is enough), refreshed every ``interval`` seconds in the
background; a scrape serves the latest snapshot, so a slow or unreachable coordinator
never stalls Prometheus (``cogs_up`` and ``cogs_exporter_snapshot_age_seconds`` say
how fresh it is). Alerts are counted per state from the stored streams at start, then
live (``cogs_alerts_total``: alerts this exporter has seen, stored ones included).
``/targets`` lists the proxies that serve their own metrics, for Prometheus' HTTP
service discovery. Several NFs on one cluster are told apart by the ``nf`` label.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cogs.alerts import Alert
from cogs.monitor import watch
from cogs.monitor.collect import Snapshot
from cogs.settings import CogsSettings


class CoordinatorView(Collector):
    """The latest Snapshot and the alert counts, as metric families."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.took_s = 0.0
        self.alerts: Counter[tuple[str, str]] = Counter()  # (nf, state)
        self.last_alert: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._t0 = 0.0

    # -- fed by the watch loop (event loop thread) -------------------------------------

    def show(self, snap: Snapshot) -> bool:
        now = time.monotonic()
        with self._lock:
            self.took_s = now - self._t0 if self._t0 else 0.0
            self.snapshot = snap
        self._t0 = now
        return True

    def alert(self, a: Alert) -> None:
        k = (a.nf, a.state)
        with self._lock:
            self.alerts[k] += 1
            self.last_alert[k] = max(self.last_alert.get(k, 0.0), a.time_ms / 1000)

    # -- read by the HTTP server (its thread) ------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap, alerts, last = self.snapshot, dict(self.alerts), dict(self.last_alert)
        up = GaugeMetricFamily("cogs_up", "1 if the coordinator answered at the last refresh")
        up.add_metric([], 0.0 if snap is None or snap.problem else 1.0)
        yield up
        age = GaugeMetricFamily("cogs_exporter_snapshot_age_seconds", "time since the snapshot served was taken")
        age.add_metric([], time.time() - snap.time if snap else float("nan"))
        yield age
        if snap is None or snap.problem:
            return
        yield from _nodes(snap)
        yield from _nfs(snap)
        yield from _states(snap)
        yield from _proxies(snap)
        doc = "alerts raised, by NF and state (the stored ones at the exporter's start, then live)"
        total = CounterMetricFamily("cogs_alerts", doc, labels=["nf", "state"])
        latest = GaugeMetricFamily("cogs_alert_last_timestamp_seconds", "when the latest alert of a state was raised",
                                   labels=["nf", "state"])  # fmt: skip
        for k in sorted(set(alerts) | {(s.nf, s.name) for s in snap.states}):
            total.add_metric(list(k), float(alerts.get(k, 0)))
            if k in last:
                latest.add_metric(list(k), last[k])
        yield total
        yield latest


def _g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _nodes(snap: Snapshot) -> Iterator[Metric]:
    up = _g("cogs_node_up", "1 if the node answered (role: primary, replica or down)", ["node", "role"])
    healthy = _g("cogs_node_healthy", "1 if the node answered and is neither failing nor loading", ["node"])
    ops = _g("cogs_node_ops_per_second", "commands per second (Redis instantaneous_ops_per_sec)", ["node"])
    mem = _g("cogs_node_memory_bytes", "memory used (Redis used_memory)", ["node"])
    keys = _g("cogs_node_keys", "keys in the node's database", ["node"])
    lib = _g("cogs_node_library_info", "the cogs library version and catalog digest a primary runs, per NF",
             ["node", "nf", "library", "catalog"])  # fmt: skip
    for n in snap.nodes:
        up.add_metric([n.addr, n.role], 0.0 if n.role == "down" else 1.0)
        healthy.add_metric([n.addr], 0.0 if n.role == "down" or n.problem else 1.0)
        if n.ops_per_sec is not None:
            ops.add_metric([n.addr], float(n.ops_per_sec))
        if n.memory_bytes is not None:
            mem.add_metric([n.addr], float(n.memory_bytes))
        if n.keys is not None:
            keys.add_metric([n.addr], float(n.keys))
        for nf, version, digest in n.libraries:
            lib.add_metric([n.addr, nf, version, digest], 1.0)
    yield from (up, healthy, ops, mem, keys, lib)


def _nfs(snap: Snapshot) -> Iterator[Metric]:
    up = _g("cogs_nf_up", "1 if the NF's library answered (0: not loaded or unreadable)", ["nf"])
    limit = _g("cogs_nf_ops_limit_per_second", "the NF's ops-rate limit per primary (absent: none)", ["nf"])
    max_keys = _g("cogs_nf_max_keys", "the NF's max_keys per primary (absent: none)", ["nf"])
    max_mem = _g("cogs_nf_max_memory_bytes", "the NF's max_memory per primary (absent: none)", ["nf"])
    keys = _g("cogs_nf_usage_keys", "the NF's state entries on a primary (keeper's count + new)", ["nf", "node"])
    size = _g("cogs_nf_usage_bytes", "the NF's bytes on a primary (keeper's count + created since)", ["nf", "node"])
    age = _g("cogs_nf_usage_age_seconds", "how old the keeper's count is (absent: never counted)", ["nf", "node"])
    for n in snap.nfs:
        up.add_metric([n.nf], 0.0 if n.problem else 1.0)
        if n.ops_per_s:
            limit.add_metric([n.nf], float(n.ops_per_s))
        if n.max_keys:
            max_keys.add_metric([n.nf], float(n.max_keys))
        if n.max_memory:
            max_mem.add_metric([n.nf], float(n.max_memory))
        for u in n.usage:
            keys.add_metric([n.nf, u.node], float(u.keys))
            size.add_metric([n.nf, u.node], float(u.bytes))
            if u.age_s is not None:
                age.add_metric([n.nf, u.node], u.age_s)
    yield from (up, limit, max_keys, max_mem, keys, size, age)


def _states(snap: Snapshot) -> Iterator[Metric]:
    values = _g("cogs_state_keys", "values of a state (for indirect states: locators) at the last complete count",
                ["nf", "state", "class", "mode", "type"])  # fmt: skip
    entries = _g("cogs_state_replica_entries", "keys with replica holders (replica reference table entries)",
                 ["nf", "state"])  # fmt: skip
    holders = _g("cogs_state_replica_holders", "replicas held by proxies (members of those entries)", ["nf", "state"])
    for s in snap.states:
        values.add_metric([s.nf, s.name, s.state_class, s.mode, s.type], float(s.values))
        if s.mode == "replica":
            entries.add_metric([s.nf, s.name], float(s.replica_entries))
            holders.add_metric([s.nf, s.name], float(s.holders))
    done = _g("cogs_state_count_complete", "share of the key count pass done (1: the counts are complete)", [])
    done.add_metric([], snap.scan_done)
    yield from (values, entries, holders, done)


def _proxies(snap: Snapshot) -> Iterator[Metric]:
    alive = _g("cogs_proxies", "proxies registered in the last minute, alive, lost (heartbeat expired), "
               "unreadable (a heartbeat or id no proxy writes) or not_shown (past the latest 1000), per NF",
               ["nf", "status"])  # fmt: skip
    left_out = {n.nf: n.proxies_unreadable for n in snap.nfs}  # index entries that name no proxy
    not_shown = {n.nf: n.proxies_not_shown for n in snap.nfs}
    for nf in sorted({n.nf for n in snap.nfs if not n.problem} | {p.nf for p in snap.proxies}):
        mine = [p for p in snap.proxies if p.nf == nf]
        alive.add_metric([nf, "alive"], float(sum(p.alive for p in mine)))
        alive.add_metric([nf, "lost"], float(sum(not p.alive and not p.problem for p in mine)))
        alive.add_metric([nf, "unreadable"], float(sum(bool(p.problem) for p in mine) + left_out.get(nf, 0)))
        alive.add_metric([nf, "not_shown"], float(not_shown.get(nf, 0)))
    age = _g("cogs_proxy_heartbeat_age_seconds", "time since a live proxy's last heartbeat", ["nf", "proxy", "host"])
    rate = _g("cogs_proxy_heartbeat_ops_per_second", "ops a proxy sent per second, between its last two heartbeats",
              ["nf", "proxy"])  # fmt: skip
    for p in snap.proxies:
        if p.alive:
            age.add_metric([p.nf, p.id, p.host], p.age_s)
            if p.ops_per_sec is not None:
                rate.add_metric([p.nf, p.id], p.ops_per_sec)
    yield from (alive, age, rate)


#: what a proxy's metrics address must look like to be a target: host:port, [v6]:port
_TARGET = re.compile(r"(?:[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


def targets(view: CoordinatorView) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery (``http_sd_configs``): the live proxies that
    serve metrics, one target group each, labelled with the proxy id and host. The
    address is the proxy's word (its heartbeat): one that is no host:port is left out."""
    snap = view.snapshot
    if snap is None:
        return []
    return [{"targets": [p.metrics], "labels": {"proxy": p.id, "host": p.host, "nf": p.nf}}
            for p in snap.proxies if p.alive and _TARGET.fullmatch(p.metrics)]  # fmt: skip


def registry(view: CoordinatorView) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(view)
    return reg


async def run(settings: CogsSettings, view: CoordinatorView, interval: float, nfs: Sequence[str] | None = None) -> None:
    """Feed ``view`` until cancelled (reconnecting by itself, as the monitor does);
    ``nfs``: the NFs to export (default: every one loaded)."""
    await watch(settings, deque(maxlen=1), view.show, interval=interval, on_alert=view.alert, all_history=True,
                nfs=nfs)  # fmt: skip
