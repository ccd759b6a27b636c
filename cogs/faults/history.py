"""Histories: every operation a load generator made, as it saw it (pure, no Redis).

A load generator (:mod:`cogs.faults.load`) appends one JSON line per event to its
history file, stamped with ``time.monotonic()`` — CLOCK_MONOTONIC is one clock for
every process of a machine, network namespaces included, so histories of several
lab hosts merge without offsets:

``{"i": 7, "t": 12.3, "p": "mb1", "m": "durable", "f": "inc", "s": "faults_reg", "k": "r3"}``
    an op invoked: id (per process), time, process, proxy mode, kind, state, key;
    an ``add`` (trigger updates, then ``flush()``) names ``"n": {key: count}`` instead of ``k``,
    an ``oset`` (indirect set) its value in ``"a"``;
``{"c": 7, "t": 12.4, "p": "mb1", "r": "ok", "v": 41}``
    its completion: ``ok`` (with the value returned), ``fail`` (refused for sure:
    not applied) or ``info`` (indeterminate: a DeliveryTimeout, a lost connection;
    it may have been applied, or may be later), with ``"e"`` the error;
``{"ev": "acked_lost", "t": .., "p": .., "m": .., ...}``
    anything else the process learnt (the proxy's on_error reports, start, end).

An op with no completion line was never answered (its process hung or died).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogs.errors import CogsError

RESULTS = ("ok", "fail", "info")
KINDS = ("add", "inc", "read", "oset", "oget")
#: kinds that change a counter by a known amount (every update is ``add 1``)
COUNTER_KINDS = ("add", "inc")
MAX_SHOWN = 200  # characters of a bad line quoted in an error


class HistoryError(CogsError):
    """A history that cannot be read: the message names the file, the line and why."""


@dataclass(frozen=True)
class Op:
    """One operation: invoked at ``invoke``, completed at ``complete`` (None: never)."""

    proc: str
    id: int
    mode: str
    kind: str
    state: str
    invoke: float
    key: str = ""
    #: an ``add``: updates per key since the previous flush, all covered by this flush
    counts: dict[str, int] = field(default_factory=dict)
    arg: Any = None
    complete: float | None = None
    result: str | None = None  # ok | fail | info; None: no completion
    value: Any = None
    error: str = ""

    @property
    def duration(self) -> float:
        """Seconds from invocation to completion (infinite if it never completed)."""
        return math.inf if self.complete is None else self.complete - self.invoke

    @property
    def ended(self) -> float:
        return math.inf if self.complete is None else self.complete

    def deltas(self) -> dict[str, int]:
        """Counter updates this op carries: key -> count (``inc``: one of its key)."""
        if self.kind == "add":
            return self.counts
        return {self.key: 1} if self.kind == "inc" else {}

    @property
    def token(self) -> str:
        """What an ``oset`` writes: unique per op, so a read names the write it saw."""
        return f"{self.proc}#{self.id}"


@dataclass
class History:
    """The ops and events of one run, from every process."""

    ops: list[Op] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> History:
        h = cls()
        for p in paths:
            try:
                with open(p, encoding="utf-8") as f:
                    h.extend(f, str(p))
            except OSError as e:
                raise HistoryError(f"cannot read history {p}: {e}") from e
        return h

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "history") -> History:
        h = cls()
        h.extend(lines, source)
        return h

    def extend(self, lines: Iterable[str], source: str) -> None:
        """Add one process's lines. A last line cut short (its process killed while
        writing) is ignored; any other bad line is an error naming it."""
        invoked: dict[tuple[str, int], dict[str, Any]] = {}
        done: dict[tuple[str, int], dict[str, Any]] = {}
        rows = list(_parse(lines, source))
        for n, row in rows:
            if "i" in row:
                k = (_str(row, "p", source, n), _int(row, "i", source, n))
                if k in invoked:
                    raise HistoryError(f"{source}:{n}: op {k[1]} of {k[0]} invoked twice")
                invoked[k] = row | {"_line": n}
            elif "c" in row:
                k = (_str(row, "p", source, n), _int(row, "c", source, n))
                if k in done:
                    raise HistoryError(f"{source}:{n}: op {k[1]} of {k[0]} completed twice")
                if row.get("r") not in RESULTS:
                    raise HistoryError(f"{source}:{n}: result must be one of {', '.join(RESULTS)}")
                done[k] = row
            elif "ev" in row:
                self.events.append(row)
            else:
                raise HistoryError(f"{source}:{n}: neither an invocation, a completion nor an event")
        for k in done:
            if k not in invoked:
                raise HistoryError(f"{source}: op {k[1]} of {k[0]} completed but never invoked")
        for k, row in invoked.items():
            self.ops.append(_op(row, done.get(k), source))

    def of(self, *kinds: str) -> Iterator[Op]:
        return (o for o in self.ops if o.kind in kinds)

    def modes(self) -> list[str]:
        return sorted({o.mode for o in self.ops})


def _parse(lines: Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    pending: tuple[int, str] | None = None
    for n, line in enumerate(lines, 1):
        if pending is not None:  # a bad line followed by more: not a cut-short last line
            raise HistoryError(f"{source}:{pending[0]}: not a JSON object: {pending[1][:MAX_SHOWN]!r}")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            pending = (n, line)
            continue
        if not isinstance(row, dict):
            raise HistoryError(f"{source}:{n}: not a JSON object: {line[:MAX_SHOWN]!r}")
        yield n, row


def _str(row: dict[str, Any], name: str, source: str, n: int) -> str:
    v = row.get(name)
    if not isinstance(v, str):
        raise HistoryError(f"{source}:{n}: field {name!r} must be a string, got {str(v)[:MAX_SHOWN]!r}")
    return v


def _int(row: dict[str, Any], name: str, source: str, n: int) -> int:
    v = row.get(name)
    if type(v) is not int:
        raise HistoryError(f"{source}:{n}: field {name!r} must be an integer, got {str(v)[:MAX_SHOWN]!r}")
    return v


def _time(row: dict[str, Any], source: str, n: int) -> float:
    v = row.get("t")
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise HistoryError(f"{source}:{n}: field 't' must be a finite number, got {str(v)[:MAX_SHOWN]!r}")
    return float(v)


def _op(row: dict[str, Any], end: dict[str, Any] | None, source: str) -> Op:
    n = row["_line"]
    kind = _str(row, "f", source, n)
    if kind not in KINDS:
        raise HistoryError(f"{source}:{n}: unknown kind {kind[:40]!r} (known: {', '.join(KINDS)})")
    counts: dict[str, int] = {}
    if kind == "add":
        raw = row.get("n")
        if not isinstance(raw, dict) or not all(type(c) is int and c > 0 for c in raw.values()):
            raise HistoryError(f"{source}:{n}: an add needs 'n': {{key: count > 0}}")
        counts = raw
    invoke = _time(row, source, n)
    complete = None if end is None else _time(end, source, n)
    if complete is not None and complete < invoke:
        raise HistoryError(f"{source}:{n}: op {row['i']} completed before it was invoked")
    return Op(
        proc=row["p"], id=row["i"], mode=_str(row, "m", source, n), kind=kind, state=_str(row, "s", source, n),
        invoke=invoke, key=str(row.get("k", "")), counts=counts, arg=row.get("a"), complete=complete,
        result=None if end is None else end["r"], value=None if end is None else end.get("v"),
        error="" if end is None else str(end.get("e", ""))[:MAX_SHOWN],
    )  # fmt: skip
