"""After a run: the final value of every counter a history touched, and the alerts stored
for them, read from the coordinator (the only part of the checking that talks to Redis)."""

from __future__ import annotations

from collections import Counter

from cogs.alerts import read_alerts
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.errors import CogsError
from cogs.faults.check import Final
from cogs.faults.history import COUNTER_KINDS, History
from cogs.protocol import Mode

CHUNK = 2000


async def final_state(url: str, history: History, alert_state: str, prefix: str) -> tuple[Final, dict[str, int]]:
    """(state, key) -> value of every counter key in ``history``; key -> alerts stored in
    ``alert_state`` for keys starting with ``prefix`` (the run's namespace)."""
    keys = sorted({(o.state, k) for o in history.of(*COUNTER_KINDS) for k in o.deltas()})
    final: dict[tuple[str, str], int | None] = {}
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        for i in range(0, len(keys), CHUNK):
            part = keys[i : i + CHUNK]
            got = await table.execute([Op(Mode.RETRIEVE, s, k, None) for s, k in part])
            for (s, k), v in zip(part, got, strict=True):
                if isinstance(v, CogsError):
                    raise v
                final[(s, k)] = v
        alerts = Counter(a.key for a in await read_alerts(co, state=alert_state) if a.key.startswith(prefix))
    return final, dict(alerts)
