"""`cogs monitor` against real clusters: what it shows with proxies at work, with a
node down and with no coordinator at all; and once in tmux, as a person sees it."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from click.testing import CliRunner
from rich.console import Console

from cogs.alerts import Alert
from cogs.catalog import Catalog
from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import StateTable
from cogs.keys import PROXY_INDEX, proxy_key, slot
from cogs.monitor import Snapshot, watch
from cogs.monitor.render import render
from cogs.ports import free_port_base
from cogs.proxy import StateProxy
from cogs.settings import load_settings
from tests.conftest import _load

SECRET = "monitor-test-secret"


def _text(snap: Snapshot, alerts: list[Alert]) -> str:
    console = Console(record=True, width=170, file=io.StringIO())
    console.print(render(snap, alerts))
    return console.export_text()


def _watch_until(
    url: str, done: Callable[[Snapshot, deque[Alert]], bool], timeout: float = 20
) -> tuple[Snapshot, list[Alert]]:
    """Snapshots every 0.2 s until ``done`` holds (or the timeout: the last one)."""
    alerts: deque[Alert] = deque(maxlen=20)
    last: list[Snapshot] = []
    deadline = time.monotonic() + timeout

    def show(snap: Snapshot) -> bool:
        last[:] = [snap]
        return not done(snap, alerts) and time.monotonic() < deadline

    anyio.run(lambda: watch(load_settings(url=url), alerts, show, interval=0.2))
    return last[0], list(alerts)


def test_monitor_shows_nodes_states_proxies_and_alerts(cluster: LocalCluster) -> None:
    url = cluster.url
    snaps: list[tuple[Snapshot, list[Alert]]] = []

    async def go() -> None:
        async with (
            StateProxy(
                settings=load_settings(url=url, peer_timeout_s=0.5), peer_secret=SECRET, heartbeat_ttl_s=1.5
            ) as a,
            StateProxy(url) as b,
        ):
            for i in range(40):
                a.update("cnt", f"mon-{i}", "add", 1)
            for port in range(5):  # over the cardinality threshold of 3: one alert
                b.update("ports", "mon-scanner", "add", str(port))
            await a.flush()
            await b.flush()
            await a.syn_up("objects", "http://mon/x", "create", b"body")
            assert await b.syn_retrieve("nat", "mon-flow") is None  # b becomes a holder of nat[mon-flow]
            await anyio.sleep(1.2)  # a's next heartbeat carries its ops/s

            def done(s: Snapshot, al: deque[Alert]) -> bool:
                ids = {p.id for p in s.proxies if p.alive}
                return s.scan_done >= 1.0 and {a.id, b.id} <= ids and any(x.key == "mon-scanner" for x in al)

            snaps.append(await anyio.to_thread.run_sync(_watch_until, url, done))
            ids = (a.id, b.id)
        # closed proxies leave the index at once
        snap, _ = await anyio.to_thread.run_sync(_watch_until, url, lambda s, _al: s.scan_done >= 1.0)
        assert not {p.id for p in snap.proxies} & set(ids)

    anyio.run(go)
    snap, alerts = snaps[0]
    assert not snap.problem
    assert {n.addr for n in snap.nodes} == {f"127.0.0.1:{p}" for p in cluster.ports}
    assert all(n.role == "primary" and not n.problem for n in snap.nodes)
    assert sorted(n.slots for n in snap.nodes) == ["0-5460", "10922-16383", "5461-10921"]
    assert all(n.library.count("/") == 1 and n.keys is not None and n.keys > 0 for n in snap.nodes)
    states = {s.name: s for s in snap.states}
    assert states["cnt"].values >= 40
    assert states["ports"].values >= 1
    assert states["objects"].values >= 1  # a locator in the state reference table
    assert states["nat"].replica_entries >= 1  # b in the replica reference table
    assert states["nat"].holders >= 1
    proxies = {p.id: p for p in snap.proxies}
    pa = next(p for p in proxies.values() if p.peer != "-")  # only a serves indirect states
    assert pa.ops_per_sec is not None
    assert pa.batch_size > 0
    text = _text(snap, alerts)
    for must in ("cluster: 3 nodes", "counts complete", "0-5460", "mon-scanner", "cardinality", *proxies):
        assert must in text, must


def test_monitor_once_shows_the_stored_alerts_and_json_for_scripts(cluster: LocalCluster) -> None:
    async def raise_alert() -> None:
        async with Coordinator(url=cluster.url) as co:
            table = await StateTable.open(co)
            await table.update("hits", "once-key", "add", 33)

    anyio.run(raise_alert)
    r = CliRunner().invoke(main, ["monitor", "--once", "--url", cluster.url, "--alerts", "100"])
    assert r.exit_code == 0, r.output
    assert "hits[once-key]: 33 >= 10" in r.output  # read from the streams, not "none yet"
    r = CliRunner().invoke(main, ["monitor", "--once", "--json", "--url", cluster.url, "--alerts", "100"])
    assert r.exit_code == 0, r.output
    snap = json.loads(r.output)
    assert snap["problem"] == ""
    assert snap["scan_done"] >= 1.0
    assert {n["addr"] for n in snap["nodes"]} == {f"127.0.0.1:{p}" for p in cluster.ports}
    assert all(n["memory_bytes"] > 0 and len(n["catalog_digest"]) == 16 for n in snap["nodes"])
    assert {s["name"] for s in snap["states"]} >= {"hits", "nat", "objects"}
    [mine] = [a for a in snap["alerts"] if a["key"] == "once-key"]
    assert mine["msg"] == "hits[once-key]: 33 >= 10"
    assert mine["figures"] == {"n": 33}
    assert CliRunner().invoke(main, ["monitor", "--json", "--url", cluster.url]).exit_code == 2  # needs --once


def test_monitor_shows_a_node_that_is_down(tmp_path: Path, catalog: Catalog) -> None:
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path)
    lc.up()
    try:
        anyio.run(_load, lc.url, catalog)
        victim = lc.ports[2]
        lc.stop_node(victim, hard=True)
        snap, _ = _watch_until(lc.url, lambda s, _a: any(n.role == "down" for n in s.nodes), timeout=15)
        by_addr = {n.addr: n for n in snap.nodes}
        assert by_addr[f"127.0.0.1:{victim}"].role == "down"
        assert by_addr[f"127.0.0.1:{victim}"].problem
        assert all(n.role == "primary" for a, n in by_addr.items() if a != f"127.0.0.1:{victim}")
        text = _text(snap, [])
        assert "1 unhealthy" in text
        assert "down" in text
        # started while the node is down, it still comes up and shows it
        code = CliRunner().invoke(main, ["monitor", "--once", "--url", lc.url])
        assert code.exit_code == 0, code.output
        assert "down" in code.output
        assert "unhealthy" in code.output
    finally:
        lc.down(purge=True)


def test_monitor_without_a_coordinator_says_so() -> None:
    port = free_port_base(1)
    url = f"redis://127.0.0.1:{port}"
    snap, _ = _watch_until(url, lambda s, _a: bool(s.problem), timeout=5)
    assert f"127.0.0.1:{port}" in snap.problem
    assert "coordinator unreachable" in _text(snap, [])
    r = CliRunner().invoke(main, ["monitor", "--once", "--url", url])
    assert r.exit_code == 3
    assert "coordinator unreachable" in r.output
    assert "Traceback" not in r.output


def test_monitor_in_tmux(cluster: LocalCluster) -> None:
    session = f"cogs-mon-{free_port_base(1)}"
    cmd = f"{sys.executable} -m cogs.cli monitor --url {cluster.url} --interval 0.5"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd], check=True)
    try:
        deadline, screen = time.monotonic() + 20, ""
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], check=False, capture_output=True, text=True
            ).stdout
            if "counts complete" in screen:
                break
            time.sleep(0.3)
        assert "cogs monitor" in screen, screen
        assert "counts complete" in screen, screen
        for p in cluster.ports:
            assert f"127.0.0.1:{p}" in screen, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        deadline = time.monotonic() + 20  # a wait, not a timing goal: this box can be slow
        while time.monotonic() < deadline:  # Ctrl-C ends it cleanly: the pane's process exits
            alive = (
                subprocess.run(["tmux", "has-session", "-t", session], check=False, capture_output=True).returncode == 0
            )
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, "monitor did not quit on Ctrl-C"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


#: heartbeats no proxy writes, as any client allowed to register can (attack 14): id -> value
HOSTILE_HEARTBEATS: dict[str, bytes | dict[str, str]] = {
    "evil-not-json": b"not json",
    "evil-list": b"[1, 2]",
    "evil-nested": b'{"stats": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
    "evil-types": json.dumps(
        {
            "time": "soon",
            "ops_per_s": "fast",
            "host": "h" * 5000,
            "stats": {"ops_sent": "many", "batches": 1e308, "errors": [1]},
        }
    ).encode(),
    "evil-markup": b'{"host": "[/x] evil-markup"}',  # shown as written, not taken for markup
    "evil-hash": {"not": "a string"},
}


def test_monitor_and_exporter_survive_hostile_registry_entries(cluster: LocalCluster) -> None:
    """One heartbeat that is not JSON, a JSON list or a non-UTF-8 id in cogs:proxies made
    `cogs monitor --once` and `cogs exporter` exit 1. Ids that are no proxy id (VALID_ID)
    are left out and counted."""
    from tests.integration.test_metrics import _scrape_until, _value

    ids: list[str | bytes] = [*HOSTILE_HEARTBEATS, b"\xff\xfe", b"[/x] no proxy id"]

    async def plant(co: Coordinator) -> None:
        assert co.topology is not None
        now = int(time.time() * 1000)
        for pid, beat in HOSTILE_HEARTBEATS.items():
            node = co.node_client(co.topology.node_of(slot(pid)))
            if isinstance(beat, dict):
                await node.hset(proxy_key(pid), mapping=beat)  # type: ignore[arg-type]
            else:
                await node.set(proxy_key(pid), beat, px=60_000)
        index = co.node_client(co.topology.node_of(slot(PROXY_INDEX)))
        await index.zadd(PROXY_INDEX, dict.fromkeys(ids, now))  # type: ignore[type-var]

    async def clean(co: Coordinator) -> None:
        assert co.topology is not None
        for pid in HOSTILE_HEARTBEATS:
            await co.node_client(co.topology.node_of(slot(pid))).delete(proxy_key(pid))
        await co.node_client(co.topology.node_of(slot(PROXY_INDEX))).zrem(PROXY_INDEX, *ids)

    async def with_coordinator(fn: Callable[[Coordinator], Any]) -> None:
        async with Coordinator(url=cluster.url) as co:
            await fn(co)

    anyio.run(with_coordinator, plant)
    port = free_port_base(1)
    cmd = [sys.executable, "-m", "cogs.cli", "exporter", "--url", cluster.url, "--port", str(port), "--interval", "0.3"]
    exporter = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        r = CliRunner().invoke(main, ["monitor", "--once", "--json", "--url", cluster.url])
        assert r.exit_code == 0, r.output
        snap = json.loads(r.stdout)
        shown = {p["id"]: p for p in snap["proxies"]}
        assert shown["evil-not-json"]["problem"] == "unreadable: not JSON"
        assert shown["evil-list"]["problem"] == "unreadable: not a JSON object"
        assert shown["evil-nested"]["problem"] == "unreadable: not JSON"
        assert shown["evil-hash"]["problem"] == "unreadable: WRONGTYPE"
        typed = shown["evil-types"]  # readable: each figure that is no number shown as none
        assert (typed["alive"], typed["problem"], typed["ops_per_sec"], typed["errors"]) == (True, "", None, 0)
        assert len(typed["host"]) < 200
        assert shown["evil-markup"]["alive"]
        assert snap["proxies_unreadable"] == 2  # the ids that are none: left out, counted
        r = CliRunner().invoke(main, ["monitor", "--once", "--url", cluster.url], env={"COLUMNS": "200"})  # rich
        assert r.exit_code == 0, r.output
        assert "[/x] evil-markup" in r.output  # as written, not taken for markup
        assert "unreadable: not JSON" in r.output
        fams = _scrape_until(f"http://127.0.0.1:{port}/metrics", lambda f: "cogs_proxies" in f, timeout=30)
        assert _value(fams, "cogs_up") == 1
        assert _value(fams, "cogs_proxies", status="unreadable") == 6  # 4 heartbeats + the 2 ids
        assert exporter.poll() is None  # still serving
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(20)
        anyio.run(with_coordinator, clean)
