"""Per-key order between lanes and requests, re-queues, merged batches (no Redis)."""

from __future__ import annotations

import json
from array import array
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cogs.coordinator.frames import expand
from cogs.protocol import Mode
from cogs.proxy.delivery import Batch
from cogs.proxy.lanes import MAPSUM, NONE, SUM, UNION, Lane, encode
from cogs.proxy.order import as_request, fence, moved_from, seal
from cogs.proxy.requests import Req
from tests.helpers import make_batcher

ONE_NODE = array("H", bytes(2 * 16384))


def _wire(batcher: Any) -> list[tuple[str, str, Any]]:
    """(key, op, arg) of everything pending, in frame order (one node)."""
    lanes = [la for la in batcher.lanes.values() if la.has_ops]
    frames = encode(lanes, batcher.queue, ONE_NODE, 10**6).get(0, [])
    return [(w[3], w[2], w[4]) for payload, _, _ in frames for w in expand(json.loads(payload))]


def _req(key: str, op: str, arg: Any) -> Req:
    return Req(Mode.UPDATE_GET, "mapping", 10, key, op, arg, None)


def test_a_lane_op_after_a_queued_request_of_its_key_goes_after_it() -> None:
    b = make_batcher()
    b.update("mapping", "k", "set", "a")  # older: stays in the lane, goes first
    b.submit(_req("k", "append", "b"), now=False)
    b.update("mapping", "k", "append", "c")  # newer than the request: behind it
    b.update("mapping", "other", "set", "x")  # another key: untouched
    got = [(k, op, arg) for k, op, arg in _wire(b) if k == "k"]
    assert got == [("k", "set", "a"), ("k", "append", "b"), ("k", "append", "c")]
    assert ("other", "set", "x") in _wire(b)
    assert b.npending == 4


def test_a_hot_key_fenced_keeps_its_sum_first_and_merges_nothing_after() -> None:
    b = make_batcher()
    for _ in range(3):
        b.update("cnt", "h", "add", 1)  # coalesced into one pending sum
    b.submit(Req(Mode.UPDATE_GET, "cnt", b.lanes["cnt"].sidx, "h", "set", 0, None), now=False)
    b.update("cnt", "h", "add", 5)
    got = [(op, arg) for k, op, arg in _wire(b) if k == "h"]
    assert got == [("add", "3"), ("set", 0), ("add", "5")]  # not ("add", "8") before the set


def test_seal_takes_the_lane_ops_out_in_order() -> None:
    lane = Lane("s", 3, {"add": UNION, "remove": UNION}, None)
    lane.hot_op, lane.hot_kind = "add", UNION
    lane.pending["x"] = ["add", UNION, {"a"}, "remove", UNION, {"a", "b"}]
    lane.hot["y"] = "m"
    out = seal(lane, "x") + seal(lane, "y")
    assert [(r.key, r.op, r.arg) for r in out] == [
        ("x", "add", "a"), ("x", "remove", ["a", "b"]), ("y", "add", "m"),
    ]  # fmt: skip
    assert all(r.mode == Mode.UPDATE and not r.waiters for r in out)
    assert lane.pending["x"][-3] is None  # fenced: later ops of x go to the queue
    assert not lane.hot
    fence(lane, "x")  # fencing twice adds nothing
    assert len(lane.pending["x"]) == 3
    assert encode([lane], [], ONE_NODE) == {}  # markers carry no op


@given(st.sampled_from([SUM, UNION, MAPSUM, NONE]), st.integers(-(2**40), 2**40))
def test_a_lane_op_as_a_request_is_the_same_op_on_the_wire(kind: int, n: int) -> None:
    acc: Any = {SUM: n, UNION: {str(n), "z"}, MAPSUM: {"f": n}, NONE: n}[kind]
    lane = Lane("s", 3, {"op": kind}, None)
    lane.pending["k"] = ["op", kind, acc]
    direct = expand(json.loads(encode([lane], [], ONE_NODE)[0][0][0]))
    lane.pending = {}
    via = expand(json.loads(encode([lane], [as_request(lane, "k", "op", kind, acc)], ONE_NODE)[0][0][0]))
    assert [(m, s, o, k, _norm(a)) for m, s, o, k, a in direct] == [(m, s, o, k, _norm(a)) for m, s, o, k, a in via]


def _norm(arg: Any) -> Any:
    return sorted(arg) if isinstance(arg, list) else arg  # a set's members, in any order


def test_moved_from_names_the_channels_that_lost_slots() -> None:
    old = array("H", [0] * 8000 + [1] * 8384)
    same = moved_from(old, ["a", "b"], old, ["a", "b"])
    assert same == set()
    new = array("H", [0] * 7990 + [1] * 8394)  # ten slots of a's went to b
    assert moved_from(old, ["a", "b"], new, ["a", "b"]) == {"a"}
    failover = array("H", [1] * 8000 + [0] * 8384)  # node order changed, streams (slots) did not
    assert moved_from(old, ["a", "b"], failover, ["b", "a"]) == set()


def test_merged_batches_are_one_frame_with_their_waiters_renumbered() -> None:
    r1, r2 = _req("a", "get", None), _req("b", "get", None)
    first = Batch('[0,1,"add",1,"k","1"]', 1, {0: r1}, False, 1.0)
    second = Batch('[2,10,"get",1,"b",null,0,1,"add",1,"j","2"]', 2, {0: r2}, True, 2.0)
    first.merge(second)
    assert (first.nops, first.numbered, first.born) == (3, True, 1.0)
    assert first.reqs == {0: r1, 1: r2}
    assert [w[3] for w in expand(json.loads(first.text()))] == ["k", "b", "j"]
    assert first.text() == first.payload  # joined once
