"""Lua library cases, run against fakeredis (unit tier) and a real redis-server
(integration tier) with the same assertions. Each takes a ``h`` (LuaHarness) fixture.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from tests.helpers import LuaHarness

U, UG, R, C = 0, 1, 2, 3  # modes: update, update returning state, retrieve, check


# -- int -------------------------------------------------------------------------------


def test_int_add_sub_accumulate(h: LuaHarness) -> None:
    assert h.one(UG, "cnt", "a", "add", 5) == b"5"
    h.one(U, "cnt", "a", "add", 7)
    h.one(U, "cnt", "a", "sub", 2)
    assert h.one(R, "cnt", "a", "get") == b"10"


def test_int_exact_beyond_2_53(h: LuaHarness) -> None:
    h.one(U, "cnt", "big", "add", 2**62)
    h.one(U, "cnt", "big", "add", 3)
    assert h.one(R, "cnt", "big", "get") == str(2**62 + 3).encode()


def test_int_max_min_set(h: LuaHarness) -> None:
    h.one(U, "cnt", "m", "max", 4)
    h.one(U, "cnt", "m", "max", 2)
    assert h.one(R, "cnt", "m", "get") == b"4"
    h.one(U, "cnt", "m", "min", -3)
    h.one(U, "cnt", "m", "min", 1)
    assert h.one(R, "cnt", "m", "get") == b"-3"
    h.one(U, "cnt", "m", "set", 42)
    assert h.one(R, "cnt", "m", "get") == b"42"


def test_int_missing_reads_nil(h: LuaHarness) -> None:
    assert h.one(R, "cnt", "nobody", "get") is None
    assert h.one(C, "cnt", "nobody", "eq", 0) == 1


@pytest.mark.parametrize(
    ("op", "arg", "want"),
    [("gt", 4, 1), ("gt", 5, None), ("ge", 5, 1), ("lt", 6, 1), ("le", 4, None), ("eq", 5, 1)],
)
def test_int_checks(h: LuaHarness, op: str, arg: int, want: int | None) -> None:
    h.one(U, "cnt", "c", "set", 5)
    assert (h.one(C, "cnt", "c", op, arg) or None) == want


@pytest.mark.parametrize("delta", ["abc", "1.5", "", "0x10", " 7", "99999999999999999999999"])
def test_int_non_numeric_delta_is_refused(h: LuaHarness, delta: str) -> None:
    h.one(U, "cnt", "d", "add", 1)
    err = h.error(U, "cnt", "d", "add", delta)
    assert err.startswith('BAD_DELTA state=cnt key="d" op="add"')
    assert h.one(R, "cnt", "d", "get") == b"1"


def test_int_float_and_bool_deltas_refused(h: LuaHarness) -> None:
    for raw in ("1.5", "true", "[1]"):
        payload = f'[0,{h.catalog.index("cnt")},"add",1,"f",{raw}]'
        reply = h.raw(payload)
        assert reply[0] == 0
        assert reply[1][1].decode().startswith("BAD_DELTA"), reply
    assert h.one(R, "cnt", "f", "get") is None


def test_int_overflow_is_refused(h: LuaHarness) -> None:
    h.one(U, "cnt", "o", "set", 2**53 - 1)
    h.one(U, "cnt", "o", "add", str(2**63 - 2**53))
    err = h.error(U, "cnt", "o", "add", 1)
    assert err.startswith("OVERFLOW")
    assert h.one(R, "cnt", "o", "get") == str(2**63 - 1).encode()


# -- string ----------------------------------------------------------------------------


def test_string_set_append_len(h: LuaHarness) -> None:
    h.one(U, "note", "n", "set", "ab")
    assert h.one(UG, "note", "n", "append", "cd") == b"abcd"
    assert h.one(R, "note", "n", "len") == 4
    assert h.one(C, "note", "n", "eq", "abcd") == 1


def test_string_oversize_append_leaves_value(h: LuaHarness) -> None:
    h.one(U, "note", "n", "set", "12345678")
    err = h.error(U, "note", "n", "append", "xyz")
    assert err.startswith("OVERSIZE")
    assert "limit 10" in err
    assert h.one(R, "note", "n", "get") == b"12345678"
    assert h.error(U, "note", "n", "set", "x" * 11).startswith("OVERSIZE")


# -- set -------------------------------------------------------------------------------


def test_set_add_remove_members(h: LuaHarness) -> None:
    h.one(U, "tags", "s", "add", "a")
    h.one(U, "tags", "s", "add", ["b", "c", "a"])
    h.one(U, "tags", "s", "remove", "b")
    assert sorted(h.one(R, "tags", "s", "members")) == [b"a", b"c"]
    assert h.one(R, "tags", "s", "card") == 2
    assert h.one(R, "tags", "s", "contains", "c") == 1
    assert h.one(C, "tags", "s", "contains", "b") == 0


def test_set_max_items_is_all_or_nothing(h: LuaHarness) -> None:
    h.one(U, "tags", "s", "add", ["a", "b", "c"])
    err = h.error(U, "tags", "s", "add", ["a", "d", "e"])
    assert err.startswith("OVERSIZE")
    assert "limit 4" in err
    assert h.one(R, "tags", "s", "card") == 3
    h.one(U, "tags", "s", "add", ["a", "d"])  # one new member fits
    assert h.one(R, "tags", "s", "card") == 4


def test_set_oversize_member_in_list_adds_nothing(h: LuaHarness) -> None:
    err = h.error(U, "tags", "s", "add", ["ok", "x" * 65])
    assert err.startswith("OVERSIZE")
    assert h.one(R, "tags", "s", "card") == 0


def test_set_large_coalesced_insert(h: LuaHarness) -> None:
    members = [str(i) for i in range(2500)]  # more than one unpack() chunk
    h.one(U, "ports", "big", "add", members)
    assert h.one(R, "ports", "big", "card") == 2500


# -- map -------------------------------------------------------------------------------


def test_map_set_incr_del(h: LuaHarness) -> None:
    h.one(U, "qtypes", "c", "set", {"name": "x"})
    h.one(U, "qtypes", "c", "incr", {"all": 2})
    h.one(U, "qtypes", "c", "incr", ["all", 1, "odd", 1])
    h.one(U, "qtypes", "c", "del", "name")
    flat = h.one(R, "qtypes", "c", "all")
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == {b"all": b"3", b"odd": b"1"}
    assert h.one(R, "qtypes", "c", "field", "all") == b"3"
    assert h.one(R, "qtypes", "c", "len") == 2
    assert h.one(C, "qtypes", "c", "has", "odd") == 1


@pytest.mark.parametrize("delta", [["a"], "notamap", {"a": "x"}, ["a", 1, "b"]])
def test_map_incr_bad_delta_untouched(h: LuaHarness, delta: object) -> None:
    h.one(U, "qtypes", "c", "incr", {"a": 1})
    err = h.error(U, "qtypes", "c", "incr", delta)
    assert err.startswith("BAD_DELTA")
    assert h.one(R, "qtypes", "c", "field", "a") == b"1"


def test_map_max_items(h: LuaHarness) -> None:
    h.one(U, "fields", "f", "set", {"a": "1", "b": "2", "c": "3"})
    assert h.error(U, "fields", "f", "set", {"d": "4"}).startswith("OVERSIZE")
    h.one(U, "fields", "f", "set", {"a": "9"})  # overwriting an existing field fits
    assert h.one(R, "fields", "f", "field", "a") == b"9"


# -- hll (the user-defined type example) -----------------------------------------------


def test_hll_counts_distinct_approximately(h: LuaHarness) -> None:
    h.one(U, "distinct", "d", "add", [f"m{i}" for i in range(40)])
    h.one(U, "distinct", "d", "add", [f"m{i}" for i in range(40)])  # repeats add nothing
    n = h.one(R, "distinct", "d", "count")
    assert 38 <= n <= 42


# -- checkers and alerts -----------------------------------------------------------------


def test_threshold_alerts_once(h: LuaHarness) -> None:
    for _ in range(4):
        h.one(U, "hits", "10.0.0.1", "add", 3)
    alerts = h.alerts()
    assert len(alerts) == 1
    a = alerts[0]
    assert (a["state"], a["key"], a["value"], a["checker"]) == (
        "hits",
        "10.0.0.1",
        "12",
        "threshold",
    )
    assert json.loads(a["params"]) == {"threshold": 10}
    assert int(a["time"]) > 1_600_000_000_000


def test_cardinality_once_per_window_and_marker_expires_with_state(h: LuaHarness) -> None:
    for port in range(10):
        h.one(U, "ports", "scanner", "add", str(port))
    assert [a["value"] for a in h.alerts()] == ["3"]
    ttl_state = h.one(R, "ports", "scanner", "ttl")
    assert 290_000 < ttl_state <= 300_000
    marker_ttl = h.r.pttl("cogs:ports:{scanner}:alerted")
    assert 0 < marker_ttl <= ttl_state + 5  # set from the state's remaining window, ms apart
    h.one(U, "ports", "scanner", "clear")  # a reset opens a new window
    for port in range(3):
        h.one(U, "ports", "scanner", "add", str(port))
    assert len(h.alerts()) == 2


def test_repeated_member_does_not_run_checker(h: LuaHarness) -> None:
    h.one(U, "ports", "k", "add", ["1", "2", "3"])
    h.r.delete("cogs:ports:{k}:alerted")
    h.one(U, "ports", "k", "add", "1")  # unchanged set: no checker, no new alert
    assert len(h.alerts()) == 1


def test_ratio_checker_respects_min_denominator(h: LuaHarness) -> None:
    h.one(U, "qtypes", "cli", "incr", {"odd": 3, "all": 3})
    assert h.alerts() == []
    h.one(U, "qtypes", "cli", "incr", {"all": 1})
    [a] = h.alerts()
    assert a["checker"] == "ratio"
    assert float(a["value"]) == pytest.approx(0.75)


def test_rate_checker(h: LuaHarness) -> None:
    h.one(U, "rate", "r", "add", 2)
    assert h.alerts() == []
    h.one(U, "rate", "r", "add", 4)  # 6 events within the first second: 6/s >= 5/s
    [a] = h.alerts()
    assert float(a["value"]) >= 5


def test_hll_cardinality_alert(h: LuaHarness) -> None:
    h.one(U, "distinct", "dom", "add", [f"s{i}" for i in range(60)])
    assert [a["state"] for a in h.alerts()] == ["distinct"]


def test_check_runs_checker_without_alerting(h: LuaHarness) -> None:
    h.one(U, "cnt", "x", "add", 1)
    h.one(U, "hits", "k", "add", 5)
    assert h.one(C, "hits", "k", "checker") == 0
    h.r.set("cogs:hits:{k}", 11)
    assert h.one(C, "hits", "k", "checker") == 1
    assert h.alerts() == []


def test_alerts_explain_themselves(h: LuaHarness) -> None:
    """Every checker records the figures that crossed its threshold and says so in one line."""
    for _ in range(4):
        h.one(U, "hits", "10.0.0.1", "add", 3)
    for port in range(5):
        h.one(U, "ports", "10.0.0.2>10.0.0.9", "add", str(port))
    h.one(U, "qtypes", "10.0.0.3", "incr", {"odd": 3, "all": 3})
    h.one(U, "qtypes", "10.0.0.3", "incr", {"all": 1})
    h.one(U, "rate", "r", "add", 6)
    h.one(U, "distinct", "dom", "add", [f"s{i}" for i in range(60)])
    got = {a["state"]: a for a in h.alerts()}
    hits, ports, qtypes, rate, distinct = (got[s] for s in ("hits", "ports", "qtypes", "rate", "distinct"))
    assert hits["msg"] == "hits[10.0.0.1]: 12 >= 10"  # no window: nothing about one
    assert json.loads(hits["figures"]) == {"n": 12}
    assert (hits["n"], hits["opened"]) == ("12", "0")
    assert ports["msg"].startswith("ports[10.0.0.2>10.0.0.9]: 3 distinct members >= 3 in ")
    assert ports["msg"].endswith(" of a 5m window")
    assert 0 <= int(ports["time"]) - int(ports["opened"]) < 60_000  # opened with the state's first update
    assert qtypes["msg"] == "qtypes[10.0.0.3]: odd/all = 3/4 = 75% >= 50% (all >= 4)"
    assert json.loads(qtypes["figures"]) == {"n": 3, "d": 4, "ratio": 0.75}
    assert qtypes["n"] == "3"
    assert rate["msg"].startswith("rate[r]: 6 in 1s = 6/s >= 5/s (at least 3 events) in ")
    assert rate["msg"].endswith(" of a 10s window")
    assert json.loads(rate["figures"])["n"] == 6
    assert distinct["msg"].startswith("distinct[dom]: ")
    assert " distinct values (estimated) >= 50" in distinct["msg"]
    assert int(distinct["n"]) >= 50


def test_alert_reports_the_unescaped_key(h: LuaHarness) -> None:
    key = "sess}id=50%"
    h.one(U, "hits", key, "add", 11)
    assert [a["key"] for a in h.alerts()] == [key]
    assert h.one(R, "hits", key, "get") == b"11"


# -- windows and ttls --------------------------------------------------------------------


def test_window_is_set_on_creation_only(h: LuaHarness) -> None:
    h.one(U, "ports", "w", "add", "1")
    h.r.pexpire("cogs:ports:{w}", 1000)
    h.one(U, "ports", "w", "add", "2")  # later updates keep the window's end
    assert h.one(R, "ports", "w", "ttl") <= 1000


def test_direct_ttl_refreshed_on_access(h: LuaHarness) -> None:
    h.one(U, "mapping", "f", "set", "1.2.3.4:5000")
    h.r.pexpire("cogs:mapping:{f}", 500)
    assert h.one(R, "mapping", "f", "get") == b"1.2.3.4:5000"
    assert h.one(R, "mapping", "f", "ttl") > 50_000


def test_clear_and_exists(h: LuaHarness) -> None:
    h.one(U, "cnt", "e", "add", 1)
    assert h.one(R, "cnt", "e", "exists") == 1
    assert h.one(UG, "cnt", "e", "clear") is None  # the new state: gone
    assert h.one(R, "cnt", "e", "exists") == 0


# -- bad input -------------------------------------------------------------------------


def test_unknown_state_index(h: LuaHarness) -> None:
    reply = h.raw('[0,999,"add",1,"k","1"]')
    assert reply[0] == 0
    assert reply[1][1].decode().startswith("UNKNOWN_STATE")


def test_indirect_state_values_are_not_in_the_coordinator(h: LuaHarness) -> None:
    err = h.error(R, "objects", "http://x/", "get", pid="p1")
    assert err.startswith("BAD_FRAME")
    assert "locate, claim, owner, forget" in err


@pytest.mark.parametrize(("mode", "op"), [(U, "push"), (R, "pop"), (C, "near"), (U, "get")])
def test_unknown_op(h: LuaHarness, mode: int, op: str) -> None:
    assert h.error(mode, "cnt", "k", op, 1).startswith("UNKNOWN_OP state=cnt")


@pytest.mark.parametrize("key", ['""', '"}x"', f'"{"k" * 513}"', "12", "null"])
def test_bad_key(h: LuaHarness, key: str) -> None:
    reply = h.raw(f'[0,{h.catalog.index("cnt")},"add",1,{key},"1"]')
    assert reply[0] == 0
    assert reply[1][1].decode().startswith("BAD_KEY")


def test_bad_mode(h: LuaHarness) -> None:
    reply = h.raw(f'[7,{h.catalog.index("cnt")},"add",1,"k","1"]')
    assert reply[1][1].decode().startswith("BAD_FRAME")


@pytest.mark.parametrize(
    "payload",
    ["[1,2", "{}", '"x"', "[0,1,2]", "", '[0,1,"add",2,"k","1"]', '[0,1,"add",-1]', '[0,1,"add","1","k","1"]'],
)
def test_malformed_frame(h: LuaHarness, payload: str) -> None:
    h.one(U, "cnt", "k", "add", 5)
    with pytest.raises(Exception, match="BAD_FRAME"):
        h.raw(payload)
    assert h.one(R, "cnt", "k", "get") == b"5"  # a malformed frame applies nothing


def test_runs_of_many_ops(h: LuaHarness) -> None:
    sidx = h.catalog.index("cnt")
    reply = h.raw(
        json.dumps([0, sidx, "add", 3, "a", "1", "b", "2", "a", "3", 2, sidx, "get", 2, "a", None, "b", None])
    )
    assert reply[0] == 5
    assert reply[2] == [3, b"4", 4, b"2"]


def test_alert_stream_must_be_a_cogs_key(h: LuaHarness) -> None:
    with pytest.raises(Exception, match="BAD_FRAME"):
        h.raw("[]", stream="victim")


def test_outdated_token_refused_before_anything(h: LuaHarness) -> None:
    payload = json.dumps(h.op(U, "cnt", "k", "add", 1))
    with pytest.raises(Exception, match="OUTDATED"):
        h.raw(payload, token="0000:1111")
    assert h.one(R, "cnt", "k", "get") is None


def test_wrong_type_written_outside_cogs(h: LuaHarness) -> None:
    h.r.sadd("cogs:cnt:{alien}", "x")
    assert h.error(U, "cnt", "alien", "add", 1).startswith("WRONGTYPE")
    assert h.r.smembers("cogs:cnt:{alien}") == {b"x"}


def test_bad_ops_do_not_disturb_good_ones(h: LuaHarness) -> None:
    reply = h.batch(
        h.op(U, "cnt", "k", "add", 1),
        h.op(U, "cnt", "k", "add", "zz"),
        h.op(U, "tags", "s", "add", "x" * 100),
        h.op(U, "cnt", "k", "add", 2),
        h.op(R, "cnt", "k", "get"),
    )
    assert reply.applied == 3
    assert sorted(reply.errors) == [1, 2]
    assert reply.results == {4: b"3"}
    assert h.one(R, "tags", "s", "card") == 0


def test_order_kept_per_key_within_a_batch(h: LuaHarness) -> None:
    reply = h.batch(
        h.op(U, "cnt", "k", "set", 10),
        h.op(R, "cnt", "k", "get"),
        h.op(U, "cnt", "k", "add", 5),
        h.op(UG, "cnt", "k", "sub", 1),
        h.op(U, "tags", "s", "add", "a"),
        h.op(U, "tags", "s", "remove", "a"),
        h.op(R, "tags", "s", "card"),
    )
    assert reply.errors == {}
    assert reply.results == {1: b"10", 3: b"14", 6: 0}


# -- replica mode (direct states): versions, replica reference table, discards ---------

RR = 4  # mode: retrieve leaving a replica


def _discards(h: LuaHarness, pid: str, fn: object) -> list[list[object]]:
    """Run fn() while subscribed to the proxy's discard channel; return the messages."""
    ps = h.r.pubsub()
    ps.subscribe(f"cogs:discard:{pid}")
    ps.get_message(timeout=1)  # the subscribe confirmation
    fn()  # type: ignore[operator]
    out = []
    while (m := ps.get_message(timeout=0.2)) is not None:
        if m["type"] == "message":
            out.append(json.loads(m["data"]))
    ps.close()
    return out


