"""Alerts raised by checkers: durable per-node streams, plus live pub/sub.

A checker runs inside the update's FCALL on the node that owns the key, so the
alert is stored in a stream *that node* serves (the caller names one per node, see
``Coordinator.alert_stream``) and published on ``cogs:alerts`` (classic PUBLISH
reaches subscribers on every node); an NF other than the default one has its own
streams and channel (``cogs@<nf>:alerts``): readers read those of one NF (the
Coordinator's, or the one named). Reading all alerts therefore looks at the
stream of every slot a node serves: after resharding, older streams still live
with their slot's current owner, so nothing is lost.

Each alert explains itself (``lua/api.lua`` ``raise()``): the checker and its
parameters, the window, the figures that crossed the threshold and a one-line
``msg`` saying so. An alert is identified by its stream *and* entry id: two nodes
(or two streams of one node) can give the same entry id to alerts raised in the
same millisecond.

The streams and the channel are written by every client the ACL lets write there, so
readers trust nothing in them: an entry or message that is not an alert (fields
missing, not UTF-8, not JSON, a time that is no time, too large) is skipped and
counted in an :class:`Unreadable`, the first few logged with bounded lines, and the
reader goes on. Time windows are read from the alerts' own ``time`` field, which the
library writes: an entry id from the future (``XADD`` with an explicit id) moves the
ids of every later alert of its stream past it, so ids alone cannot bound a window.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from redis import exceptions as rexc

from cogs.coordinator.client import Coordinator
from cogs.errors import NETWORK_ERRORS, CoordinatorUnavailable, show
from cogs.keys import DEFAULT_NF, Namespace

log = logging.getLogger("cogs.alerts")

#: how far back a re-subscribed follower re-reads the streams (node clocks may differ)
RESUME_MARGIN_MS = 5_000
#: an entry or message larger than this is not an alert (the library's are < 2 KiB)
MAX_ALERT_BYTES = 64 * 1024
#: the latest time an alert may claim: datetime (and so every output format) ends in 9999
MAX_TIME_MS = 253_402_300_799_999
_REQUIRED = ("state", "key", "value", "checker", "time")
#: unreadable entries logged one by one per reader; then one line in a thousand
LOGGED_UNREADABLE = 10


class NotAnAlert(ValueError):
    """A stream entry or pub/sub message that cannot be read as an alert; the message
    says why, quoting at most a bounded prefix of what was there."""


@dataclass
class Unreadable:
    """What readers skipped because it is not an alert: one hostile ``XADD`` or
    ``PUBLISH`` costs a counted, logged skip, never the reader."""

    count: int = 0
    #: where and why the first one was skipped (bounded)
    first: str = ""

    def note(self, where: str, why: str) -> None:
        self.count += 1
        if not self.first:
            self.first = f"{where}: {why}"
        n = self.count
        if n <= LOGGED_UNREADABLE or n % 1000 == 0:
            tail = (
                " (further ones: one line in 1000)" if n == LOGGED_UNREADABLE else f" ({n} so far)" if n > 1000 else ""
            )
            log.warning("skipped %s: not an alert: %s%s", where, why, tail)

    def summary(self) -> str:
        """One line for a reader's user ("" when nothing was skipped)."""
        if not self.count:
            return ""
        return f"skipped {self.count} stream entries or messages that are not alerts (first: {self.first})"


