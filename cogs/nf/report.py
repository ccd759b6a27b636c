"""The alerts an NF run raised, as the CLI prints them (capture files and live alike)."""

from __future__ import annotations

import time
from typing import Any

from cogs.alerts import RESUME_MARGIN_MS, read_alerts
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import StateTable
from cogs.nf.detectors import DETECTORS


async def collect_alerts(url: str, nf: str, ns: str, since_ms: int) -> list[dict[str, Any]]:
    """The alerts of ``nf`` raised since ``since_ms`` on keys under namespace ``ns``.

    The window is the alerts' own time, up to now (and the margin node clocks may be
    ahead): stream entries that are not alerts, or claim a time after the run, are
    skipped (:func:`~cogs.alerts.read_alerts` counts and logs them)."""
    det = DETECTORS[nf]
    out = []
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        until = int(time.time() * 1000) + RESUME_MARGIN_MS
        for a in await read_alerts(co, since_ms=since_ms, until_ms=until):
            if a.state not in det.states or not a.key.startswith(ns):
                continue
            key = a.key[len(ns) :]
            box = None
            if key.startswith("mb") and "|" in key:
                box, key = key.split("|", 1)
            row: dict[str, Any] = {
                "nf": nf,
                "key": det.key_of(a.state, key),
                "value": a.value,
                "time": a.time.isoformat(timespec="milliseconds"),
                "state": a.state,
                "state_key": key,
                # why it fired, with the run's key namespace left out
                "msg": a.explanation.replace(f"[{a.key}]", f"[{key}]", 1),
            }
            if box is not None:
                row["middlebox"] = box
            if a.state == "sidejack_clients":  # name the clients that shared the session
                row["clients"] = sorted(await table.retrieve(a.state, a.key))
            out.append(row)
    return out