def test_replica_retrieve_registers_holder_and_returns_version(h: LuaHarness) -> None:
    h.one(U, "nat", "f1", "set", 7)
    value, version, pttl = h.one(RR, "nat", "f1", "get", pid="p1")
    assert value == b"7"
    assert version > 1_600_000_000_000_000  # microseconds: monotonic across expiry
    assert pttl == -1
    assert h.r.smembers("cogs:nat:{f1}:r") == {b"p1"}


def test_replica_update_discards_exactly_the_holders(h: LuaHarness) -> None:
    h.one(U, "nat", "f1", "set", 1)
    _, v1, _ = h.one(RR, "nat", "f1", "get", pid="p1")
    h.one(RR, "nat", "f1", "get", pid="p2")
    h.one(RR, "nat", "other", "get", pid="p3")
    got: list[list[Any]] = []
    msgs = _discards(h, "p1", lambda: got.append(h.one(UG, "nat", "f1", "add", 5)))
    value, v2 = got[0]
    assert value == b"6"
    assert v2 > v1
    assert msgs == [[h.catalog.index("nat"), "f1", str(v2)]]
    assert h.r.exists("cogs:nat:{f1}:r") == 0  # the entry is cleared
    assert h.r.smembers("cogs:nat:{other}:r") == {b"p3"}  # not touched
    # no holders left: the next update publishes nothing to p1
    assert _discards(h, "p1", lambda: h.one(U, "nat", "f1", "add", 1)) == []


