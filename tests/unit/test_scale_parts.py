"""The pure parts of scaling: reading CLUSTER NODES, the slot plan, hash tags, ACL lines."""

from __future__ import annotations

import pytest

from cogs.deployment import Deployment
from cogs.errors import ClusterError
from cogs.keys import SLOTS, slot
from cogs.reshard import _batches, hash_tag, parse_nodes, plan, ranges
from cogs.scale import acl_tokens

NODES = """\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [93->-b2]
b2 127.0.0.1:7001@17001 master - 0 1700000000 2 connected 5461-10922 [93-<-a1]
c3 127.0.0.1:7002@17002,node3 master - 0 1700000000 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 1700000000 1 connected
e5 :0@0 master,fail?,noaddr - 0 0 0 disconnected
"""


def test_parse_nodes() -> None:
    a, b, c, d, e = parse_nodes(NODES)
    assert (a.id, a.addr, a.primary, a.master) == ("a1", ("127.0.0.1", 7000), True, None)
    assert len(a.slots) == 5461
    assert min(a.slots) == 0
    assert a.migrating == {93: "b2"}
    assert b.importing == {93: "a1"}
    assert len(b.slots) == 5462
    assert c.addr == ("127.0.0.1", 7002)  # the hostname after the comma is not the address
    assert (d.primary, d.master, d.slots) == (False, "a1", frozenset())
    assert e.failed
    assert not a.failed


def _owners(*counts: tuple[str, range]) -> dict[str, frozenset[int]]:
    return {nid: frozenset(r) for nid, r in counts}


def _apply(owners: dict[str, frozenset[int]], moves: list[tuple[str, str, list[int]]]) -> dict[str, set[int]]:
    out = {k: set(v) for k, v in owners.items()}
    for src, dst, slots in moves:
        assert set(slots) <= out[src], (src, slots)
        out[src] -= set(slots)
        out.setdefault(dst, set()).update(slots)
    return out


def test_plan_grow_3_to_6_moves_half_evenly() -> None:
    owners = _owners(("a", range(0, 5461)), ("b", range(5461, 10923)), ("c", range(10923, SLOTS)))
    moves = plan(owners, ["a", "b", "c", "d", "e", "f"])
    after = _apply(owners, moves)
    sizes = sorted(len(v) for v in after.values())
    assert sizes[-1] - sizes[0] <= 1
    assert sum(sizes) == SLOTS
    assert sum(len(s) for _, _, s in moves) == 8191  # no slot moves twice, none needlessly
    for nid in "abc":  # a primary that stays keeps its lowest slot (its proxies' channel)
        assert min(owners[nid]) in after[nid]


def test_plan_shrink_empties_leavers_lowest_slot_last() -> None:
    owners = {n: frozenset(range(i * 2731, min((i + 1) * 2731, SLOTS))) for i, n in enumerate("abcdef")}
    moves = plan(owners, ["a", "b", "c"])
    after = _apply(owners, moves)
    assert not after["d"]
    assert not after["e"]
    assert not after["f"]
    assert sorted(len(after[n]) for n in "abc") == [5461, 5461, 5462]
    for leaver in "def":
        order = [s for src, _, slots in moves if src == leaver for s in slots]
        assert order[-1] == min(owners[leaver])  # named the proxies' channel to it: moves last


def test_plan_balanced_moves_nothing_and_refuses_no_target() -> None:
    owners = _owners(("a", range(0, 8192)), ("b", range(8192, SLOTS)))
    assert plan(owners, ["a", "b"]) == []
    with pytest.raises(ClusterError):
        plan(owners, [])


def test_hash_tag_as_redis() -> None:
    for key in (b"cogs:cnt:{k1}", b"cogs:cnt:{k1}:v", b"plain", b"a{}b{c}", b"{x}y{z}"):
        assert slot(hash_tag(key)) == _redis_slot(key)
    assert hash_tag(b"cogs:cnt:{k1}:alerted") == b"k1"


def _redis_slot(key: bytes) -> int:
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1 : e]
    return slot(key)


def test_batches_keep_a_tag_together() -> None:
    groups = [[b"1"] * 3, [b"2"] * 3, [b"3"] * 5, [b"4"]]
    out = list(_batches(groups, 4))
    assert out == [[b"1"] * 3, [b"2"] * 3, [b"3"] * 5, [b"4"]]
    assert list(_batches([[b"a"], [b"b"]], 4)) == [[b"a", b"b"]]


def test_ranges_and_acl_tokens() -> None:
    assert ranges([5, 1, 2, 3, 9]) == "1-3,5,9"
    assert ranges([]) == ""
    line = "user cogs-proxy on #abc ~cogs:* &cogs:* -@all +get (~x:* +set) +ping"
    assert acl_tokens(line) == ["user", "cogs-proxy", "on", "#abc", "~cogs:*", "&cogs:*", "-@all", "+get",
                                "(~x:* +set)", "+ping"]  # fmt: skip


def test_deployment_node_at_numbers_past_its_size() -> None:
    d = Deployment(3, 0, 7000)
    assert d.node_at(4).name == "node5"
    assert d.node_at(4).port == 7004
    assert d.node_at(4).bus_port == 17004
    assert [n.name for n in d.nodes] == [d.node_at(i).name for i in range(3)]
