"""The registry and the library's bookkeeping written outside cogs, on a real cluster.

A holder of the NF's proxy credentials can ZADD anything to the proxy index, SET the
janitor's lock, and put a key of another type where the index, a holder index or the
NF's rate bucket belongs. Other proxies go on: the janitor skips, counts and drops
what names no proxy, and each of those keys, being bookkeeping and no state, is made
anew rather than failing every op that touches it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import cast

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.errors import CogsError, OverLimit
from cogs.keys import DEFAULT, escape, namespace, proxy_key, slot, state_key
from cogs.library import assemble, library_spec
from cogs.proxy import StateProxy
from cogs.proxy import registry as registry_mod
from tests.helpers import eventually, make_catalog

pytestmark = pytest.mark.anyio
NS = DEFAULT


@pytest.fixture
def r(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    """An admin client; what a test plants in the registry is removed after it."""
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.port)
    before = set(client.zrange(NS.proxy_index, 0, -1))
    try:
        yield client
    finally:
        client.delete(NS.janitor_lock)
        if client.type(NS.proxy_index) != b"zset":
            client.delete(NS.proxy_index)
        planted = [m for m in cast(list[bytes], client.zrange(NS.proxy_index, 0, -1)) if m not in before]
        if planted:
            client.zrem(NS.proxy_index, *planted)
        client.close()


@pytest.fixture
def fast_janitor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The janitor at every heartbeat (its lock then lasts 90 ms)."""
    monkeypatch.setattr(registry_mod, "JANITOR_EVERY_S", 0.1)


async def _holds(url: str, r: redis.RedisCluster, pid: str, key: str) -> str:
    """Make ``pid`` a holder of nat[key], as if it had read it and died: its holder
    entry and its holder index (what cogs_release drops). The entry's set's name."""
    rk = state_key("nat", escape(key))
    async with Coordinator(url=url) as co:
        assert co.topology is not None
        node = co.topology.nodes[co.topology.node_of(slot(escape(key)))]
        r.sadd(co.ns.held_key(co.ns.alert_stream(node.first_slot), pid), rk)
    r.sadd(rk + ":r", pid)
    return rk + ":r"


async def _released(r: redis.RedisCluster, holders: str, pid: str) -> None:
    """Wait (15 s at most) until a janitor run released ``pid``'s entry."""
    await eventually(lambda: not r.sismember(holders, pid), within=15)


async def test_the_janitor_skips_counts_and_drops_entries_that_name_no_proxy(
    cluster: LocalCluster, r: redis.RedisCluster, fast_janitor: None
) -> None:
    """Before: an index entry that is not UTF-8 raised UnicodeDecodeError out of the
    heartbeat task, so the proxy stopped beating (and peers took it for dead); one
    with a space made cogs_release refuse (BAD_FRAME) and the janitor stop there, every
    run, for good; a lock SET without an expiry stopped every janitor for good."""
    old = int((time.time() - 3600) * 1000)
    bad = [b"\xff\xfe", b"a b", b"x" * 100, b"evil\n"]
    r.zadd(NS.proxy_index, dict.fromkeys(bad, old))
    r.zadd(NS.proxy_index, {"hr-dead-1": old + 1})
    holders = await _holds(cluster.url, r, "hr-dead-1", "hr1")
    r.set(NS.janitor_lock, "forged")  # no expiry
    async with StateProxy(cluster.url, heartbeat_ttl_s=1.5) as p:
        reg = p._registry
        await _released(r, holders, "hr-dead-1")  # by a janitor run in p's heartbeat task
        assert (reg.invalid_ids, reg.forged_locks) == (len(bad), 1)
        # (whether this janitor or the holder records' own expiry dropped the dead proxy's
        # entries depends on the machine's speed: that they are gone is awaited above)
        assert not [m for m in bad if r.zscore(NS.proxy_index, m) is not None]  # dropped from the index
        # the janitor drops the dead proxy's index entry after releasing its holder entries
        # on every node: the release seen above may come before it (a busy box)
        await eventually(lambda: r.zscore(NS.proxy_index, "hr-dead-1") is None, within=15)
        beat = r.get(proxy_key(p.id))
        await anyio.sleep(1.0)  # still beating (a beat every 0.5 s)
        assert p._beating is not None
        assert not p._beating.done()
        assert r.get(proxy_key(p.id)) != beat


async def test_a_flood_of_stale_entries_does_not_stop_the_janitor(
    cluster: LocalCluster, r: redis.RedisCluster, fast_janitor: None
) -> None:
    """Entries whose heartbeat key exists but whose index score is old (a forged
    heartbeat, or a proxy whose index node was away) were skipped and kept: 100 of them,
    older than any dead proxy's entry, filled every janitor run, which never reached
    the dead proxy behind them."""
    old = int((time.time() - 3600) * 1000)
    flood = {f"hr-live-{i}": old for i in range(100)}  # as many as a janitor run looks at
    for pid in flood:
        r.set(proxy_key(pid), "{}", px=60_000)
    r.zadd(NS.proxy_index, flood)
    r.zadd(NS.proxy_index, {"hr-dead-2": old + 1})
    holders = await _holds(cluster.url, r, "hr-dead-2", "hr2")
    try:
        async with StateProxy(cluster.url, heartbeat_ttl_s=1.5):
            await _released(r, holders, "hr-dead-2")
        assert not [pid for pid in flood if r.zscore(NS.proxy_index, pid) is not None]
    finally:
        for pid in flood:
            r.delete(proxy_key(pid))


