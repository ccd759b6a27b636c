"""Proxy pieces without Redis: the replica cache's race rules, batch encoding."""

from __future__ import annotations

import gc
import json
import time
from array import array
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cogs.coordinator.frames import expand, jstr, route, runs
from cogs.keys import escape, slot, unescape
from cogs.proxy.cache import MISS, ReplicaCache
from cogs.proxy.lanes import SUM, UNION, Lane, encode
from cogs.proxy.requests import Req
from tests.helpers import make_batcher

K = (1, "k")


def _cache() -> ReplicaCache:
    """An enabled cache whose freshness is proven for a while (the discard link's job)."""
    c = ReplicaCache()
    c.enabled = True
    c.fresh_until = time.monotonic() + 60
    return c


def test_cache_hit_after_fetch() -> None:
    c = _cache()
    e = c.begin_fetch(K)
    assert c.end_fetch(K, e, "v1", 5, -1)
    assert c.get(K) == "v1"
    assert (c.hits, c.misses) == (1, 0)


def test_discard_overtaking_an_older_reply_wins() -> None:
    """Retrieve sent (v5 at the coordinator), update makes v6 and its discard arrives
    before the retrieve's reply: the reply must not be cached."""
    c = _cache()
    e = c.begin_fetch(K)
    c.discard(K, 6)
    assert not c.end_fetch(K, e, "old", 5, -1)
    assert c.get(K) is MISS


def test_reply_as_new_as_the_discard_is_cached() -> None:
    c = _cache()
    e = c.begin_fetch(K)
    c.discard(K, 6)
    assert c.end_fetch(K, e, "new", 6, -1)
    assert c.get(K) == "new"
    c.discard(K, 6)  # a late copy of the same discard does not drop the fresh value
    assert c.get(K) == "new"
    c.discard(K, 7)
    assert c.get(K) is MISS


def test_link_loss_drops_everything_and_stale_epoch_replies() -> None:
    c = _cache()
    c.end_fetch(K, c.begin_fetch(K), "v", 1, -1)
    e = c.begin_fetch((1, "other"))
    c.drop_all()
    assert c.get(K) is MISS
    assert not c.end_fetch((1, "other"), e, "v", 9, -1)  # sent before the drop
    c.enabled = False
    assert not c.end_fetch(K, c.begin_fetch(K), "v", 9, -1)  # link down: no caching


def test_a_fetch_begun_while_the_link_was_down_is_not_cached() -> None:
    """Read while the link was down (the coordinator had v1), then an update (v2) whose
    discard nobody received, then the link back: the reply (v1) must not be cached."""
    c = _cache()
    c.enabled = False
    c.drop_all()
    e = c.begin_fetch(K)
    c.enable(fresh_until=time.monotonic() + 60)
    assert not c.end_fetch(K, e, "v1", 1, -1)
    assert c.get(K) is MISS
    assert c.end_fetch(K, c.begin_fetch(K), "v2", 2, -1)  # begun once the link held: cached
    assert c.get(K) == "v2"


def test_replica_expires_with_the_state() -> None:
    c = _cache()
    c.end_fetch(K, c.begin_fetch(K), "v", 1, 1)  # 1 ms left at the coordinator
    time.sleep(0.005)
    assert c.get(K) is MISS


def test_replicas_are_served_only_while_their_freshness_is_proven() -> None:
    """Past fresh_until (no PONG proved every discard handled, a stalled loop say) get()
    misses without dropping anything; peek() still shows the entry; a later proof
    (the next PONG, once the discards before it were handled) serves it again."""
    c = _cache()
    c.end_fetch(K, c.begin_fetch(K), "v", 1, -1)
    assert c.get(K) == "v"
    c.fresh_until = time.monotonic() - 0.001
    assert c.get(K) is MISS
    assert c.peek(K) == "v"
    assert c.peek((1, "none")) is MISS
    s = c.statistics()
    assert (s.cache_hits, s.cache_misses, s.expired_reads, s.cached_entries) == (1, 1, 1, 1)
    c.get((1, "none"))  # nothing held: a plain miss, not an expired read
    assert c.statistics().expired_reads == 1
    c.fresh_until = time.monotonic() + 60
    assert c.get(K) == "v"


def _lane(kinds: dict[str, int]) -> Lane:
    return Lane("s", 3, kinds, None)


def _route(key: str) -> tuple[str, int]:
    ek = escape(key)
    return json.dumps(ek), slot(ek)


@given(st.text(max_size=40))
def test_route_is_json_dumps_of_the_escaped_key(key: str) -> None:
    assert route(key) == _route(key)
    assert jstr(key) == json.dumps(key)


OWNER = array("H", [s % 3 for s in range(16384)])


@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), st.integers(-(2**63), 2**63)), min_size=1, max_size=30))
def test_encoded_batches_are_valid_json_and_complete(items: list[tuple[str, int]]) -> None:
    lane = _lane({"add": SUM})
    want: dict[str, int] = {}
    for key, d in items:
        g = lane.pending.setdefault(key, ["add", SUM, 0])
        g[2] += d
        want[key] = want.get(key, 0) + d
    got: dict[str, int] = {}
    for node, frames in encode([lane], [], OWNER, limit=7).items():
        for payload, count, reqs in frames:
            ops = expand(json.loads(payload))
            assert len(ops) == count <= 7  # cut into frames of at most `limit` ops
            assert reqs == {}
            for mode, sidx, op, ek, arg in ops:
                assert (mode, sidx, op) == (0, 3, "add")
                assert OWNER[slot(ek)] == node  # routed to the key's node
                got[ek] = int(arg)
    assert got == {escape(k): v for k, v in want.items()}


