"""Prometheus metrics for real: proxies' statistics and `cogs exporter`, scraped over
HTTP (httpx) from a real cluster and parsed as the exposition format."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import StateTable
from cogs.errors import ConfigError
from cogs.keys import proxy_key, slot
from cogs.library import library_spec
from cogs.ports import free_port_base
from cogs.proxy import StateProxy

pytestmark = pytest.mark.anyio


def _parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fams: dict[str, Any], name: str, **labels: str) -> float:
    """The one sample called ``name`` (a counter's ends in _total) with ``labels``."""
    [v] = [
        s.value
        for f in fams.values()
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == x for k, x in labels.items())
    ]
    return float(v)


def _numeric_fields(stats: Any, prefix: str = "cogs_proxy") -> dict[str, float]:
    out: dict[str, float] = {}
    for f in dataclasses.fields(stats):
        v = getattr(stats, f.name)
        name = f"{prefix}_{f.name[:-2] + '_seconds' if f.name.endswith('_s') else f.name}"
        if dataclasses.is_dataclass(v):
            out.update(_numeric_fields(v, name))
        elif isinstance(v, int | float):
            out[name] = float(v)
    return out


async def test_proxies_serve_their_statistics_on_one_port(cluster: LocalCluster) -> None:
    port = free_port_base(1)
    async with StateProxy(cluster.url, metrics_port=port) as a, StateProxy(cluster.url, metrics_port=port) as b:
        for i in range(40):
            a.update("cnt", f"metrics-{i % 10}", "add", 1)  # 40 updates, 10 keys: coalesced
        await b.syn_retrieve("nat", "metrics-flow")
        await a.flush()
        await b.flush()
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        fams = _parse(r.text)
        for proxy in (a, b):  # every numeric statistic, whatever its shape, with its value
            for name, value in _numeric_fields(proxy.statistics()).items():
                fam = fams[name]
                got = _value(fams, name + ("_total" if fam.type == "counter" else ""), proxy=proxy.id)
                assert got == value, (proxy.id, name)
            assert _value(fams, "cogs_proxy_up", proxy=proxy.id) == 1
        assert _value(fams, "cogs_proxy_updates_total", proxy=a.id) == 40
        assert fams["cogs_proxy_updates"].type == "counter"
        assert fams["cogs_proxy_updates"].documentation == "update() calls by the NF (trigger path)"
        assert fams["cogs_proxy_pending_ops"].type == "gauge"
        assert _value(fams, "cogs_proxy_sync_ops_total", proxy=b.id) == 1
        # the heartbeat says where to scrape each proxy
        async with Coordinator(url=cluster.url) as co:
            assert co.topology is not None
            raw = await co.node_client(co.topology.node_of(slot(a.id))).get(proxy_key(a.id))
            assert raw is not None
            assert json.loads(raw)["metrics"] == f"127.0.0.1:{port}"
    with pytest.raises(httpx.ConnectError):  # closed with its last proxy
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics")


