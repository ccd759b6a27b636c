"""The history checker: what a run's history, final states and alerts prove (pure, no Redis).

Independent of the proxy: it trusts only what the load generators saw (invocation and
completion times, results and errors), the final state read back afterwards, and the
alerts stored at the coordinator. Every counter update is ``add 1`` of a known key,
so sums are exact:

(a) **acknowledged updates lost.** Per key, ``acked`` updates were confirmed (``ok``),
    ``info`` may or may not have applied (DeliveryTimeout, a lost connection, never
    answered). The final value is ``acked_applied + info_applied``, so the acknowledged
    updates lost lie in ``[max(0, acked - final), min(acked, acked - final + info)]``:
    both bounds are reported, per proxy mode. A mode with a proven loss must have
    reported one (``AckedLost`` events): otherwise the loss was silent.
(b) **applied twice.** ``final > acked + info`` proves ``final - acked - info`` updates
    applied twice (``fail`` ones never apply).
(c) **stale reads.** A read invoked at ``t`` must not return a value older than the
    last write acknowledged before ``t - bound`` (``bound``: the state's staleness
    bound; 0 for a state read at its owner). Counters: a value below that write's
    result. Indirect values (unique tokens): the value of a write that completed
    before that write was even invoked. A read of a value nobody wrote is a phantom.
    Keys whose acknowledged updates were lost (a) are not judged: their value went
    back, which (a) already counts.
(d) **alerts**: at most one per key per window (repeats), and one for every key whose
    final count reached the threshold (missing).
(e) **every call answered within its bound**: ops never completed, or completed later
    than the bound of their kind.

Plus, when a heal time is given, **recovery**: seconds from the heal to the first
successful flush of every proxy and the first successful op on every key written.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cogs.faults.history import COUNTER_KINDS, History, Op

EXAMPLES = 5  # violations quoted per property


@dataclass(frozen=True)
class Bounds:
    """What the checked system promises: per op kind, the longest a call may take
    (s; a kind not named has no bound); per state, how stale a read may be (s)."""

    calls: Mapping[str, float]
    staleness: Mapping[str, float]


@dataclass
class ModeFigures:
    """Counter accounting of one proxy mode (a)(b)."""

    keys: int = 0
    acked: int = 0
    info: int = 0
    failed: int = 0
    final: int = 0
    lost_min: int = 0
    lost_max: int = 0
    applied_twice: int = 0
    lost_reports: int = 0  # AckedLost events the proxies of this mode raised
    lost_reported_ops: int = 0
    #: a proven loss without an AckedLost report in this mode
    unreported_loss: bool = False


@dataclass
class Report:
    modes: dict[str, ModeFigures] = field(default_factory=dict)
    #: (c)
    reads_judged: int = 0
    stale_reads: int = 0  # older than their bound allows
    stale_within_bound: int = 0  # older than the last acknowledged write, within the bound
    #: per state, the oldest value a read returned: seconds since the first write it missed
    max_staleness_s: dict[str, float] = field(default_factory=dict)
    phantom_reads: int = 0
    reads_absent: int = 0  # a read of nothing after a write was acknowledged (an owner lost its value)
    reads_unjudged: int = 0  # of keys that lost acknowledged updates
    #: (d)
    alert_keys: int = 0
    alerts_repeated: int = 0
    alerts_missing: int = 0
    alerts_unexpected: int = 0
    #: (e)
    calls: int = 0
    calls_never_answered: int = 0
    calls_late: int = 0
    #: kind -> calls of that kind never answered or answered past their bound
    unanswered_by_kind: dict[str, int] = field(default_factory=dict)
    longest_call_s: dict[str, float] = field(default_factory=dict)
    #: "proc kind" -> the longest call of that kind by that process
    longest_by_proc: dict[str, float] = field(default_factory=dict)
    #: from the heal to every proxy's first good flush and every key's first good op
    recovery_s: float | None = None
    not_recovered: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def calls_unanswered(self) -> int:
        """(e): calls never answered plus those answered past their bound."""
        return self.calls_never_answered + self.calls_late

    def lost(self, mode: str) -> int:
        """Acknowledged updates proven lost in ``mode`` (the lower bound)."""
        m = self.modes.get(mode)
        return m.lost_min if m else 0

    @property
    def applied_twice(self) -> int:
        return sum(m.applied_twice for m in self.modes.values())

    def note(self, what: str, text: str) -> None:
        shown = self.examples.setdefault(what, [])
        if len(shown) < EXAMPLES:
            shown.append(text)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["calls_unanswered"] = self.calls_unanswered
        out["applied_twice"] = self.applied_twice
        return out


Final = Mapping[tuple[str, str], int | None]


def check(
    history: History,
    final: Final,
    *,
    bounds: Bounds,
    alerts: Mapping[str, int] | None = None,
    alert_state: str = "",
    threshold: int | None = None,
    heal: float | None = None,
) -> Report:
    """Check everything (a)-(e) on one run. ``final``: (state, key) -> the value read
    back after the run (None: absent, 0); ``alerts``: key -> alerts stored for it in
    ``alert_state`` (whose checker fires at ``threshold``); ``heal``: when the fault
    was healed (monotonic), for recovery."""
    r = Report()
    lossy = counters(history, final, r)
    stale_reads(history, bounds.staleness, lossy, r)
    if alerts is not None and threshold is not None:
        check_alerts(history, final, alerts, alert_state, threshold, r)
    calls(history, bounds.calls, r)
    if heal is not None:
        recovery(history, heal, r)
    return r


# -- (a) and (b) -------------------------------------------------------------------------------


def counters(history: History, final: Final, r: Report) -> set[tuple[str, str]]:
    """Fill the per-mode accounting; the (state, key)s that lost acknowledged updates."""
    tally: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # acked, info, failed
    for o in history.of(*COUNTER_KINDS):
        col = {"ok": 0, "fail": 2}.get(o.result or "", 1)  # never answered: may have applied
        for key, n in o.deltas().items():
            tally[(o.mode, o.state, key)][col] += n
    lossy: set[tuple[str, str]] = set()
    for (mode, state, key), (acked, info, failed) in sorted(tally.items()):
        m = r.modes.setdefault(mode, ModeFigures())
        got = final.get((state, key)) or 0
        lost_min = max(0, acked - got)
        m.keys += 1
        m.acked += acked
        m.info += info
        m.failed += failed
        m.final += got
        m.lost_min += lost_min
        m.lost_max += max(0, min(acked, acked - got + info))
        twice = max(0, got - acked - info)
        m.applied_twice += twice
        if lost_min:
            lossy.add((state, key))
            r.note("acked_lost", f"{mode} {state}[{key}]: {acked} acknowledged, {info} indeterminate, final {got}")
        if twice:
            r.note("applied_twice", f"{mode} {state}[{key}]: {acked} acknowledged + {info} indeterminate < final {got}")
    for ev in history.events:
        if ev.get("ev") == "acked_lost":
            m = r.modes.setdefault(str(ev.get("m")), ModeFigures())
            m.lost_reports += 1
            m.lost_reported_ops += int(ev.get("ops") or 0)
    for mode, m in r.modes.items():
        m.unreported_loss = m.lost_min > 0 and m.lost_reports == 0
        if m.unreported_loss:
            r.note("unreported_loss", f"{mode}: {m.lost_min} acknowledged updates lost, no AckedLost reported")
    return lossy


# -- (c) -----------------------------------------------------------------------------------------


class _Writes:
    """Acknowledged writes of one key in completion order, with running maxima:
    of counter results, and of invocation times (for indirect values). Both maxima
    only grow, so the first write past a value is found by bisection."""

    def __init__(self, ops: list[Op]) -> None:
        ops = sorted(ops, key=lambda o: o.ended)
        self.ends = [o.ended for o in ops]
        self.max_value: list[float] = []
        self.max_invoke: list[float] = []
        v, t = -math.inf, -math.inf
        for o in ops:
            if isinstance(o.value, int):
                v = max(v, o.value)
            t = max(t, o.invoke)
            self.max_value.append(v)
            self.max_invoke.append(t)

    def missed(self, maxima: list[float], seen: float, t: float) -> float | None:
        """When the first write acknowledged before ``t`` whose running maximum passes
        ``seen`` was acknowledged (what a read at ``t`` that saw ``seen`` missed); None: none."""
        i = bisect.bisect_right(maxima, seen)
        return self.ends[i] if i < len(self.ends) and self.ends[i] < t else None


def stale_reads(history: History, staleness: Mapping[str, float], lossy: set[tuple[str, str]], r: Report) -> None:
    """How old each read's value was: from the first acknowledged write it missed to
    the read's invocation; stale past the state's bound."""
    writes: dict[tuple[str, str], list[Op]] = defaultdict(list)
    tokens: dict[str, Op] = {}
    for o in history.of("inc", "oset"):
        if o.result == "ok":
            writes[(o.state, o.key)].append(o)
        if o.kind == "oset":
            tokens[o.token] = o
    index = {k: _Writes(v) for k, v in writes.items()}
    for o in history.of("read", "oget"):
        if o.result != "ok" or o.complete is None:
            continue
        k = (o.state, o.key)
        if k in lossy:
            r.reads_unjudged += 1
            continue
        r.reads_judged += 1
        w = index.get(k)
        if o.kind == "read":
            got = o.value if isinstance(o.value, int) else 0
            missed = w.missed(w.max_value, got, o.invoke) if w else None
            seen = f"= {got}"
        elif o.value is None:
            missed = w.ends[0] if w and w.ends[0] < o.invoke else None
            if missed is not None:
                r.reads_absent += 1  # an owner that lost its value: fetched anew, not served old
            continue
        else:
            src = tokens.get(str(o.value))
            if src is None or src.key != o.key or src.invoke > o.ended:
                r.phantom_reads += 1
                r.note("phantom_reads", f"{o.proc} read {o.state}[{o.key}] = {str(o.value)[:64]!r}: nobody wrote it")
                continue
            missed = w.missed(w.max_invoke, src.ended, o.invoke) if w else None
            seen = f"= {o.value} (written by {src.ended:.3f})"
        if missed is None:
            continue
        age = o.invoke - missed
        r.max_staleness_s[o.state] = round(max(r.max_staleness_s.get(o.state, 0.0), age), 3)
        if age <= staleness.get(o.state, 0.0):
            r.stale_within_bound += 1
            continue
        r.stale_reads += 1
        r.note("stale_reads", f"{o.proc} {o.mode} read {o.state}[{o.key}] {seen} at {o.invoke:.3f}: {age:.3f} s "
               f"after a newer write was acknowledged (bound {staleness.get(o.state, 0.0):g} s)")  # fmt: skip


# -- (d) -----------------------------------------------------------------------------------------


def check_alerts(
    history: History, final: Final, alerts: Mapping[str, int], state: str, threshold: int, r: Report
) -> None:
    keys = {k for o in history.of("add") if o.state == state for k in o.counts}
    r.alert_keys = len(keys)
    for key in sorted(keys):
        n, got = alerts.get(key, 0), final.get((state, key)) or 0
        if n > 1:
            r.alerts_repeated += 1
            r.note("alerts_repeated", f"{state}[{key}]: {n} alerts in one window")
        if n == 0 and got >= threshold:
            r.alerts_missing += 1
            r.note("alerts_missing", f"{state}[{key}]: final {got} >= {threshold}, no alert")
        if n and got < threshold:
            r.alerts_unexpected += 1
            r.note("alerts_unexpected", f"{state}[{key}]: alerted, final {got} < {threshold}")
    r.alerts_unexpected += sum(1 for k in alerts if k not in keys)


# -- (e) and recovery ----------------------------------------------------------------------------


def calls(history: History, bound: Mapping[str, float], r: Report) -> None:
    for o in history.ops:
        r.calls += 1
        if o.complete is None:
            r.calls_never_answered += 1
            r.unanswered_by_kind[o.kind] = r.unanswered_by_kind.get(o.kind, 0) + 1
            r.note("calls_never_answered", f"{o.proc} {o.mode} {o.kind} {o.state}[{o.key}] invoked at {o.invoke:.3f}")
            continue
        d = o.duration
        r.longest_call_s[o.kind] = round(max(r.longest_call_s.get(o.kind, 0.0), d), 3)
        who = f"{o.proc} {o.kind}"
        r.longest_by_proc[who] = round(max(r.longest_by_proc.get(who, 0.0), d), 3)
        if d > bound.get(o.kind, math.inf):
            r.calls_late += 1
            r.unanswered_by_kind[o.kind] = r.unanswered_by_kind.get(o.kind, 0) + 1
            r.note("calls_late", f"{o.proc} {o.mode} {o.kind} {o.state}[{o.key}] took {d:.2f} s "
                   f"(bound {bound[o.kind]:g} s), {o.result} {o.error[:80]}")  # fmt: skip


def recovery(history: History, heal: float, r: Report) -> None:
    """From ``heal`` to the last of: each proxy's first flush confirmed after it, each
    written key's first write acknowledged after it (None if one never was)."""
    first: dict[str, float] = {}
    expected: set[str] = set()
    for o in history.ops:
        if o.kind == "add":
            who = f"{o.proc}/{o.mode} flush"
        elif o.kind in ("inc", "oset"):
            who = f"{o.mode} {o.state}[{o.key}]"
        else:
            continue
        expected.add(who)
        if o.result == "ok" and o.complete is not None and o.complete >= heal:
            first[who] = min(first.get(who, math.inf), o.complete)
    r.not_recovered = sorted(expected - set(first))
    for who in r.not_recovered[:EXAMPLES]:
        r.note("not_recovered", who)
    if first and not r.not_recovered:
        r.recovery_s = round(max(first.values()) - heal, 3)


def merge(reports: Iterable[Report]) -> dict[str, Any]:
    """The figures of several reports, added up (recovery: the longest)."""
    out: dict[str, Any] = {"acked_lost": {}, "applied_twice": 0, "stale_reads": 0, "calls_unanswered": 0}
    rec: list[float] = []
    for rep in reports:
        for mode, m in rep.modes.items():
            out["acked_lost"][mode] = out["acked_lost"].get(mode, 0) + m.lost_min
        out["applied_twice"] += rep.applied_twice
        out["stale_reads"] += rep.stale_reads + rep.phantom_reads
        out["calls_unanswered"] += rep.calls_unanswered
        if rep.recovery_s is not None:
            rec.append(rep.recovery_s)
    out["max_recovery_s"] = max(rec, default=None)
    return out
