"""Alerts: raised at the coordinator, durable in per-node streams, pushed live."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

import anyio
import pytest
from click.testing import CliRunner

from cogs.alerts import Alert, follow_alerts, read_alerts
from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.keys import alert_stream, escape, slot
from cogs.protocol import Mode

pytestmark = pytest.mark.anyio


async def test_alerts_from_every_node_are_stored_once(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        assert co.topology is not None
        keys = [f"scanner-{i}" for i in range(12)]
        assert {co.topology.node_of(slot(escape(k))) for k in keys} == {0, 1, 2}
        ops = [Op(Mode.UPDATE, "ports", k, "add", str(p)) for p in range(6) for k in keys]
        await table.execute(ops)
        alerts = [a for a in await read_alerts(co, state="ports") if a.key in keys]
        assert sorted(a.key for a in alerts) == sorted(keys)  # one per key, not one per packet
        assert {a.value for a in alerts} == {"3"}
        assert all(a.checker == "cardinality" and a.params == {"threshold": 3} for a in alerts)
        assert all(a.window_ms == 300_000 for a in alerts)


async def test_follow_receives_live_alert(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        got: list[Alert] = []

        async def listen() -> None:
            async for a in follow_alerts(co, state="hits"):
                if a.key == "live-key":
                    got.append(a)
                    return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                await anyio.sleep(0.3)  # subscribed, history read
                await table.update("hits", "live-key", "add", 50)
        assert got[0].value == "50"
        assert got[0].state == "hits"


def test_cli_prints_alerts_as_json(cluster: LocalCluster) -> None:
    async def raise_one() -> None:
        async with Coordinator(url=cluster.url) as co:
            table = await StateTable.open(co)
            await table.update("hits", "cli-key", "add", 99)

    anyio.run(raise_one)
    r = CliRunner().invoke(main, ["alerts", "--url", cluster.url, "--json", "--state", "hits"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    mine = [x for x in rows if x["key"] == "cli-key"]
    assert len(mine) == 1
    assert mine[0]["value"] == "99"
    assert set(mine[0]) >= {"state", "key", "value", "checker", "params", "time", "time_ms"}


def _raise_alerts(url: str, *updates: tuple[str, str, str, object]) -> None:
    async def go() -> None:
        async with Coordinator(url=url) as co:
            table = await StateTable.open(co)
            for state, key, op, arg in updates:
                await table.update(state, key, op, arg)

    anyio.run(go)


def test_cli_explains_alerts_in_text_json_and_zeek_formats(cluster: LocalCluster) -> None:
    _raise_alerts(
        cluster.url,
        ("qtypes", "10.9.0.5", "incr", {"odd": 5, "all": 6}),
        *[("ports", "10.9.0.6>10.9.0.7", "add", str(p)) for p in range(4)],
    )
    r = CliRunner().invoke(main, ["alerts", "--url", cluster.url, "--state", "qtypes"])
    assert r.exit_code == 0, r.output
    [line] = [x for x in r.output.splitlines() if "10.9.0.5" in x]
    assert "qtypes[10.9.0.5]: odd/all = 5/6 = 83.33% >= 50% (all >= 4)" in line
    assert "(ratio " in line
    assert "threshold=0.5" in line
    r = CliRunner().invoke(main, ["alerts", "--url", cluster.url, "--json"])
    rows = {x["key"]: x for x in map(json.loads, r.output.splitlines())}
    assert rows["10.9.0.5"]["figures"] == {"n": 5, "d": 6, "ratio": pytest.approx(5 / 6)}
    scan = rows["10.9.0.6>10.9.0.7"]
    assert scan["msg"].startswith("ports[10.9.0.6>10.9.0.7]: 3 distinct members >= 3 in ")
    assert scan["msg"].endswith("of a 5m window")
    assert scan["window_ms"] == 300_000
    assert 0 <= scan["time_ms"] - scan["opened_ms"] < 60_000
    assert scan["stream"].startswith("cogs:alerts:{")
    r = CliRunner().invoke(main, ["alerts", "--url", cluster.url, "--format", "zeek", "--state", "ports"])
    notices = [json.loads(x) for x in r.output.splitlines()]
    [n] = [x for x in notices if x["identifier"] == "ports:10.9.0.6>10.9.0.7"]
    assert n["note"] == "cogs::ports"
    assert n["src"] == "10.9.0.6"
    assert n["n"] == 3
    assert n["msg"] == scan["msg"]
    assert n["sub"] == "cardinality threshold=3"
    assert n["suppress_for"] == 300.0
    assert n["ts"] == pytest.approx(scan["time_ms"] / 1000)


def test_follow_limit_prints_the_latest_n_then_live_ones(cluster: LocalCluster) -> None:
    _raise_alerts(cluster.url, *[("hits", f"lim-{i}", "add", 20) for i in range(2)])
    time.sleep(0.01)  # the latest two come a few ms later (alerts of one ms have no order)
    _raise_alerts(cluster.url, *[("hits", f"lim-{i}", "add", 20) for i in range(2, 4)])
    cmd = [sys.executable, "-m", "cogs.cli", "alerts", "--url", cluster.url, "--follow", "--limit", "2", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        first = [json.loads(lines.get(timeout=30)) for _ in range(2)]
        assert {a["key"] for a in first} == {"lim-2", "lim-3"}  # the latest 2 stored, not all of them
        with pytest.raises(queue.Empty):
            lines.get(timeout=1.0)
        _raise_alerts(cluster.url, ("hits", "lim-live", "add", 20))
        assert json.loads(lines.get(timeout=30))["key"] == "lim-live"
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)  # EOF once the process is gone
        assert proc.stdout is not None
        proc.stdout.close()


async def test_alerts_with_one_entry_id_on_two_streams_are_both_kept(cluster: LocalCluster) -> None:
    """Stream entry ids are per stream: alerts raised in the same millisecond on two
    nodes may share one, and neither may hide the other."""
    async with Coordinator(url=cluster.url) as co:
        assert co.topology is not None
        streams = [alert_stream(co.topology.nodes[i].owned_slots()[0]) for i in (0, 1)]
        t = int(time.time() * 1000)
        for i, name in enumerate(streams):
            fields = ["state", "hits", "key", f"twin-{i}", "value", "11", "checker", "threshold"]
            fields += ["params", '{"threshold":10}', "time", str(t), "window", "0"]
            await co.node_client(i).execute_command("XADD", name, f"{t}-7", *fields)
        twins = [a for a in await read_alerts(co, since_ms=t) if a.key.startswith("twin-")]
        assert sorted(a.key for a in twins) == ["twin-0", "twin-1"]
        assert twins[0].id == twins[1].id
        assert {a.explanation for a in twins} == {
            f'hits[twin-{i}]: value 11 (threshold {{"threshold": 10}})' for i in (0, 1)
        }  # no msg stored
        got: list[Alert] = []
        with anyio.move_on_after(5):
            async for a in follow_alerts(co, state="hits"):
                if a.key.startswith("twin-"):
                    got.append(a)
                    if len(got) == 2:
                        break
        assert sorted(a.key for a in got) == ["twin-0", "twin-1"]