async def test_a_busy_metrics_port_is_a_clear_error(cluster: LocalCluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            async with StateProxy(cluster.url, metrics_port=port):
                pass


def _scrape_until(url: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout  # a wait, not a timing goal
    fams: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            fams = _parse(httpx.get(url, timeout=5).text)
        except httpx.TransportError:
            fams = {}
        if fams and done(fams):
            return fams
        time.sleep(0.2)
    raise AssertionError(f"no scrape satisfied the test; last: {sorted(fams)}")


def _exported(f: dict[str, Any]) -> bool:
    """The exporter shows what the test did: complete counts, a live proxy holding a
    replica, the alerts raised."""
    with contextlib.suppress(ValueError):  # a sample not there yet
        return (
            _value(f, "cogs_state_count_complete") >= 1.0
            and _value(f, "cogs_proxies", status="alive") >= 1
            and _value(f, "cogs_alerts_total", state="hits") >= 3
            and _value(f, "cogs_state_replica_holders", state="nat") >= 1
        )
    return False


async def _work_then_scrape(url: str, metrics: str) -> tuple[str, dict[str, Any], Any]:
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        for i in range(3):
            await table.update("hits", f"exported-{i}", "add", 50)
    async with StateProxy(url, heartbeat_ttl_s=3, metrics_port=0) as p:
        await p.syn_retrieve("nat", "exported-flow")  # a replica holder
        fams = await anyio.to_thread.run_sync(_scrape_until, metrics, _exported)
        async with httpx.AsyncClient() as http:
            sd = (await http.get(metrics.replace("/metrics", "/targets"))).json()
            [mine] = [t for t in sd if t["labels"]["proxy"] == p.id]
            # the address discovered is where this proxy's own metrics are
            own = _parse((await http.get(f"http://{mine['targets'][0]}/metrics")).text)
            assert _value(own, "cogs_proxy_up", proxy=p.id) == 1
        return p.id, fams, sd


def test_exporter_serves_the_coordinators_view(cluster: LocalCluster) -> None:
    port = free_port_base(1)
    cmd = [sys.executable, "-m", "cogs.cli", "exporter", "--url", cluster.url, "--port", str(port), "--interval", "0.3"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        pid, fams, sd = anyio.run(_work_then_scrape, cluster.url, f"http://127.0.0.1:{port}/metrics")
        assert all(set(t) == {"targets", "labels"} for t in sd)
        assert _value(fams, "cogs_up") == 1
        nodes = {s.labels["node"] for s in fams["cogs_node_up"].samples}
        assert nodes == {f"127.0.0.1:{p}" for p in cluster.ports}
        for n in nodes:
            assert _value(fams, "cogs_node_up", node=n, role="primary") == 1
            assert _value(fams, "cogs_node_healthy", node=n) == 1
            assert _value(fams, "cogs_node_memory_bytes", node=n) > 0
            assert _value(fams, "cogs_node_keys", node=n) >= 0
            assert _value(fams, "cogs_node_ops_per_second", node=n) >= 0
        libs = [s.labels for s in fams["cogs_node_library_info"].samples]
        assert {x["library"] for x in libs} == {library_spec().version}
        assert len({x["catalog"] for x in libs}) == 1
        assert _value(fams, "cogs_state_keys", state="hits", **{"class": "trigger"}) >= 3
        assert fams["cogs_alerts"].type == "counter"
        assert _value(fams, "cogs_alert_last_timestamp_seconds", state="hits") > time.time() - 3600
        assert pid in {s.labels["proxy"] for s in fams["cogs_proxy_heartbeat_age_seconds"].samples}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            err = proc.stderr.read() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
    assert proc.returncode == 0, err
    assert f"on http://127.0.0.1:{port}/metrics" in err


def test_exporter_without_a_coordinator_serves_cogs_up_0() -> None:
    port = free_port_base(1)
    nowhere = next(p for p in iter(lambda: free_port_base(1), None) if p != port)
    cmd = [sys.executable, "-m", "cogs.cli", "exporter", "--url", f"redis://127.0.0.1:{nowhere}", "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        fams = _scrape_until(f"http://127.0.0.1:{port}/metrics", lambda f: "cogs_up" in f, timeout=30)
        assert _value(fams, "cogs_up") == 0
        assert "cogs_node_up" not in fams  # nothing made up
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_exporter_stopped_the_moment_it_serves_exits_cleanly() -> None:
    """It serves before its event loop runs: a SIGTERM in between killed it (-15, every
    time when sent as the port first accepts; now and then in the test above on a busy
    box) instead of stopping it (exit 0). The signal is held until its handler is in place."""
    for _ in range(3):
        port, nowhere = free_port_base(1), free_port_base(1)
        cmd = [sys.executable, "-m", "cogs.cli", "exporter", "--url", f"redis://127.0.0.1:{nowhere}", "--port", str(port)]
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.05).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the exporter never served"
                    assert proc.poll() is None, "the exporter ended"
                    time.sleep(0.001)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