#: where readers count what they skip unless given their own
UNREADABLE = Unreadable()


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
    def nf(self) -> str:
        """The NF that raised it (its stream is in that NF's namespace)."""
        if self.stream.startswith("cogs@") and ":" in self.stream:
            return self.stream[5 : self.stream.index(":")]
        return DEFAULT_NF

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
        d["nf"] = self.nf
        return d

    def to_notice(self) -> dict[str, Any]:
        """The alert as a line of Zeek's notice.log (JSON): ts, note, msg, sub, src, n,
        identifier and suppress_for (cogs raises one alert per key per window)."""
        out: dict[str, Any] = {
            "ts": self.time_ms / 1000,
            "note": f"cogs::{self.state}" if self.nf == DEFAULT_NF else f"cogs_{self.nf}::{self.state}",
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
    def from_stream(cls, entry_id: bytes | str, fields: Any, stream: str = "") -> Alert:
        """The alert stored as stream entry ``entry_id``; NotAnAlert if it is none."""
        if not isinstance(fields, dict):
            raise NotAnAlert("no fields")
        size = sum(
            len(k) + len(v) for k, v in fields.items() if isinstance(k, bytes | str) and isinstance(v, bytes | str)
        )
        if size > MAX_ALERT_BYTES:
            raise NotAnAlert(f"{size} bytes of fields, over {MAX_ALERT_BYTES}")
        try:
            f = {_text(k): _text(v) for k, v in fields.items()}
            eid = _text(entry_id)
        except (UnicodeDecodeError, TypeError) as e:
            raise NotAnAlert(f"a field that is not UTF-8 text ({type(e).__name__})") from None
        return cls._make(f, eid, stream)

    @classmethod
    def from_message(cls, data: bytes | str) -> Alert:
        """The alert published as ``data`` on the alerts channel; NotAnAlert if it is none."""
        if len(data) > MAX_ALERT_BYTES:
            raise NotAnAlert(f"{len(data)} bytes, over {MAX_ALERT_BYTES}")
        try:
            m = json.loads(data)
        except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested beyond reason
            raise NotAnAlert(f"not JSON: {show(data)}") from None
        if not isinstance(m, dict):
            raise NotAnAlert(f"not a JSON object: {show(data)}")
        if not isinstance(m.get("id"), str):
            raise NotAnAlert("no id")
        stream = m.get("stream", "")
        return cls._make(m, m["id"], stream if isinstance(stream, str) else "")

    @classmethod
    def _make(cls, f: dict[str, Any], entry_id: str, stream: str) -> Alert:
        missing = [k for k in _REQUIRED if f.get(k) is None]
        if missing:
            raise NotAnAlert(f"no {', '.join(missing)} field")
        time_ms = _int(f, "time")
        if not 0 < time_ms <= MAX_TIME_MS:
            raise NotAnAlert(f"time {show(f['time'])} is no time")
        return cls(
            id=entry_id,
            state=_field(f, "state"),
            key=_field(f, "key"),
            value=_field(f, "value"),
            checker=_field(f, "checker"),
            params=_obj(f.get("params")),
            time_ms=time_ms,
            window_ms=_int(f, "window"),
            stream=stream,
            msg=_field(f, "msg") if f.get("msg") else "",
            figures=_obj(f.get("figures")),
            n=_num(f.get("n")),
            opened_ms=_int(f, "opened"),
        )


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, str):
        return v
    raise TypeError(type(v).__name__)


def _field(f: dict[str, Any], name: str) -> str:
    """A text field: a string (or, in a message, a number, as cjson writes values)."""
    v = f[name]
    if isinstance(v, str):
        return v
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    raise NotAnAlert(f"{name} is not text")


def _int(f: dict[str, Any], name: str) -> int:
    """An integer field (0 when absent or empty): digits, or an integral number."""
    v = f.get(name)
    if v is None or v == "":
        return 0
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and len(v) <= 20:
        try:
            return int(v)
        except ValueError:
            pass
    raise NotAnAlert(f"{name} {show(v)} is not an integer")


