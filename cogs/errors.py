"""Every error cogs raises, and the one place Redis errors become cogs errors.

The Lua library reports a failed op as ``"CODE state=.. key=.. op=..: message"``;
:func:`op_error` turns that into the matching :class:`OpError` subclass so callers
can catch what went wrong by type and still read one clear line.
"""

from __future__ import annotations


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
    """No coordinator node answered (down, unreachable, or wrong address)."""


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


class PeerError(CogsError):
    """The peer channel of indirect states failed: the owner proxy is unreachable,
    refused us (wrong secret), or sent something malformed."""


class AlertNotRecorded(OpError):
    """The update was applied but its alert could not be stored."""

    code = "ALERT"


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
    )
}


def op_error(message: str, *, state: str = "?", key: str = "?", op: str = "?") -> OpError:
    """Build the :class:`OpError` for a Lua error line ``"CODE rest"``."""
    code, _, _rest = message.partition(" ")
    return _BY_CODE.get(code, OpError)(message, state=state, key=key, op=op)


def refuse(cls: type[OpError], msg: str, *, state: str, key: object = None, op: object = None) -> OpError:
    """A client-side refusal worded like the Lua library's: ``CODE state=.. key=.. op=..: msg``."""
    where = f"state={state}"
    if key is not None:
        where += f" key={key!r}"
    if op is not None:
        where += f" op={op!r}"
    return cls(f"{cls.code} {where}: {msg}", state=state, key=str(key) if key is not None else "?", op=str(op or "?"))