def test_replica_discards_batched_per_holder(h: LuaHarness) -> None:
    for k in ("a", "b", "c"):
        h.one(RR, "nat", k, "get", pid="p1")
    msgs = _discards(h, "p1", lambda: h.batch(*(h.op(U, "nat", k, "add", 1) for k in ("a", "b", "c"))))
    assert len(msgs) == 1
    assert msgs[0][1::3] == ["a", "b", "c"]


def test_replica_version_never_goes_back(h: LuaHarness) -> None:
    h.one(U, "natttl", "k", "set", "x")
    _, v1, pttl = h.one(RR, "natttl", "k", "get", pid="p1")
    assert 0 < pttl <= 60_000
    assert 0 < h.r.pttl("cogs:natttl:{k}:v") <= 60_000  # expires with the state
    h.r.delete("cogs:natttl:{k}", "cogs:natttl:{k}:v", "cogs:natttl:{k}:r")  # as if expired
    value, v2 = h.one(UG, "natttl", "k", "set", "y")
    assert value == b"y"
    assert v2 > v1


def test_replica_retrieve_of_absent_state(h: LuaHarness) -> None:
    assert h.one(RR, "nat", "none", "get", pid="p9") == [None, 0, -2]
    msgs = _discards(h, "p9", lambda: h.one(U, "nat", "none", "add", 1))
    assert msgs[0][1] == "none"


