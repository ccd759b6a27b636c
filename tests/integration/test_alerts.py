"""Alerts: raised at the coordinator, durable in per-node streams, pushed live."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from cogs.alerts import Alert, Unreadable, follow_alerts, read_alerts
from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.keys import ALERTS_CHANNEL, alert_stream, escape, slot
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


# -- hostile entries and messages (attacks 12 and 13 of issue 16's follow-up) ------------

#: stream entries that are not alerts: what any client allowed to XADD can store
HOSTILE_ENTRIES: list[dict[bytes, bytes]] = [
    {b"state": b"x", b"note": b"no key, no time"},
    {b"state": b"hits", b"key": b"\xff\xfe", b"value": b"1", b"checker": b"t", b"time": b"1"},  # not UTF-8
    {b"state": b"hits", b"key": b"k", b"value": b"1", b"checker": b"t", b"time": b"soon"},
    {b"state": b"hits", b"key": b"k", b"value": b"1", b"checker": b"t", b"time": b"99999999999999999"},
    {b"state": b"hits", b"key": b"k", b"value": b"1", b"checker": b"t", b"time": b"5", b"window": b"1e3"},
    {b"state": b"hits", b"key": b"k" * 70_000, b"value": b"1", b"checker": b"t", b"time": b"5"},
]


def _hostile_alert(t: int) -> list[str]:
    """A readable alert with hostile extras: NaN count, nested params (kept, made harmless)."""
    fields = ["state", "hits", "key", "odd-extras", "value", "12", "checker", "threshold", "time", str(t)]
    return [*fields, "n", "nan", "params", "[" * 5000 + "]" * 5000, "figures", "not json"]


def test_readers_skip_and_count_entries_that_are_not_alerts(cluster: LocalCluster) -> None:
    """`cogs alerts` and `cogs monitor --once` exited 1 on one entry without a key."""
    t = int(time.time() * 1000)
    planted: dict[str, Any] = {}

    async def setup() -> None:
        async with Coordinator(url=cluster.url) as co:
            assert co.topology is not None
            node = co.topology.node_of(slot(escape("hostile-real")))
            other = (node + 1) % len(co.topology.nodes)
            stream, client = co.alert_stream(node), co.node_client(node)
            squatted = alert_stream(co.topology.nodes[other].owned_slots()[5])  # a string, not a stream
            ids = [await client.xadd(stream, e) for e in HOSTILE_ENTRIES]  # type: ignore[arg-type]
            ids.append(await client.execute_command("XADD", stream, "*", *_hostile_alert(t)))
            await co.node_client(other).set(squatted, "not a stream")
            planted.update(node=node, other=other, stream=stream, ids=ids, squatted=squatted)

    async def clean() -> None:
        async with Coordinator(url=cluster.url) as co:
            await co.node_client(planted["node"]).xdel(planted["stream"], *planted["ids"])
            await co.node_client(planted["other"]).delete(planted["squatted"])

    async def read() -> tuple[dict[str, Alert], Unreadable]:
        async with Coordinator(url=cluster.url) as co:
            skipped = Unreadable()
            got = {a.key: a for a in await read_alerts(co, since_ms=t - 1000, unreadable=skipped)}
            return got, skipped

    anyio.run(setup)
    try:
        _raise_alerts(cluster.url, ("hits", "hostile-real", "add", 11))
        got, skipped = anyio.run(read)
        assert got["hostile-real"].value == "11"
        odd = got["odd-extras"]
        assert (odd.n, odd.params, odd.figures) == (None, {}, {})
        json.dumps(odd.to_notice(), allow_nan=False)  # every output format still valid
        assert skipped.count == len(HOSTILE_ENTRIES) + 1  # + the squatted key
        assert len(skipped.first) < 300
        r = CliRunner().invoke(main, ["alerts", "--url", cluster.url, "--json", "--state", "hits"])
        assert r.exit_code == 0, r.output
        assert "hostile-real" in {json.loads(x)["key"] for x in r.stdout.splitlines()}
        assert "skipped 7 stream entries or messages that are not alerts" in r.stderr
        assert max(map(len, r.stderr.splitlines())) < 400  # the 70 kB key is not quoted
        r = CliRunner().invoke(main, ["monitor", "--once", "--json", "--url", cluster.url, "--alerts", "100"])
        assert r.exit_code == 0, r.output
        snap = json.loads(r.stdout)
        assert "hostile-real" in {a["key"] for a in snap["alerts"]}
        assert "skipped 7 stream entries" in snap["alerts_problem"]
    finally:
        anyio.run(clean)


async def test_follow_skips_messages_that_are_not_alerts(cluster: LocalCluster) -> None:
    hostile = [b"not json", b"[1, 2]", b'{"id": 5}', b"\xff\xfe{}", b"[" * 100_000, b'{"id": "1-1", "state": "hits"}']
    hostile.append(
        json.dumps({"id": "1-2", "state": "hits", "key": "k", "value": "1", "checker": "t", "time": -5}).encode()
    )
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        skipped = Unreadable()
        got: list[Alert] = []

        async def listen() -> None:
            async for a in follow_alerts(co, state="hits", limit=1, unreadable=skipped):
                if a.key == "live-after-junk":
                    got.append(a)
                    return

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                await anyio.sleep(0.5)  # subscribed, history read
                for m in hostile:
                    await co.node_client(0).publish(ALERTS_CHANNEL, m)
                await table.update("hits", "live-after-junk", "add", 10)
        assert got[0].value == "10"
        assert skipped.count == len(hostile)


async def test_an_entry_id_from_the_future_hides_no_later_alert(cluster: LocalCluster) -> None:
    """XADD with the id 9999999999999-0 moves the ids of every later alert of that
    stream past it: readers bound windows by the alerts' own time, and still see them."""
    async with Coordinator(url=cluster.url) as co:
        assert co.topology is not None
        table = await StateTable.open(co)
        node = co.topology.node_of(slot(escape("after-future")))
        stream, client = co.alert_stream(node), co.node_client(node)
        before = await client.execute_command("XRANGE", stream, "-", "+")  # restored after the test
        await client.execute_command("XADD", stream, "9999999999999-0", "junk", "1")
        try:
            t = int(time.time() * 1000)
            await table.update("hits", "after-future", "add", 10)
            now = int(time.time() * 1000)
            [a] = [a for a in await read_alerts(co, since_ms=t - 1000, until_ms=now + 1000) if a.key == "after-future"]
            assert a.id.startswith("9999999999999-")  # where the library's XADD had to put it
            assert t - 1000 <= a.time_ms <= now + 1000
            assert not [a for a in await read_alerts(co, since_ms=now + 2000) if a.key == "after-future"]
        finally:  # ids from the future would outlive the test (an XADD with an id of now fails)
            await client.delete(stream)
            for entry_id, fields in before:
                await client.execute_command("XADD", stream, entry_id, *[x for kv in fields.items() for x in kv])
