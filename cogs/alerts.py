"""Alerts raised by checkers: durable per-node streams, plus live pub/sub.

A checker runs inside the update's FCALL on the node that owns the key, so the
alert is stored in a stream *that node* serves (the caller names one per node, see
``Coordinator.alert_stream``) and published on ``cogs:alerts`` (classic PUBLISH
reaches subscribers on every node). Reading all alerts therefore looks at the
stream of every slot a node serves: after resharding, older streams still live
with their slot's current owner, so nothing is lost.

Each alert explains itself (``lua/api.lua`` ``raise()``): the checker and its
parameters, the window, the figures that crossed the threshold and a one-line
``msg`` saying so. An alert is identified by its stream *and* entry id: two nodes
(or two streams of one node) can give the same entry id to alerts raised in the
same millisecond.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from cogs.coordinator.client import Coordinator
from cogs.errors import NETWORK_ERRORS, CoordinatorUnavailable
from cogs.keys import ALERTS_CHANNEL, alert_stream

#: how far back a re-subscribed follower re-reads the streams (node clocks may differ)
RESUME_MARGIN_MS = 5_000


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
    #: the stream that stores it (with ``id``, what identifies the alert)
    stream: str = ""
    #: one line: state[key], what crossed the threshold, in how long of which window
    msg: str = ""
    #: the checker's figures behind the alert, e.g. {"n": 81, "d": 81, "ratio": 1}
    figures: dict[str, Any] = field(default_factory=dict)
    #: the count behind the alert (Zeek's notice ``n``): members, events, numerator
    n: float | None = None
    #: when the state's window opened (0: the state has no window)
    opened_ms: int = 0

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)

    @property
    def sort_key(self) -> tuple[int, str, str]:
        return (self.time_ms, self.stream, self.id)

    @property
    def uid(self) -> tuple[str, str]:
        return (self.stream, self.id)

    @property
    def explanation(self) -> str:
        """``msg``, or for an alert stored by an older library what it recorded."""
        if self.msg:
            return self.msg
        return f"{self.state}[{self.key}]: value {self.value} ({self.checker} {json.dumps(self.params)})"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = self.time.isoformat(timespec="milliseconds")
        d["msg"] = self.explanation
        return d

    def to_notice(self) -> dict[str, Any]:
        """The alert as a line of Zeek's notice.log (JSON): ts, note, msg, sub, src, n,
        identifier and suppress_for (cogs raises one alert per key per window)."""
        out: dict[str, Any] = {
            "ts": self.time_ms / 1000,
            "note": f"cogs::{self.state}",
            "msg": self.explanation,
            "sub": f"{self.checker} " + " ".join(f"{k}={v}" for k, v in sorted(self.params.items())),
        }
        src = address_in(self.key)
        if src is not None:
            out["src"] = src
        if self.n is not None:
            out["n"] = int(self.n) if float(self.n).is_integer() else self.n
        out["identifier"] = f"{self.state}:{self.key}"
        if self.window_ms:
            out["suppress_for"] = self.window_ms / 1000
        out["actions"] = ["Notice::ACTION_LOG"]
        out["peer_descr"] = "cogs"
        return out

    @classmethod
    def from_stream(cls, entry_id: bytes | str, fields: dict[bytes, bytes], stream: str = "") -> Alert:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return cls._make(f, entry_id.decode() if isinstance(entry_id, bytes) else entry_id, stream)

    @classmethod
    def from_message(cls, data: bytes | str) -> Alert:
        m = json.loads(data)
        return cls._make(m, str(m["id"]), str(m.get("stream", "")))

    @classmethod
    def _make(cls, f: dict[str, Any], entry_id: str, stream: str) -> Alert:
        return cls(
            id=entry_id,
            state=str(f["state"]),
            key=str(f["key"]),
            value=str(f["value"]),
            checker=str(f["checker"]),
            params=_obj(f.get("params")),
            time_ms=int(f["time"]),
            window_ms=int(f.get("window") or 0),
            stream=stream,
            msg=str(f.get("msg") or ""),
            figures=_obj(f.get("figures")),
            n=_num(f.get("n")),
            opened_ms=int(f.get("opened") or 0),
        )


def _obj(v: Any) -> dict[str, Any]:
    """A JSON object from a stream field (a string) or a message (already decoded)."""
    if isinstance(v, str) and v:
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float | None:
    try:
        return float(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None


_SEPARATORS = re.compile(r"[>|=,;/\s]+")


def address_in(key: str) -> str | None:
    """The first IP address among the parts of an NF key ("10.0.0.1>10.0.0.2",
    "run-1|10.0.0.5"), for the notice's ``src``; None when it names none."""
    for part in _SEPARATORS.split(key):
        try:
            return str(ipaddress.ip_address(part))
        except ValueError:
            continue
    return None