def test_replica_clear_discards(h: LuaHarness) -> None:
    h.one(U, "nat", "c", "set", 3)
    h.one(RR, "nat", "c", "get", pid="p1")
    msgs = _discards(h, "p1", lambda: h.one(U, "nat", "c", "clear"))
    assert msgs[0][1] == "c"


def test_replica_retrieve_needs_pid_and_replica_state(h: LuaHarness) -> None:
    reply = h.batch(h.op(RR, "nat", "k", "get"))
    assert reply.errors[0].startswith("BAD_FRAME")
    reply = h.batch(h.op(RR, "mapping", "k", "get"), pid="p1")
    assert "replica-mode" in reply.errors[0]
    with pytest.raises(Exception, match="BAD_FRAME proxy id"):
        h.raw("[]", pid="bad id!")
    with pytest.raises(Exception, match="BAD_FRAME proxy id"):
        h.raw("[]", pid="p" * 65)


# -- exactly-once batches (once.lua) ---------------------------------------------------


S1, S2 = "a" * 32, "b" * 32  # two proxy sessions


def _add(h: LuaHarness, key: str, n: int) -> str:
    return json.dumps([0, h.catalog.index("cnt"), "add", 1, key, str(n)])


def test_numbered_batches_apply_in_order_exactly_once(h: LuaHarness) -> None:
    frame = _add(h, "once", 5)
    first = h.raw(frame, pid="p1", numbered=(S1, 1, 0))
    again = h.raw(frame, pid="p1", numbered=(S1, 1, 0))
    assert first[0] == 1
    assert again == first  # a re-send gets the first reply, and nothing applies twice
    assert h.one(R, "cnt", "once", "get") == b"5"
    h.raw(frame, pid="p1", numbered=(S1, 2, 1))
    assert h.one(R, "cnt", "once", "get") == b"10"
    # another session (a restart with the same proxy id) has its own numbering
    h.raw(frame, pid="p1", numbered=(S2, 1, 0))
    assert h.one(R, "cnt", "once", "get") == b"15"