def _obj(v: Any) -> dict[str, Any]:
    """A JSON object from a stream field (a string) or a message (already decoded)."""
    if isinstance(v, str) and v:
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            return {}
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float | None:
    try:
        x = float(v) if v is not None and v != "" else None
    except (TypeError, ValueError, OverflowError):
        return None
    return x if x is not None and math.isfinite(x) else None


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
    until_ms: int | None = None,
    limit: int | None = None,
    unreachable: list[str] | None = None,
    unreadable: Unreadable | None = None,
    ns: Namespace | None = None,
) -> list[Alert]:
    """Every stored alert (oldest first), optionally of one state / raised from
    ``since_ms`` until ``until_ms`` (their ``time``); with ``limit``, only the latest
    ``limit`` of them. A node that does not answer raises CoordinatorUnavailable, or
    with ``unreachable`` is listed there and skipped. What is not an alert is skipped
    and counted in ``unreadable`` (default: :data:`UNREADABLE`). ``ns``: the NF whose
    alerts to read (default: the Coordinator's)."""
    assert coord.topology is not None
    ns = ns or coord.ns
    bad = UNREADABLE if unreadable is None else unreadable
    out: list[Alert] = []
    # ids are never below the time of their alert (XADD's "*" is max(now, last + 1)):
    # from since_ms by id reaches every alert of the window, however far ids ran ahead
    start = f"{since_ms}-0" if since_ms else "-"
    for i, node in enumerate(coord.topology.nodes):
        client = coord.node_client(i)
        names = [ns.alert_stream(s) for s in node.owned_slots()]
        try:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(name)
                present = [n for n, e in zip(names, await pipe.execute(), strict=True) if e]
            for name in present:
                try:
                    entries = await client.execute_command("XRANGE", name, start, "+")
                except rexc.ResponseError as e:  # WRONGTYPE: a key of another type in its place
                    bad.note(name, f"not a stream ({str(e)[:60]})")
                    continue
                for entry_id, fields in entries:
                    try:
                        a = Alert.from_stream(entry_id, fields, name)
                    except NotAnAlert as e:
                        eid = entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else entry_id
                        bad.note(f"{name} entry {show(eid)}", str(e))
                        continue
                    if a.time_ms < since_ms or (until_ms is not None and a.time_ms > until_ms):
                        continue
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
        # an alert's time is its writer's word: one from the future (PUBLISHed or XADDed
        # outside cogs) must not move where a resumed follower re-reads from past the
        # alerts raised meanwhile, nor push the ones seen out of memory
        t = min(a.time_ms, int(time.time() * 1000) + RESUME_MARGIN_MS)
        self.ids[a.uid] = t
        self.newest = max(self.newest, t)
        if len(self.ids) > 10_000:
            horizon = self.newest - 2 * RESUME_MARGIN_MS
            self.ids = {k: t for k, t in self.ids.items() if t >= horizon}
        return True


async def follow_alerts(
    coord: Coordinator,
    *,
    state: str | None = None,
    limit: int | None = None,
    unreadable: Unreadable | None = None,
    ns: Namespace | None = None,
) -> AsyncIterator[Alert]:
    """Live alerts: the stored ones first (the latest ``limit`` of them), then each new
    one as it is raised.

    Subscribes before reading the history, so an alert raised in between is not
    missed (duplicates are dropped by stream and id). Re-subscribes on another node
    if the one it listens to fails, and then re-reads the streams from shortly before
    the newest alert it had seen: pub/sub is fire-and-forget, the streams are not.
    A message or entry that is not an alert is skipped and counted in ``unreadable``.
    ``ns``: the NF whose alerts to follow (default: the Coordinator's).
    """
    assert coord.topology is not None
    ns = ns or coord.ns
    bad = UNREADABLE if unreadable is None else unreadable
    seen = _Seen()
    first = True
    while True:
        nodes = list(range(len(coord.topology.nodes)))
        for i in nodes:
            pubsub = coord.node_client(i).pubsub()
            try:
                await pubsub.subscribe(ns.alerts_channel)
                if first:
                    history = await read_alerts(coord, state=state, limit=limit, unreadable=bad, ns=ns)
                else:  # what was raised while no subscription held
                    since = max(0, seen.newest - RESUME_MARGIN_MS)
                    history = await read_alerts(coord, state=state, since_ms=since, unreadable=bad, ns=ns)
                for a in history:
                    if seen.add(a):
                        yield a
                first = False
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        a = Alert.from_message(msg["data"])
                    except NotAnAlert as e:
                        bad.note(f"a message on {ns.alerts_channel}", str(e))
                        continue
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