async def test_an_index_of_another_type_is_made_anew(cluster: LocalCluster, r: redis.RedisCluster) -> None:
    """Before: after SET cogs:proxies x no proxy could start (its first heartbeat failed
    WRONGTYPE), and those running failed every heartbeat (a warning per beat, forever),
    listed nowhere for the monitor and the exporter."""
    r.set(NS.proxy_index, "not a sorted set")
    async with StateProxy(cluster.url, heartbeat_ttl_s=1.5) as p:
        await eventually(lambda: r.zscore(NS.proxy_index, p.id) is not None, within=10)
        assert p._registry.replaced_index >= 1


def _held_keys(p: StateProxy, pid: str) -> list[str]:
    """``pid``'s holder index on every primary (lua/replica.lua)."""
    topo = p.coord.topology
    assert topo is not None
    return [p.coord.ns.held_key(p.coord.ns.alert_stream(n.first_slot), pid) for n in topo.nodes]


async def test_holder_indexes_of_another_type_fail_nothing(cluster: LocalCluster, r: redis.RedisCluster) -> None:
    """A proxy's holder index (``cogs:held:{tag}:<id>``, its id is in the proxy index
    for all to read) SET to a string. Before: that proxy could not start (cogs_release
    failed WRONGTYPE), every replica read it made on that node failed, and so did every
    other proxy's update of a key it held."""
    pid = "hr-victim"
    async with StateProxy(cluster.url) as scout:
        held = _held_keys(scout, pid)
    for k in held:
        r.set(k, "not a set")
    async with StateProxy(cluster.url, proxy_id=pid) as victim, StateProxy(cluster.url) as writer:
        await writer.syn_up("nat", "hr3", "set", 1)
        assert await victim.syn_retrieve("nat", "hr3") == 1  # held: its index made anew
        await eventually(lambda: victim.cached("nat", "hr3") == 1)
        for k in held:
            r.set(k, "not a set")  # again, now that it holds a replica
        assert await writer.syn_up("nat", "hr3", "set", 2) == 2  # the update applies
        await eventually(lambda: victim.cached("nat", "hr3") != 1)  # and its discard reached the holder
        assert await victim.syn_retrieve("nat", "hr3") == 2
    for k in held:
        assert r.type(k) in (b"none", b"set")  # released on close, or made anew


async def test_a_rate_bucket_written_outside_cogs_neither_stalls_nor_refuses_the_nf(
    cluster: LocalCluster, r: redis.RedisCluster
) -> None:
    """An NF with an ops-rate limit keeps a token bucket per primary. Before: a bucket
    SET to a string failed every batch of the NF as UNAVAILABLE (re-sent until the
    delivery bound, on every node holding such a bucket); b = nan refused every batch
    (OverLimit) for as long as batches kept coming."""
    ns = namespace("hostile")
    cat = make_catalog()
    lib = assemble(library_spec(), cat.json, cat.digest, ns, ops_per_s=1_000_000)
    nodes = [redis.Redis(host=h, port=p) for h, p in _primaries(r)]
    for n in nodes:
        n.function_load(lib.source, replace=True)
    try:
        async with StateProxy(cluster.url, nf="hostile") as p:
            topo = p.coord.topology
            assert topo is not None
            buckets = [ns.limit_key(ns.alert_stream(n.first_slot)) for n in topo.nodes]
            for value in ("string", "nan", "forged"):
                for b in buckets:
                    r.delete(b)
                    if value == "string":
                        r.set(b, "not a hash")
                    elif value == "nan":
                        r.hset(b, mapping={"t": str(int(time.time() * 1000)), "b": "nan"})
                    else:  # a time far ahead (never refills) and a debt beyond any batch: refused for good
                        r.hset(b, mapping={"t": "1e15", "b": "-1e300"})
                with anyio.fail_after(10):
                    for i in range(30):  # keys on every node
                        await _admitted_within(3.0, p, f"hr-limit-{value}-{i}")
    except CogsError as e:  # pragma: no cover - the failure said plainly
        pytest.fail(f"the NF was refused: {e}")
    finally:
        for n in nodes:
            n.function_delete(ns.library)
            for k in n.scan_iter(match=f"{ns.prefix}*"):
                n.delete(k)
            n.close()


async def _admitted_within(seconds: float, p: StateProxy, key: str) -> None:
    """A forged bucket may cost the NF up to a second of its rate (the deepest debt the
    library keeps), never more."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            assert await p.syn_up("cnt", key, "add", 1) == 1  # a refused batch never applies later
            return
        except OverLimit:
            assert time.monotonic() < deadline, f"{key}: still refused after {seconds:g} s"
            await anyio.sleep(0.1)


def _primaries(r: redis.RedisCluster) -> list[tuple[str, int]]:
    return [(n.host, n.port) for n in r.get_primaries()]


@pytest.mark.parametrize("how", ["not JSON", "no run token", "a hash"])
async def test_a_heartbeat_written_outside_cogs_is_beaten_over(
    cluster: LocalCluster, r: redis.RedisCluster, how: str
) -> None:
    """A proxy's heartbeat key (its id is in the proxy index for all to read) overwritten.
    Before: an entry that is not JSON, or has no run token, was taken for another
    process's, so the proxy held itself superseded, stopped beating for good and dropped
    its replicas; a hash failed every beat (WRONGTYPE). (A JSON entry with another run
    token is what a restart of the id writes: that one still takes the id over.)"""
    async with StateProxy(cluster.url, heartbeat_ttl_s=1.5) as p:
        key = proxy_key(p.id)
        r.delete(key)
        if how == "a hash":
            r.hset(key, "run", "x")
        else:
            r.set(key, "garbage" if how == "not JSON" else '{"id": "x"}', px=60_000)
        await eventually(lambda: r.type(key) == b"string" and b'"run"' in (r.get(key) or b""), within=10)
        assert not p._registry.superseded
        assert json.loads(r.get(key) or b"{}")["run"] == p._registry.run
