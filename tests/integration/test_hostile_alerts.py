"""Forged alerts against a live follower (``cogs alerts --follow``, the monitor, the
exporter), on a real cluster: anyone holding the NF's proxy credentials may PUBLISH on
its alerts channel or XADD to its streams, with any ``time`` up to the year 9999."""

from __future__ import annotations

import json

import anyio
import pytest

from cogs.alerts import Alert, follow_alerts
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import StateTable
from cogs.keys import ALERTS_CHANNEL
from tests.helpers import eventually

pytestmark = pytest.mark.anyio
YEAR_9999 = 253_402_300_799_999


async def test_an_alert_from_the_future_hides_no_alert_raised_while_resubscribing(cluster: LocalCluster) -> None:
    """A follower that loses its subscription re-reads the streams from shortly before
    the newest alert it saw. Before: a forged alert of the year 9999 became that newest
    one, so the re-read started in 9999 and every alert raised while the follower was
    away was lost to it."""
    forged = {"id": "1-0", "stream": "", "state": "hits", "key": "forged", "value": "1", "checker": "threshold",
              "params": {}, "time": YEAR_9999, "window": 0}  # fmt: skip
    got: list[Alert] = []
    async with Coordinator(url=cluster.url) as co, Coordinator(url=cluster.url) as admin:
        assert admin.topology is not None
        table = await StateTable.open(admin)

        async def follow() -> None:
            async for a in follow_alerts(co, state="hits"):
                got.append(a)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await table.update("hits", "hx-before", "add", 10)
            await eventually(lambda: any(a.key == "hx-before" for a in got), within=10)
            await admin.node_client(0).publish(ALERTS_CHANNEL, json.dumps(forged))
            await eventually(lambda: any(a.key == "forged" for a in got), within=10)
            for i in range(len(admin.topology.nodes)):  # the follower's subscription drops ...
                await admin.node_client(i).execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await table.update("hits", "hx-meanwhile", "add", 10)  # ... and this alert is raised meanwhile
            # read back from the streams once it subscribes again
            await eventually(lambda: any(a.key == "hx-meanwhile" for a in got), within=15)
            tg.cancel_scope.cancel()