def test_encode_keeps_groups_in_order_then_requests() -> None:
    lane = _lane({"add": UNION, "remove": UNION})
    lane.pending["x"] = ["add", UNION, {"a"}, "remove", UNION, {"a", "b"}, "add", UNION, {"c"}]
    req = Req(2, "s", 3, "x", "members", None, None)
    lane.pending["y"] = ["add", UNION, {"z"}]
    frames = encode([lane], [req], array("H", bytes(2 * 16384)), limit=3)[0]
    assert [c for _, c, _ in frames] == [3, 2]  # a key's groups may straddle frames, in order
    wire = [w for payload, _, _ in frames for w in expand(json.loads(payload))]
    reqs = dict(frames[1][2])
    assert wire[0][3] == "y"  # single-group keys go first, in runs
    ops = [(w[2], w[4]) for w in wire[1:]]
    assert ops[0] == ("add", "a")
    assert ops[1][0] == "remove"
    assert sorted(ops[1][1]) == ["a", "b"]
    assert ops[2:] == [("add", "c"), ("members", None)]
    assert reqs == {1: req}  # op 1 of the second frame


def test_runs_round_trip() -> None:
    ops = [(0, 1, "add", "a", "1"), (0, 1, "add", "b", "2"), (2, 1, "get", "a", None), (0, 1, "add", "c", "3")]
    flat = runs(ops)
    assert flat[:4] == [0, 1, "add", 2]
    assert expand(flat) == ops


_INT_OPS = st.tuples(st.just("cnt"), st.sampled_from(["add", "sub", "max", "set"]), st.integers(-50, 50))
_SET_OPS = st.tuples(
    st.just("ports"),
    st.sampled_from(["add", "remove"]),
    st.sampled_from(["a", "b", "c"]) | st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3),
)


def _apply(states: dict[tuple[str, str], Any], state: str, key: str, op: str, arg: Any) -> None:
    cur = states.get((state, key))
    if state == "cnt":
        d = int(arg)
        n = cur or 0
        states[(state, key)] = {"add": n + d, "sub": n - d, "max": d if cur is None else max(n, d), "set": d}[op]
    else:
        members = {arg} if isinstance(arg, str) else set(arg)
        s = cur or set()
        states[(state, key)] = s | members if op == "add" else s - members


@settings(max_examples=300, deadline=None)
@example([("k1", ("ports", "add", "a")), ("k2", ("ports", "add", "a")), ("k2", ("ports", "add", "b"))])
@example([("k1", ("ports", "add", "a")), ("k2", ("ports", "add", "a")), ("k2", ("ports", "add", ["b", "c"]))])
@example([("k1", ("cnt", "add", 1)), ("k2", ("cnt", "add", 2)), ("k2", ("cnt", "max", 9)), ("k2", ("cnt", "add", 1))])
@given(st.lists(st.tuples(st.sampled_from(["k1", "k2"]), _INT_OPS | _SET_OPS), max_size=40))
def test_coalesced_batch_applies_like_the_updates_one_by_one(updates: list[tuple[str, Any]]) -> None:
    """Merged hot ops (ints summed, members kept without a list per op) and ordered
    groups of other ops: applying the frames gives what the updates one by one give."""
    b = make_batcher()
    want: dict[tuple[str, str], Any] = {}
    for key, (state, op, arg) in updates:
        b.update(state, key, op, arg)
        _apply(want, state, key, op, arg)
    lanes = [lane for lane in b.lanes.values() if lane.has_ops]
    got: dict[tuple[str, str], Any] = {}
    names = {lane.sidx: lane.name for lane in lanes}
    for frames in encode(lanes, [], b.coord.topology.owner, limit=4).values():  # type: ignore[union-attr]
        for payload, _, _ in frames:
            for mode, sidx, op, ek, arg in expand(json.loads(payload)):
                assert mode == 0
                _apply(got, names[sidx], unescape(ek), op, arg)
    assert got == want
    assert b.updates == len(updates)
    assert b.created + b.coalesced == len(updates)


def test_hot_path_allocates_no_container_per_op() -> None:
    """Each GC-tracked object the hot path makes per op is work for Python's collector
    (it cost a quarter of the NF's CPU per update when every op held a list)."""
    b = make_batcher()
    b.update("cnt", "warm", "add", 1)  # the lanes and the first batch: slow path
    b.update("ports", "warm", "add", "80")
    keys = [f"k{i}" for i in range(1000)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for k in keys:
            b.update("cnt", k, "add", 1)  # new op
            b.update("cnt", k, "add", 2)  # merged
            b.update("ports", k, "add", "22")  # new op, one member
            b.update("ports", k, "add", "22")  # merged, same member
        made = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert made < 50, f"{made} tracked objects for 4,000 hot-path updates"
    assert b.lanes["cnt"].hot["k7"] == 3
    assert b.lanes["ports"].hot["k7"] == "22"


def test_key_locks_keep_order_and_do_not_grow() -> None:
    import anyio

    from cogs.proxy.keylocks import KeyLocks

    locks = KeyLocks()
    order: list[int] = []

    async def go() -> None:
        async def one(i: int) -> None:
            async with locks.hold("k"):
                order.append(i)
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
                await anyio.lowlevel.checkpoint()
        for i in range(1000):
            async with locks.hold(f"url{i}"):
                pass

    anyio.run(go)
    assert order == [0, 1, 2, 3, 4]  # arrival order
    assert len(locks) == 0  # nothing kept for keys nobody holds
