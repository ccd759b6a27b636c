"""Every error cogs raises, and the one place Redis errors become cogs errors.

The Lua library reports a failed op as ``"CODE state=.. key=.. op=..: message"``;
:func:`op_error` turns that into the matching :class:`OpError` subclass so callers
can catch what went wrong by type and still read one clear line. A whole call's
failure (an error reply, a network error) becomes a cogs error in
:func:`from_redis`, and nowhere else. Whatever an error quotes of the caller's input
is bounded (:func:`show`): a 1 MB key never makes a 1 MB log line.
"""

from __future__ import annotations

import hashlib
from typing import TypeVar

from redis import exceptions as rexc

from cogs.paths import LOAD_HINT
from cogs.protocol import CHANNEL_DUP_UNKNOWN, CHANNEL_LOST, TRANSIENT

#: what a lost or refused connection raises (redis-py's, the socket's, asyncio's)
NETWORK_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError, TimeoutError)
#: what a call to a node may raise: a network error, or an error reply
CALL_ERRORS = (rexc.RedisError, OSError, TimeoutError)
SHOW_MAX = 64


def show(value: object) -> str:
    """A bounded rendering of caller input for an error message: short values as
    ``repr``, long ones as a prefix, their length and a digest (two long values stay
    told apart, and nothing of a huge one floods a log)."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) <= SHOW_MAX:
            return repr(data)
        return f"{data[:40]!r}... ({len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]})"
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= SHOW_MAX:
        return repr(value) if isinstance(value, str) else text
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{text[:40]!r}... ({len(text)} chars, sha1 {digest})"


class CogsError(Exception):
    """Base of every error cogs raises."""


class ConfigError(CogsError):
    """Bad settings or command-line options."""


class CatalogError(CogsError):
    """A state catalog that does not validate; the message names every bad entry."""

    def __init__(self, problems: list[str], source: str = "catalog") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


class CatalogMismatch(CogsError):
    """The catalog a proxy was started with differs from the one the coordinator stores."""


class LibraryOutdated(CogsError):
    """The coordinator runs another version of the Lua library (or none at all)."""


class CoordinatorUnavailable(CogsError):
    """No coordinator node answered (down, unreachable, or wrong address), or it could
    not run the call now (cluster down, loading, failing over): nothing was applied by
    the call that failed, and the proxy re-sends it."""


class DeliveryTimeout(CoordinatorUnavailable):
    """An op was not confirmed within the delivery bound (``COGS_DELIVERY_TIMEOUT_S``).
    Its outcome is unknown to the caller: it stays queued on its ordered channel and
    is applied exactly once when the node answers again, unless the proxy closes first."""


class ProxyClosed(CogsError):
    """The proxy is closed or closing. An op issued then is refused at once (never
    applied); an op still pending when it closed is answered with this error: if it
    was sent, its outcome is unknown (the message says which)."""


class AckedLost(CogsError):
    """Batches the coordinator had acknowledged are gone: a primary failed over before
    its replica had them (default mode's loss window; durable mode makes it
    ``WAIT``-confirmed). Reported once per loss, with how many ops it held."""

    def __init__(self, message: str, *, node: str, batches: int, ops: int | None) -> None:
        self.node, self.batches, self.ops = node, batches, ops
        super().__init__(message)


class ClusterError(CogsError):
    """The local Redis cluster could not be started, formed or stopped."""


class OpError(CogsError):
    """A state operation the coordinator refused; the state was left untouched."""

    code = "REDIS"

    def __init__(self, message: str, *, state: str = "?", key: str = "?", op: str = "?") -> None:
        self.state, self.key, self.op = state, key, op
        super().__init__(message)


class UnknownState(OpError):
    code = "UNKNOWN_STATE"


class UnknownOp(OpError):
    code = "UNKNOWN_OP"


class BadKey(OpError):
    code = "BAD_KEY"


class BadDelta(OpError):
    code = "BAD_DELTA"


class Oversize(OpError):
    code = "OVERSIZE"


class WrongType(OpError):
    code = "WRONGTYPE"


class Overflow(OpError):
    code = "OVERFLOW"


class BadFrame(OpError):
    code = "BAD_FRAME"


class Moved(OpError):
    """The key's slot is served by another node (topology changed); callers re-route."""

    code = "MOVED"


class Exhausted(OpError):
    """A pool (a NAT's external ports) has nothing left to allocate."""

    code = "EXHAUSTED"


class NotOwner(OpError):
    """Only the proxy owning an indirect state changes it."""

    code = "NOT_OWNER"


class BadReply(OpError):
    """The coordinator's reply for an op cannot be read as its state's type: the stored
    value was written outside cogs (any client the ACL lets write its NF's keys can).
    The op fails alone; the value is left as it is."""

    code = "BAD_REPLY"