def test_a_batch_past_a_missing_one_is_refused_and_changes_nothing(h: LuaHarness) -> None:
    h.raw(_add(h, "gap", 1), pid="p1", numbered=(S1, 1, 0))
    with pytest.raises(Exception, match=r"^GAP 2"):  # 2 never arrived: 3 must wait for it
        h.raw(_add(h, "gap", 100), pid="p1", numbered=(S1, 3, 1))
    assert h.one(R, "cnt", "gap", "get") == b"1"
    h.raw(_add(h, "gap", 10), pid="p1", numbered=(S1, 2, 1))
    h.raw(_add(h, "gap", 100), pid="p1", numbered=(S1, 3, 1))
    assert h.one(R, "cnt", "gap", "get") == b"111"


def test_an_unseen_session_never_counts_as_applied(h: LuaHarness) -> None:
    # the node lost this session's record (a failover before replication): batch 5
    # with ack 4 must not be taken for applied, nor applied over a hole
    with pytest.raises(Exception, match=r"^LOST 0"):
        h.raw(_add(h, "lost", 1), pid="p1", numbered=(S1, 5, 4))
    assert h.one(R, "cnt", "lost", "get") is None
    h.raw(_add(h, "lost", 1), pid="p1", numbered=(S1, 5, 4), resync=True)  # the proxy reported the loss
    assert h.one(R, "cnt", "lost", "get") == b"1"
    again = h.raw(_add(h, "lost", 1), pid="p1", numbered=(S1, 5, 4))
    assert again[0] == 1
    assert h.one(R, "cnt", "lost", "get") == b"1"


def test_a_resent_batch_gets_its_first_reply_until_acked(h: LuaHarness) -> None:
    sidx = h.catalog.index("cnt")
    frame = json.dumps([1, sidx, "add", 1, "r", "2", 0, sidx, "add", 1, "r", "zz"])
    first = h.raw(frame, pid="p1", numbered=(S1, 1, 0))
    assert h.raw(frame, pid="p1", numbered=(S1, 1, 0)) == first
    assert first[2] == [0, b"2"]
    assert first[1][0] == 1
    assert h.one(R, "cnt", "r", "get") == b"2"
    h.raw("[]", pid="p1", numbered=(S1, 2, 1))  # acks 1: its reply is dropped
    with pytest.raises(Exception, match=r"^DUP_UNKNOWN"):
        h.raw(frame, pid="p1", numbered=(S1, 1, 0))
    assert h.one(R, "cnt", "r", "get") == b"2"


def test_a_malformed_numbered_batch_spends_its_number(h: LuaHarness) -> None:
    with pytest.raises(Exception, match="BAD_FRAME ops"):
        h.raw("[1, 2", pid="p1", numbered=(S1, 1, 0))
    h.raw(_add(h, "next", 1), pid="p1", numbered=(S1, 2, 0))  # no GAP: batch 1 has its outcome
    assert h.one(R, "cnt", "next", "get") == b"1"


@pytest.mark.parametrize(
    ("session", "seq", "ack"),
    [("x" * 32, "1", "0"), ("a" * 31, "1", "0"), (S1, "x", "0"), (S1, "1.5", "0"), (S1, "1" * 16, "0"),
     (S1, "0", "0"), (S1, "3", "3"), (S1, "3", "-1")],
)  # fmt: skip
def test_bad_batch_numbers(h: LuaHarness, session: str, seq: str, ack: str) -> None:
    with pytest.raises(Exception, match="BAD_FRAME a numbered batch"):
        h.r.fcall("cogs_batch", 0, h.lib.token, "cogs:alerts:{0}", "[]", "p1", session, seq, ack)


