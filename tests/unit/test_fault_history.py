"""The history checker on hand-made histories: one that keeps each property, and one
that breaks it, for every property (a)-(e) and recovery; bad history files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cogs.faults.check import Bounds, check
from cogs.faults.history import History, HistoryError

B = Bounds(calls={"inc": 5.0, "read": 5.0, "add": 5.0, "oset": 5.0, "oget": 5.0}, staleness={"reg": 4.0, "obj": 0.0})


class H:
    """Writes history lines as a load generator would."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def op(self, kind: str, t0: float, t1: float | None, result: str = "ok", *, proc: str = "mb1",
           mode: str = "durable", state: str = "reg", key: str = "k", value: Any = None, counts: dict[str, int] | None = None,
           arg: Any = None) -> str:  # fmt: skip
        self.n += 1
        row: dict[str, Any] = {"i": self.n, "t": t0, "p": proc, "m": mode, "f": kind, "s": state}
        if counts is not None:
            row["n"] = counts
        else:
            row["k"] = key
        if arg is not None:
            row["a"] = arg
        self.lines.append(json.dumps(row))
        if t1 is not None:
            self.lines.append(json.dumps({"c": self.n, "t": t1, "p": proc, "r": result, "v": value}))
        return f"{proc}#{self.n}"

    def event(self, **kw: Any) -> None:
        self.lines.append(json.dumps({"ev": kw.pop("ev"), **kw}))

    def history(self) -> History:
        return History.from_lines(self.lines)


# -- (a) acknowledged updates lost, (b) applied twice ------------------------------------------


def _adds(h: H, mode: str, acked: int, info: int, failed: int = 0) -> None:
    h.op("add", 1.0, 1.5, "ok", mode=mode, state="cnt", counts={"c1": acked})
    if info:
        h.op("add", 2.0, 2.5, "info", mode=mode, state="cnt", counts={"c1": info})
    if failed:
        h.op("add", 3.0, 3.5, "fail", mode=mode, state="cnt", counts={"c1": failed})


def test_exact_sums_keep_a_and_b() -> None:
    h = H()
    _adds(h, "durable", acked=10, info=3, failed=2)
    for final, hidden in ((10, 3), (11, 2), (13, 0)):  # indeterminate updates applied or not: all fine
        m = check(h.history(), {("cnt", "c1"): final}, bounds=B).modes["durable"]
        assert (m.acked, m.info, m.failed, m.lost_min, m.applied_twice) == (10, 3, 2, 0, 0)
        assert m.lost_max == hidden  # as many losses as indeterminate updates not applied could hide


def test_lost_acknowledged_updates_are_bounded_both_ways() -> None:
    h = H()
    _adds(h, "default", acked=10, info=3)
    r = check(h.history(), {("cnt", "c1"): 8}, bounds=B)
    m = r.modes["default"]
    assert (m.lost_min, m.lost_max) == (2, 5)  # 8 = (10 - lost) + (0..3 indeterminate applied)
    assert r.lost("default") == 2
    assert m.unreported_loss  # nobody said so: a silent loss
    assert "acked_lost" in r.examples
    h.event(ev="acked_lost", t=2.0, p="mb1", m="default", ops=2, batches=1)
    m = check(h.history(), {("cnt", "c1"): 8}, bounds=B).modes["default"]
    assert (m.lost_reports, m.lost_reported_ops, m.unreported_loss) == (1, 2, False)


def test_never_answered_updates_count_as_indeterminate() -> None:
    h = H()
    h.op("inc", 1.0, 1.1, "ok", key="r", value=1)
    h.op("inc", 1.2, None, key="r")  # its process died waiting: it may have applied
    r = check(h.history(), {("reg", "r"): 2}, bounds=B)
    assert (r.modes["durable"].info, r.modes["durable"].applied_twice, r.lost("durable")) == (1, 0, 0)


def test_applied_twice_is_proven_by_the_final_sum() -> None:
    h = H()
    _adds(h, "durable", acked=10, info=3, failed=5)
    r = check(h.history(), {("cnt", "c1"): 15}, bounds=B)  # a failed (refused) update never applies
    assert r.modes["durable"].applied_twice == 2
    assert r.applied_twice == 2
    assert "applied_twice" in r.examples


# -- (c) stale reads ----------------------------------------------------------------------------


