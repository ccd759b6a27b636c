"""Alerts: raised at the coordinator, durable in per-node streams, pushed live."""

from __future__ import annotations

import json

import anyio
import pytest
from click.testing import CliRunner

from cogs.alerts import Alert, follow_alerts, read_alerts
from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Mode, Op, StateTable
from cogs.keys import escape, slot

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