def test_release_drops_a_proxys_holder_entries(h: LuaHarness) -> None:
    h.one(4, "nat", "k1", "get", pid="p1")
    h.one(4, "nat", "k2", "get", pid="p1")
    h.one(4, "nat", "k1", "get", pid="p2")
    assert h.r.fcall("cogs_release", 0, "cogs:alerts:{0}", "p1") == 2
    assert h.r.smembers("cogs:nat:{k1}:r") == {b"p2"}
    assert not h.r.exists("cogs:nat:{k2}:r")
    assert h.r.fcall("cogs_release", 0, "cogs:alerts:{0}", "p1") == 0


def test_release_tells_every_process_with_the_id_but_the_releaser(h: LuaHarness) -> None:
    ps = h.r.pubsub()
    ps.subscribe("cogs:discard:p1")
    assert ps.get_message(timeout=1)["type"] == "subscribe"
    h.r.fcall("cogs_release", 0, "cogs:alerts:{0}", "p1", "00ff")  # a process with run 00ff releases
    h.r.fcall("cogs_release", 0, "cogs:alerts:{0}", "p1")  # the janitor of old: no run
    got = [ps.get_message(timeout=1) for _ in range(2)]
    assert [m["data"] for m in got if m] == [b"release:00ff", b"release"]
    ps.close()
    with pytest.raises(redis.ResponseError, match="BAD_FRAME"):
        h.r.fcall("cogs_release", 0, "cogs:alerts:{0}", "p1", "not hex")


# -- indirect states: the state reference table (indirect.lua) -------------------------

LOCATE, CLAIM, OWNER, FORGET = 5, 6, 7, 8


def test_claim_once_then_locate(h: LuaHarness) -> None:
    assert h.one(LOCATE, "objects", "http://a/", "locate", pid="p1") is None
    won = h.one(CLAIM, "objects", "http://a/", "claim", {"inc": "i1"}, pid="p1")
    assert won[0] == 1
    lost = h.one(CLAIM, "objects", "http://a/", "claim", {"inc": "i2"}, pid="p2")
    assert lost[:3] == [0, b"p1", b"i1"]  # exactly one owner; the other uses its value
    owner, inc, version, _ = h.one(LOCATE, "objects", "http://a/", "locate", pid="p3")
    assert (owner, inc) == (b"p1", b"i1")
    assert version == won[1]
    # a batch re-sent after a lost reply repeats the claim: the claimer still owns the key
    again = h.one(CLAIM, "objects", "http://a/", "claim", {"inc": "i1"}, pid="p1")
    assert again[:2] == [1, won[1]]
    # the same proxy in a new incarnation (restarted) does not own what it held before
    assert h.one(CLAIM, "objects", "http://a/", "claim", {"inc": "i5"}, pid="p1")[:3] == [0, b"p1", b"i1"]


def test_only_the_owner_updates_and_holders_get_discards(h: LuaHarness) -> None:
    h.one(CLAIM, "objects", "http://b/", "claim", {"inc": "i1"}, pid="p1")
    h.one(LOCATE, "objects", "http://b/", "locate", pid="p2")  # a reader
    err = h.error(OWNER, "objects", "http://b/", "owner", {"inc": "i1", "op": "set"}, pid="p2")
    assert err.startswith("NOT_OWNER")
    assert "owner: p1" in err
    assert h.error(OWNER, "objects", "http://b/", "owner", {"inc": "old", "op": "set"}, pid="p1").startswith(
        "NOT_OWNER"
    )
    got: list[Any] = []
    msgs = _discards(
        h, "p2", lambda: got.append(h.one(OWNER, "objects", "http://b/", "owner", {"inc": "i1", "op": "set"}, pid="p1"))
    )
    assert msgs == [[h.catalog.index("objects"), "http://b/", str(got[0])]]


def test_dead_owner_is_forgotten_or_replaced(h: LuaHarness) -> None:
    h.one(CLAIM, "objects", "http://c/", "claim", {"inc": "old"}, pid="p1")
    # p1 restarted (new incarnation) or died: a reader replaces the named dead locator
    assert h.one(FORGET, "objects", "http://c/", "forget", "p1:new", pid="p2") == 0  # not that one
    won = h.one(CLAIM, "objects", "http://c/", "claim", {"inc": "i9", "dead": "p1:old"}, pid="p2")
    assert won[0] == 1
    assert h.one(LOCATE, "objects", "http://c/", "locate", pid="p3")[:2] == [b"p2", b"i9"]
    assert h.one(FORGET, "objects", "http://c/", "forget", "p2:i9", pid="p3") == 1
    assert h.one(LOCATE, "objects", "http://c/", "locate", pid="p3") is None


def test_owner_delete_removes_locator(h: LuaHarness) -> None:
    h.one(CLAIM, "objects", "http://d/", "claim", {"inc": "i1"}, pid="p1")
    h.one(OWNER, "objects", "http://d/", "owner", {"inc": "i1", "op": "delete"}, pid="p1")
    assert h.one(LOCATE, "objects", "http://d/", "locate", pid="p2") is None


def test_claim_needs_an_incarnation(h: LuaHarness) -> None:
    assert h.error(CLAIM, "objects", "k", "claim", None, pid="p1").startswith("BAD_DELTA")
    assert h.error(CLAIM, "objects", "k", "claim", {"inc": "i"}).startswith("BAD_FRAME")  # no proxy id


# -- portmap (NAT port mappings) --------------------------------------------------------