def test_replica_read_older_than_an_acknowledged_write_past_the_bound() -> None:
    h = H()
    h.op("inc", 1.0, 1.1, key="r", value=1)
    h.op("inc", 2.0, 2.1, key="r", value=2)
    h.op("read", 3.0, 3.01, key="r", value=1, proc="mb2")  # within 4 s of the write: allowed
    h.op("read", 6.2, 6.21, key="r", value=2, proc="mb2")
    r = check(h.history(), {("reg", "r"): 2}, bounds=B)
    assert (r.reads_judged, r.stale_reads, r.stale_within_bound) == (2, 0, 1)
    assert r.max_staleness_s == {"reg": 0.9}  # it missed the write acknowledged at 2.1
    h.op("read", 6.3, 6.31, key="r", value=1, proc="mb2")  # 2 acknowledged at 2.1 < 6.3 - 4
    h.op("read", 7.0, 7.01, key="r", value=None, proc="mb2")  # absent: older than anything
    r = check(h.history(), {("reg", "r"): 2}, bounds=B)
    assert (r.stale_reads, r.stale_within_bound) == (2, 1)
    assert "6.300" in r.examples["stale_reads"][0]
    assert r.max_staleness_s == {"reg": 5.9}  # the absent value missed the first write, acknowledged at 1.1


def test_keys_that_lost_acknowledged_updates_are_not_judged_for_staleness() -> None:
    h = H()
    h.op("inc", 1.0, 1.1, key="r", value=1, mode="default")
    h.op("inc", 2.0, 2.1, key="r", value=2, mode="default")
    h.op("read", 9.0, 9.1, key="r", value=1, mode="default")
    r = check(h.history(), {("reg", "r"): 1}, bounds=B)  # the second was lost in a failover
    assert (r.lost("default"), r.stale_reads, r.reads_unjudged) == (1, 0, 1)


def test_indirect_reads_old_values_phantoms_and_absent() -> None:
    h = H()
    a = h.op("oset", 1.0, 1.1, state="obj", key="o", proc="mb1", mode="default")
    b = h.op("oset", 2.0, 2.1, state="obj", key="o", proc="mb2", mode="default")
    h.op("oget", 2.05, 2.2, state="obj", key="o", value=a, mode="default")  # concurrent with b: fine
    h.op("oget", 3.0, 3.1, state="obj", key="o", value=b, mode="default")
    r = check(h.history(), {}, bounds=B)
    assert (r.reads_judged, r.stale_reads, r.phantom_reads, r.reads_absent) == (2, 0, 0, 0)
    h.op("oget", 3.0, 3.1, state="obj", key="o", value=a, proc="mb1", mode="default")  # two owners: a after b
    h.op("oget", 3.0, 3.1, state="obj", key="o", value="mb9#1", mode="default")  # nobody wrote that
    h.op("oget", 3.0, 3.1, state="obj", key="o", value=None, mode="default")
    r = check(h.history(), {}, bounds=B)
    assert (r.stale_reads, r.phantom_reads, r.reads_absent) == (1, 1, 1)
    assert r.max_staleness_s == {"obj": pytest.approx(0.9)}  # a, read at 3.0, missed b (acknowledged at 2.1)


def test_indeterminate_writes_may_or_may_not_be_seen() -> None:
    h = H()
    a = h.op("oset", 1.0, 1.1, state="obj", key="o", mode="default")
    b = h.op("oset", 2.0, 9.0, "info", state="obj", key="o", mode="default")
    for seen in (a, b):
        h.op("oget", 10.0, 10.1, state="obj", key="o", value=seen, mode="default")
    assert check(h.history(), {}, bounds=B).stale_reads == 0


# -- (d) alerts -----------------------------------------------------------------------------------


def test_alerts_once_per_key() -> None:
    h = H()
    h.op("add", 1.0, 1.1, state="cnt", counts={"hot": 150, "cold": 20, "warm": 120})
    final = {("cnt", "hot"): 150, ("cnt", "cold"): 20, ("cnt", "warm"): 120}
    r = check(h.history(), final, bounds=B, alerts={"hot": 1, "warm": 1}, alert_state="cnt", threshold=100)
    assert (r.alert_keys, r.alerts_repeated, r.alerts_missing, r.alerts_unexpected) == (3, 0, 0, 0)
    r = check(h.history(), final, bounds=B, alerts={"hot": 2, "cold": 1, "x": 1}, alert_state="cnt", threshold=100)
    assert (r.alerts_repeated, r.alerts_missing, r.alerts_unexpected) == (1, 1, 2)