async def read_alerts(
    coord: Coordinator,
    *,
    state: str | None = None,
    since_ms: int = 0,
    limit: int | None = None,
    unreachable: list[str] | None = None,
) -> list[Alert]:
    """Every stored alert (oldest first), optionally of one state / after a time;
    with ``limit``, only the latest ``limit`` of them. A node that does not answer
    raises CoordinatorUnavailable, or with ``unreachable`` is listed there and skipped."""
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
                    a = Alert.from_stream(entry_id, fields, name)
                    if state is None or a.state == state:
                        out.append(a)
        except NETWORK_ERRORS as e:
            if unreachable is None:
                raise CoordinatorUnavailable(f"coordinator node {node.addr}: {e}") from e
            unreachable.append(f"{node.addr}: {e}")
    out.sort(key=lambda a: a.sort_key)
    return out[-limit:] if limit else out


class _Seen:
    """Alerts already handed out, forgotten once older than any re-read can reach."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}
        self.newest = 0

    def add(self, a: Alert) -> bool:
        """True if ``a`` is new."""
        if a.uid in self.ids:
            return False
        self.ids[a.uid] = a.time_ms
        self.newest = max(self.newest, a.time_ms)
        if len(self.ids) > 10_000:
            horizon = self.newest - 2 * RESUME_MARGIN_MS
            self.ids = {k: t for k, t in self.ids.items() if t >= horizon}
        return True


async def follow_alerts(
    coord: Coordinator, *, state: str | None = None, limit: int | None = None
) -> AsyncIterator[Alert]:
    """Live alerts: the stored ones first (the latest ``limit`` of them), then each new
    one as it is raised.

    Subscribes before reading the history, so an alert raised in between is not
    missed (duplicates are dropped by stream and id). Re-subscribes on another node
    if the one it listens to fails, and then re-reads the streams from shortly before
    the newest alert it had seen: pub/sub is fire-and-forget, the streams are not.
    """
    assert coord.topology is not None
    seen = _Seen()
    first = True
    while True:
        nodes = list(range(len(coord.topology.nodes)))
        for i in nodes:
            pubsub = coord.node_client(i).pubsub()
            try:
                await pubsub.subscribe(ALERTS_CHANNEL)
                if first:
                    history = await read_alerts(coord, state=state, limit=limit)
                else:  # what was raised while no subscription held
                    since = max(0, seen.newest - RESUME_MARGIN_MS)
                    history = await read_alerts(coord, state=state, since_ms=since)
                for a in history:
                    if seen.add(a):
                        yield a
                first = False
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    a = Alert.from_message(msg["data"])
                    if (state is not None and a.state != state) or not seen.add(a):
                        continue
                    yield a
            except (*NETWORK_ERRORS, CoordinatorUnavailable) as e:
                if first and isinstance(e, CoordinatorUnavailable):
                    raise  # the history cannot be read at all: say so rather than wait
                await anyio.sleep(0.5)
                try:
                    await coord.refresh()
                except CoordinatorUnavailable:
                    await anyio.sleep(1.0)
            finally:
                await pubsub.aclose()