def test_portmap_allocates_unique_ports_both_directions(h: LuaHarness) -> None:
    flows = [f"6|10.0.0.{i}|4000" for i in range(4)]
    got = [h.one(UG, "pmap1", "192.0.2.9|2000", "map", f) for f in flows]
    ports = [g[0] for g in got]
    assert sorted(ports) == [2000, 2001, 2002, 2003]
    assert all(g[2] == -1 for g in got)  # no ttl: never idles out
    assert [g[1] for g in got] == [0, 0, 0, 0]  # singleton mode caches nothing: no version to read
    blk = "192.0.2.1|1000"  # replica mode: each new mapping is a new version of the block
    versions = [h.one(UG, "pmap", blk, "map", f"6|10.0.9.{i}|1", pid="p1")[1] for i in range(3)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3
    assert versions[0] > 0
    again = h.one(UG, "pmap1", "192.0.2.9|2000", "map", flows[2])
    assert again[0] == ports[2]  # same flow, same mapping
    for f, port in zip(flows, ports, strict=True):
        assert h.one(R, "pmap1", "192.0.2.9|2000", "out", f)[0] == port
        assert h.one(R, "pmap1", "192.0.2.9|2000", "in", port)[0] == f.encode()
    assert h.one(R, "pmap1", "192.0.2.9|2000", "in", 2010)[0] is None
    assert h.one(R, "pmap1", "192.0.2.9|2000", "size") == [4, 46]


def test_portmap_exhausted_block_refuses_and_keeps_mappings(h: LuaHarness) -> None:
    blk = "192.0.2.1|1008"  # the last block: ports 1008-1009 only
    a = h.one(UG, "pmap", blk, "map", "6|10.0.0.1|1", pid="p1")[0]
    b = h.one(UG, "pmap", blk, "map", "6|10.0.0.2|1", pid="p1")[0]
    assert {a, b} == {1008, 1009}
    err = h.error(UG, "pmap", blk, "map", "6|10.0.0.3|1", pid="p1")
    assert err.startswith("EXHAUSTED")
    assert "1008-1009" in err
    assert h.one(R, "pmap", blk, "out", "6|10.0.0.3|1")[0] is None
    assert h.one(R, "pmap", blk, "size") == [2, 0]
    # a release frees the port for the next flow, and tells the holders
    msgs = _discards(h, "p1", lambda: h.one(UG, "pmap", blk, "release", "6|10.0.0.1|1"))
    sidx = h.catalog.index("pmap")
    assert msgs[0][0::3] == [sidx, sidx]
    assert msgs[0][1::3] == ["o|6|10.0.0.1|1", f"i|192.0.2.1|{a}"]
    assert h.one(UG, "pmap", blk, "map", "6|10.0.0.3|1", pid="p1")[0] == a


def test_portmap_idle_mappings_are_reclaimed(h: LuaHarness) -> None:
    import time

    blk = "192.0.2.2|1000"
    old = h.one(UG, "pmap", blk, "map", "17|10.0.0.1|53", pid="p1")
    assert 0 < old[2] <= 1000
    time.sleep(0.5)
    kept = h.one(UG, "pmap", blk, "map", "17|10.0.0.2|53")
    time.sleep(0.6)  # the first is idle for 1.1 s > 1 s; the second for 0.6 s
    assert h.one(R, "pmap", blk, "size")[0] == 2  # size only reads: nothing reclaimed yet
    msgs = _discards(h, "p1", lambda: h.one(R, "pmap", blk, "in", kept[0]))
    assert [m[1::3] for m in msgs] == [["o|17|10.0.0.1|53", f"i|192.0.2.2|{old[0]}"]]
    assert h.one(R, "pmap", blk, "out", "17|10.0.0.1|53")[0] is None
    assert h.one(R, "pmap", blk, "out", "17|10.0.0.2|53")[0] == kept[0]
    assert h.one(R, "pmap", blk, "in", old[0])[0] is None


@pytest.mark.parametrize(
    ("mode", "key", "op", "arg", "code"),
    [
        (UG, "192.0.2.7|1000", "map", "6|10.0.0.1|1", "BAD_KEY"),  # not a pool ip
        (UG, "192.0.2.1|1001", "map", "6|10.0.0.1|1", "BAD_KEY"),  # not a block start
        (UG, "192.0.2.1|1012", "map", "6|10.0.0.1|1", "BAD_KEY"),  # beyond port_max
        (UG, "192.0.2.1", "map", "6|10.0.0.1|1", "BAD_KEY"),
        (UG, "192.0.2.1|1000", "map", "10.0.0.1:1", "BAD_DELTA"),
        (UG, "192.0.2.1|1000", "map", None, "BAD_DELTA"),
        (UG, "192.0.2.1|1000", "map", ["6|1|1"], "BAD_DELTA"),
        (R, "192.0.2.1|1000", "in", 1004, "BAD_DELTA"),  # another block's port
        (R, "192.0.2.1|1000", "in", "x", "BAD_DELTA"),
        (R, "192.0.2.1|1000", "map", "6|10.0.0.1|1", "UNKNOWN_OP"),  # map is an update
        (C, "192.0.2.1|1000", "out", "6|10.0.0.1|1", "UNKNOWN_OP"),
        (UG, "192.0.2.1|1000", "clear", None, "UNKNOWN_OP"),
    ],
)
def test_portmap_bad_input_is_refused_untouched(
    h: LuaHarness, mode: int, key: str, op: str, arg: Any, code: str
) -> None:
    h.one(UG, "pmap", "192.0.2.1|1000", "map", "6|10.0.0.9|9")
    before = {k: h.r.dump(k) for k in h.r.keys("cogs:pmap:*")}
    err = h.error(mode, "pmap", key, op, arg)
    assert err.startswith(code), err
    assert {k: h.r.dump(k) for k in h.r.keys("cogs:pmap:*")} == before


# -- reads are bounded like writes (values written outside cogs) ------------------------
#
# Anyone with the NF's proxy credentials can SET any of its keys. What a read hands a
# proxy stays within the state's declared bounds: a stored value over them fails its op
# alone (OVERSIZE, naming the bound) and is never returned; its batch-mates go on.

BIG = b"A" * ((1 << 20) + 1)  # one byte over the default max_bytes

#: (how to plant the value, mode, state, key, op, arg, the bound the error names)
OVER: list[tuple[str, int, str, str, str, Any, str]] = [
    ("string", R, "natttl", "k", "get", None, "max_bytes 1048576"),
    ("string", RR, "natttl", "k", "get", None, "max_bytes 1048576"),
    ("string", UG, "natttl", "k", "append", "x", "limit 1048576"),  # the write path's own check
    ("string", C, "mapping", "k", "eq", "x", "max_bytes 1048576"),
    ("digits", R, "cnt", "k", "get", None, "20 (no 64-bit integer is longer)"),
    ("digits", RR, "nat", "k", "get", None, "20 (no 64-bit integer is longer)"),
    ("digits", UG, "nat", "k", "max", 1, "20 (no 64-bit integer is longer)"),
    ("digits", C, "cnt", "k", "gt", 1, "20 (no 64-bit integer is longer)"),
    ("members", R, "tags", "k", "members", None, "max_items 4"),
    ("member", R, "tags", "k", "members", None, "max_member_bytes 64"),
    ("fields", R, "fields", "k", "all", None, "max_items 3"),
    ("field", R, "qtypes", "k", "all", None, "max_member_bytes 4096"),
    ("fieldvalue", R, "qtypes", "k", "all", None, "max_bytes 1048576"),
    ("fieldvalue", R, "qtypes", "k", "field", "f", "max_bytes 1048576"),
]  # fmt: skip

PLANT: dict[str, Any] = {
    "string": lambda r, rk: r.set(rk, BIG),
    "digits": lambda r, rk: r.set(rk, b"9" * 21),
    "members": lambda r, rk: r.sadd(rk, "a", "b", "c", "d", "e"),
    "member": lambda r, rk: r.sadd(rk, "a", "x" * 65),
    "fields": lambda r, rk: r.hset(rk, mapping={"a": 1, "b": 2, "c": 3, "d": 4}),
    "field": lambda r, rk: r.hset(rk, mapping={"x" * 4097: 1}),
    "fieldvalue": lambda r, rk: r.hset(rk, mapping={"f": BIG}),
}


@pytest.mark.parametrize(("how", "mode", "state", "key", "op", "arg", "bound"), OVER)
def test_a_stored_value_over_its_bounds_is_never_returned(
    h: LuaHarness, how: str, mode: int, state: str, key: str, op: str, arg: Any, bound: str
) -> None:
    PLANT[how](h.r, f"cogs:{state}:{{{key}}}")
    h.one(UG, "natttl", "mate", "set", "fine")
    reply = h.batch(h.op(mode, state, key, op, arg), h.op(R, "natttl", "mate", "get"), pid="p1")
    assert reply.applied == 1, reply
    assert list(reply.results) == [1]  # the value never comes back; its batch-mate's does
    assert reply.results[1] == b"fine"
    err = reply.errors[0]
    assert err.startswith("OVERSIZE"), err
    assert bound in err, err
    assert len(err) < 400, err
    if mode == RR:  # nobody holds a replica of what was refused
        assert not h.r.exists(f"cogs:{state}:{{{key}}}:r")


def test_reads_within_the_bounds_are_untouched(h: LuaHarness) -> None:
    h.r.set("cogs:natttl:{k}", b"A" * (1 << 20))  # exactly max_bytes: cogs could have written it
    assert h.one(R, "natttl", "k", "get") == b"A" * (1 << 20)
    h.r.set("cogs:cnt:{k}", str(-(2**63)))
    assert h.one(R, "cnt", "k", "get") == str(-(2**63)).encode()
    h.one(U, "tags", "s", "add", ["a", "b", "c", "d"])
    assert len(h.one(R, "tags", "s", "members")) == 4
    h.one(U, "qtypes", "m", "incr", {"f": 2**53 - 1})
    assert h.one(R, "qtypes", "m", "field", "f") == str(2**53 - 1).encode()


def test_a_set_without_max_items_is_bounded_on_write_and_read(h: LuaHarness) -> None:
    rk = "cogs:ports:{s}"
    for i in range(0, 65_535, 5000):
        h.r.sadd(rk, *(str(j) for j in range(i, min(i + 5000, 65_535))))
    h.one(U, "ports", "s", "add", "last")  # 65536: DEFAULT_MAX_ITEMS
    assert h.error(U, "ports", "s", "add", "one-more").startswith("OVERSIZE")
    assert h.error(U, "ports", "s", "add", ["one-more", "two"]).startswith("OVERSIZE")
    assert h.one(R, "ports", "s", "card") == 65_536  # the refused add was taken back
    assert len(h.one(R, "ports", "s", "members")) == 65_536
    h.r.sadd(rk, "written-outside")
    assert "max_items 65536" in h.error(R, "ports", "s", "members")


def test_a_portmap_flow_over_its_bound_is_never_returned(h: LuaHarness) -> None:
    blk = "192.0.2.1|1000"
    h.r.hset(f"cogs:pmap:{{{blk}}}:in", "1001", b"6|" + b"1" * 300 + b"|1")
    err = h.error(R, "pmap", blk, "in", 1001)
    assert err.startswith("OVERSIZE"), err
    assert "flow limit 256" in err, err


def test_a_locator_over_its_bounds_is_never_returned(h: LuaHarness) -> None:
    h.r.hset("cogs:objects:{o}", mapping={"owner": "x" * 1000, "inc": "1"})
    err = h.error(5, "objects", "o", "locate", pid="p1")
    assert err.startswith("OVERSIZE"), err
    assert "bounds 64 and 64" in err, err
