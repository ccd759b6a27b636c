"""Alerts raised by checkers: durable per-node streams, plus live pub/sub.

A checker runs inside the update's FCALL on the node that owns the key, so the
alert is stored in a stream *that node* serves (the caller names one per node, see
``Coordinator.alert_stream``) and published on ``cogs:alerts`` (classic PUBLISH
reaches subscribers on every node). Reading all alerts therefore looks at the
stream of every slot a node serves: after resharding, older streams still live
with their slot's current owner, so nothing is lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from redis import exceptions as rexc

from cogs.coordinator.client import Coordinator
from cogs.errors import CoordinatorUnavailable
from cogs.keys import ALERTS_CHANNEL, alert_stream


@dataclass(frozen=True)
class Alert:
    id: str
    state: str
    key: str
    value: str
    checker: str
    params: dict[str, Any]
    time_ms: int
    window_ms: int

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.time_ms, self.id)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = self.time.isoformat(timespec="milliseconds")
        return d

    @classmethod
    def from_stream(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Alert:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            state=f["state"],
            key=f["key"],
            value=f["value"],
            checker=f["checker"],
            params=json.loads(f["params"]) if f.get("params") else {},
            time_ms=int(f["time"]),
            window_ms=int(f.get("window", 0)),
        )

    @classmethod
    def from_message(cls, data: bytes | str) -> Alert:
        m = json.loads(data)
        params = m.get("params") or {}
        return cls(
            id=m["id"],
            state=m["state"],
            key=m["key"],
            value=str(m["value"]),
            checker=m["checker"],
            params=params if isinstance(params, dict) else {},
            time_ms=int(m["time"]),
            window_ms=int(m.get("window", 0)),
        )


async def read_alerts(
    coord: Coordinator, *, state: str | None = None, since_ms: int = 0, limit: int | None = None
) -> list[Alert]:
    """Every stored alert (oldest first), optionally of one state / after a time."""
    assert coord.topology is not None
    out: list[Alert] = []
    start = f"{since_ms}-0" if since_ms else "-"
    for i, node in enumerate(coord.topology.nodes):
        client = coord.node_client(i)
        names = [alert_stream(s) for s in node.owned_slots()]
        try:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(name)
                present = [n for n, e in zip(names, await pipe.execute(), strict=True) if e]
            for name in present:
                entries = await client.execute_command("XRANGE", name, start, "+")
                for entry_id, fields in entries:
                    a = Alert.from_stream(entry_id, fields)
                    if state is None or a.state == state:
                        out.append(a)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as e:
            raise CoordinatorUnavailable(f"coordinator node {node.addr}: {e}") from e
    out.sort(key=lambda a: a.sort_key)
    return out[-limit:] if limit else out


async def follow_alerts(coord: Coordinator, *, state: str | None = None) -> AsyncIterator[Alert]:
    """Live alerts: the stored ones first, then each new one as it is raised.

    Subscribes before reading the history, so an alert raised in between is not
    missed (duplicates are dropped by id). Re-subscribes on another node if the
    one it listens to fails.
    """
    assert coord.topology is not None
    seen: set[str] = set()
    first = True
    while True:
        nodes = list(range(len(coord.topology.nodes)))
        for i in nodes:
            pubsub = coord.node_client(i).pubsub()
            try:
                await pubsub.subscribe(ALERTS_CHANNEL)
                if first:
                    for a in await read_alerts(coord, state=state):
                        seen.add(a.id)
                        yield a
                    first = False
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    a = Alert.from_message(msg["data"])
                    if a.id in seen or (state is not None and a.state != state):
                        continue
                    seen.add(a.id)
                    yield a
            except (rexc.ConnectionError, rexc.TimeoutError, OSError):
                await anyio.sleep(0.5)
                try:
                    await coord.refresh()
                except CoordinatorUnavailable:
                    await anyio.sleep(1.0)
            finally:
                await pubsub.aclose()