# -- (e) calls answered within their bound, recovery ---------------------------------------------


def test_calls_never_answered_or_late() -> None:
    h = H()
    h.op("inc", 1.0, 5.9, "info", key="r")  # DeliveryTimeout within the bound: answered
    r = check(h.history(), {("reg", "r"): 1}, bounds=B)
    assert (r.calls, r.calls_unanswered) == (1, 0)
    h.op("inc", 1.0, 7.0, "info", key="r")  # answered, but past its bound
    h.op("read", 2.0, None, key="r")  # never answered
    r = check(h.history(), {("reg", "r"): 1}, bounds=B)
    assert (r.calls_late, r.calls_never_answered, r.calls_unanswered) == (1, 1, 2)
    assert r.unanswered_by_kind == {"inc": 1, "read": 1}
    assert r.longest_call_s["inc"] == 6.0
    assert r.longest_by_proc == {"mb1 inc": 6.0}


def test_recovery_is_the_last_first_success_after_the_heal() -> None:
    h = H()
    h.op("inc", 1.0, 1.1, key="a", value=1)
    h.op("inc", 1.0, 1.1, key="b", value=1)
    h.op("add", 1.0, 1.2, state="cnt", counts={"c": 1})
    h.op("inc", 9.0, 10.5, key="a", value=2)
    h.op("add", 9.0, 12.0, state="cnt", counts={"c": 1})
    r = check(h.history(), {}, bounds=B, heal=10.0)
    assert r.not_recovered == ["durable reg[b]"]  # b was never written again
    assert r.recovery_s is None
    h.op("inc", 10.0, 13.25, key="b", value=2)
    assert check(h.history(), {}, bounds=B, heal=10.0).recovery_s == 3.25


# -- bad histories --------------------------------------------------------------------------------


def test_bad_lines_are_named(tmp_path: Path) -> None:
    bad = {
        '{"i": 1, "t": 1.0, "p": "mb1", "m": "default", "f": "nope", "s": "x", "k": "k"}': "unknown kind",
        '{"i": "1", "t": 1.0, "p": "mb1", "m": "default", "f": "inc", "s": "x", "k": "k"}': "'i' must be an integer",
        '{"i": 1, "t": "soon", "p": "mb1", "m": "default", "f": "inc", "s": "x", "k": "k"}': "'t' must be a finite",
        '{"i": 1, "t": 1.0, "p": "mb1", "m": "default", "f": "add", "s": "x", "n": {"k": 0}}': "'n': {key: count > 0}",
        '{"c": 1, "t": 1.0, "p": "mb1", "r": "ok"}': "never invoked",
        '{"what": 1}': "neither an invocation",
        "[1, 2]": "not a JSON object",
    }
    for line, why in bad.items():
        with pytest.raises(HistoryError, match=why):
            History.from_lines([line], "h.jsonl")
    with pytest.raises(HistoryError, match=r"h.jsonl:1: not a JSON object"):
        History.from_lines(["{oops", '{"ev": "end"}'], "h.jsonl")
    inv = '{"i": 1, "t": 2.0, "p": "mb1", "m": "default", "f": "inc", "s": "x", "k": "k"}'
    with pytest.raises(HistoryError, match="completed before it was invoked"):
        History.from_lines([inv, '{"c": 1, "t": 1.0, "p": "mb1", "r": "ok"}'])
    with pytest.raises(HistoryError, match="result must be one of"):
        History.from_lines([inv, '{"c": 1, "t": 3.0, "p": "mb1", "r": "maybe"}'])
    # a last line cut short (the process was killed while writing it) is left out
    h = History.from_lines([inv, '{"c": 1, "t": 3.0, "p"'])
    assert h.ops[0].complete is None
    f = tmp_path / "h.jsonl"
    f.write_text(inv + "\n")
    assert len(History.from_files([f]).ops) == 1
    with pytest.raises(HistoryError, match="cannot read history"):
        History.from_files([tmp_path / "missing.jsonl"])