class PeerError(CogsError):
    """The peer channel of indirect states failed: the owner proxy is unreachable,
    refused us (wrong secret), or sent something malformed."""


class AlertNotRecorded(OpError):
    """The update was applied but its alert could not be stored."""

    code = "ALERT"


class OverLimit(OpError):
    """The NF is over its ops-rate limit on a primary (its catalog's ``[limits]``):
    the batch was refused whole, nothing of it applied."""

    code = "LIMIT"


_BY_CODE: dict[str, type[OpError]] = {
    cls.code: cls
    for cls in (
        UnknownState,
        UnknownOp,
        BadKey,
        BadDelta,
        Oversize,
        WrongType,
        Overflow,
        BadFrame,
        Moved,
        Exhausted,
        NotOwner,
        AlertNotRecorded,
        OverLimit,
        BadReply,
    )
}


def op_error(message: str, *, state: str = "?", key: str = "?", op: str = "?") -> OpError:
    """Build the :class:`OpError` for a Lua error line ``"CODE rest"``."""
    code, _, _rest = message.partition(" ")
    return _BY_CODE.get(code, OpError)(message, state=state, key=key, op=op)


_E = TypeVar("_E", bound=OpError)


def bad_reply(e: BaseException, raw: object, *, state: str, key: str, op: str) -> BadReply:
    """The :class:`BadReply` for a reply ``raw`` that a decoder refused with ``e`` (what
    was there is quoted bounded, as :func:`show` does)."""
    if isinstance(raw, list) and raw and isinstance(raw[0], bytes | str):
        raw = raw[0]  # {value, version, ...} of a replica read: the value is what failed
    got = show(raw) if isinstance(raw, bytes | str) else f"a {type(raw).__name__}"
    msg = f"the stored value cannot be read as the state's type ({type(e).__name__}; got {got})"
    return refuse(BadReply, msg, state=state, key=key, op=op)


def refuse(cls: type[_E], msg: str, *, state: object, key: object = None, op: object = None) -> _E:
    """A client-side refusal worded like the Lua library's: ``CODE state=.. key=.. op=..: msg``
    (what the caller passed is shown bounded)."""
    st = state if isinstance(state, str) and len(state) <= SHOW_MAX else show(state)
    where = f"state={st}"
    if key is not None:
        where += f" key={show(key)}"
    if op is not None:
        where += f" op={show(op)}"
    text = f"{cls.code} {where}: {msg}"
    return cls(text, state=st, key=show(key) if key is not None else "?", op=show(op) if op is not None else "?")


#: Redis's error replies that mean "not now, nothing was done": redis-py's classes, and
#: the first word of the reply (the library adds UNAVAILABLE and GAP, cogs/protocol.py)
_TRANSIENT_CLASSES = (
    rexc.BusyLoadingError,
    rexc.ReadOnlyError,
    rexc.TryAgainError,
    rexc.ClusterDownError,
    rexc.MasterDownError,
    rexc.OutOfMemoryError,
)


def from_redis(e: BaseException, addr: str) -> CogsError:
    """The one boundary: a failed call to node ``addr`` (an error reply or a network
    error) as a cogs error. Transient replies and network errors become
    :class:`CoordinatorUnavailable` (the caller retries); the rest say what refused."""
    if isinstance(e, CogsError):
        return e
    if isinstance(e, _TRANSIENT_CLASSES):  # redis-py strips the code (READONLY, LOADING, ...) from the text
        return CoordinatorUnavailable(f"node {addr}: {getattr(e, 'status_code', None) or type(e).__name__} {e}")
    if isinstance(e, NETWORK_ERRORS):
        return CoordinatorUnavailable(f"coordinator node {addr}: {e}")
    if isinstance(e, rexc.AuthenticationError | rexc.NoPermissionError):
        return CogsError(f"node {addr} refused the credentials or the command: {e}")
    msg = str(e)
    code = msg.split(" ", 1)[0]
    if code in TRANSIENT or "cluster is down" in msg:
        return CoordinatorUnavailable(f"node {addr}: {msg}")
    if code == "OUTDATED":
        return LibraryOutdated(f"node {addr}: {msg[9:]}")
    if "Function not found" in msg or "Library not found" in msg:
        return LibraryOutdated(f"the cogs library is not loaded on node {addr}: run {LOAD_HINT}")
    if code == "BAD_FRAME":
        return BadFrame(f"node {addr}: {msg}")
    if code == OverLimit.code:
        return OverLimit(f"node {addr}: {msg}")
    if code in (CHANNEL_LOST, CHANNEL_DUP_UNKNOWN):
        return ChannelError(code, f"node {addr}: {msg}")
    return CogsError(f"node {addr}: {msg}")


class ChannelError(CogsError):
    """A numbered batch refused by its channel's record (lua/once.lua), by code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)
