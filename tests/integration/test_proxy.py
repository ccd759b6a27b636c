"""StateProxy on a real 3-primary cluster: the paper's API in every mode."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis

from cogs import runtime
from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.errors import (
    BadDelta,
    BadKey,
    CatalogMismatch,
    CogsError,
    ConfigError,
    Moved,
    OpError,
    Oversize,
    UnknownOp,
    UnknownState,
)
from cogs.keys import escape, once_key, proxy_key, slot
from cogs.proxy import MISS, Backpressure, StateProxy
from cogs.proxy.blocking import BlockingStateProxy
from cogs.settings import load_settings
from tests.helpers import TEST_CATALOG, eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def proxy(cluster: LocalCluster) -> AsyncIterator[StateProxy]:
    async with StateProxy(cluster.url) as p:
        yield p


async def test_update_coalesces_and_applies_exact_sums(proxy: StateProxy) -> None:
    for i in range(3000):
        proxy.update("cnt", f"co{i % 30}", "add", 2)
        proxy.update("ports", f"co{i % 10}", "add", str(i % 7))
    await proxy.flush()
    s = proxy.statistics()
    assert s.updates == 6000
    assert s.ops_sent < 300  # coalesced: one op per key per batch, not one per update
    assert s.ops_applied == s.ops_sent
    assert s.coalescing_ratio > 20
    for i in range(30):
        assert await proxy.syn_retrieve("cnt", f"co{i}") == 200
    assert await proxy.syn_retrieve("ports", "co3") == {str(x) for x in range(7)}


async def test_order_kept_per_key_across_ops(proxy: StateProxy) -> None:
    proxy.update("tags", "ord", "add", "x")
    proxy.update("tags", "ord", "remove", "x")
    proxy.update("tags", "ord", "add", "y")
    proxy.update("tags", "ord", "add", "x")
    proxy.update("tags", "ord", "remove", "y")
    await proxy.flush()
    assert await proxy.syn_retrieve("tags", "ord") == {"x"}


async def test_syn_ops(proxy: StateProxy) -> None:
    assert await proxy.syn_up("cnt", "syn", "add", 5) == 5
    assert await proxy.syn_up("cnt", "syn", "max", 3) == 5
    assert await proxy.syn_retrieve("cnt", "syn") == 5
    assert await proxy.syn_retrieve("cnt", "syn", "get") == 5
    assert await proxy.syn_check("cnt", "syn", "ge", 5) is True
    assert await proxy.syn_retrieve("qtypes", "none") == {}
    assert await proxy.syn_up("qtypes", "m", "incr", {"all": 2}) == {"all": "2"}


async def test_read_your_writes_after_update(proxy: StateProxy) -> None:
    proxy.update("cnt", "ryw", "add", 7)
    assert await proxy.syn_retrieve("cnt", "ryw") == 7  # the pending update goes first


async def test_async_callbacks_in_arrival_order_and_shared_round_trip(proxy: StateProxy) -> None:
    await proxy.syn_up("cnt", "as", "set", 1)
    got: list[tuple[Any, Any]] = []
    before = proxy.statistics().ops_sent
    for i in range(5):
        proxy.asyn_retrieve("cnt", "as", None, lambda s, p: got.append((s, p)), f"r{i}")
    assert proxy.statistics().pending_packets == 5
    proxy.asyn_up("cnt", "as", "add", 10, lambda s, p: got.append((s, p)), "u")
    proxy.asyn_retrieve("cnt", "as", None, lambda s, p: got.append((s, p)), "r5")
    await proxy.flush()
    assert got == [(1, "r0"), (1, "r1"), (1, "r2"), (1, "r3"), (1, "r4"), (11, "u"), (11, "r5")]
    assert proxy.statistics().ops_sent - before == 3  # five reads shared one op
    assert proxy.statistics().pending_packets == 0


async def test_bad_input_refused_at_the_call(proxy: StateProxy) -> None:
    with pytest.raises(UnknownState, match="state=nope: not in the catalog"):
        proxy.update("nope", "k", "add", 1)
    with pytest.raises(UnknownOp, match="push"):
        proxy.update("cnt", "k", "push", 1)
    with pytest.raises(BadDelta, match="must be an int"):
        proxy.update("cnt", "k", "add", "many")
    with pytest.raises(BadDelta, match="must be str"):
        proxy.update("ports", "k", "add", 3)
    with pytest.raises(BadKey):
        proxy.update("cnt", "", "add", 1)
    with pytest.raises(BadKey):
        await proxy.syn_retrieve("cnt", "k" * 600)
    with pytest.raises(ConfigError, match="COGS_PEER_SECRET"):  # indirect states need the peer secret
        await proxy.syn_retrieve("objects", "http://x/")
    with pytest.raises(UnknownState, match="coordinator"):  # and are not trigger states
        proxy.update("objects", "http://x/", "add", 1)
    with pytest.raises(UnknownOp):
        await proxy.syn_check("cnt", "k", "near")
    await proxy.flush()
    assert proxy.statistics().updates == 0


async def test_coordinator_errors_reach_on_error(cluster: LocalCluster) -> None:
    seen: list[tuple[OpError, Any]] = []
    async with StateProxy(cluster.url, on_error=lambda e, p: seen.append((e, p))) as p:  # type: ignore[arg-type]
        with pytest.raises(Oversize, match="max_member_bytes"):  # what cannot be applied is refused here
            p.update("tags", "big", "add", "x" * 100)
        p.update("tags", "big", "add", ["a", "b", "c", "d", "e"])  # over max_items (4): only the coordinator knows
        p.update("cnt", "fine", "add", 1)
        p.asyn_up("note", "n", "set", "y" * 50, lambda s, pkt: None, "pkt-1")
        await p.flush()
        assert p.statistics().errors == 2
        with pytest.raises(Oversize):
            await p.syn_up("note", "n", "set", "z" * 11)
    # the two keys may live on different nodes: replies come in either order
    assert sorted((type(e).__name__, str(pkt)) for e, pkt in seen) == [("Oversize", "None"), ("Oversize", "pkt-1")]
    assert {str(e).split(" ")[1] for e, _ in seen} == {"state=tags", "state=note"}


async def test_backpressure_then_aupdate_waits(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url, batch_max_ops=10, max_pending=10) as p:
        for i in range(10):
            p.update("cnt", f"bp{i}", "add", 1)
        with pytest.raises(Backpressure, match="buffer full"):
            p.update("cnt", "bp-over", "add", 1)
        p.update("cnt", "bp0", "add", 1)  # merging into a pending op needs no room
        await p.aupdate("cnt", "bp-over", "add", 1)
        await p.flush()
        assert p.statistics().backpressure == 1
        assert await p.syn_retrieve("cnt", "bp0") == 2
        assert await p.syn_retrieve("cnt", "bp-over") == 1


async def test_replica_cache_and_discard(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as a, StateProxy(cluster.url) as b:
        keys = [f"rep{i}" for i in range(12)]
        assert a.coord.topology is not None
        assert {a.coord.topology.node_of(slot(escape(k))) for k in keys} == {0, 1, 2}
        for k in keys:
            await a.syn_up("nat", k, "set", 1)
            assert await b.syn_retrieve("nat", k) == 1
            assert b.cached("nat", k) == 1
        hits = b.statistics().cache_hits
        assert await b.syn_retrieve("nat", keys[0]) == 1
        assert b.statistics().cache_hits == hits + 1
        seen: list[str] = []
        b.add_discard_listener(lambda sidx, key, version: seen.append(key))
        for k in keys:  # discards reach b whatever node owns the key
            assert await a.syn_up("nat", k, "add", 1) == 2
        await eventually(lambda: len(seen) >= len(keys))
        assert sorted(seen) == sorted(keys)
        assert all(b.cached("nat", k) is MISS for k in keys)
        assert await b.syn_retrieve("nat", keys[0]) == 2


async def test_discard_link_loss_drops_every_replica(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as p:
        await p.syn_up("nat", "lk", "set", 3)
        assert await p.syn_retrieve("nat", "lk") == 3
        assert p.cached("nat", "lk") == 3
        assert len(p._discard.nodes) == 3  # subscribed on every primary
        host, port = p._discard.nodes[1].rsplit(":", 1)
        with redis.Redis(host=host, port=int(port)) as r:  # cut one of the subscriptions
            assert r.client_kill_filter(_type="pubsub") >= 1
        await eventually(lambda: p.statistics().cache_drops > 0)
        assert p.cached("nat", "lk") is MISS
        await eventually(lambda: p.cache.enabled, 10)
        assert await p.syn_retrieve("nat", "lk") == 3
        assert p.cached("nat", "lk") == 3  # caching resumed on the new link


async def test_heartbeat_registry(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url, heartbeat_ttl_s=3) as p:
        assert p.coord.topology is not None
        node = p.coord.node_client(p.coord.topology.node_of(slot(p.id)))
        info = json.loads(await node.get(proxy_key(p.id)) or "{}")
        assert info["id"] == p.id
        assert 0 < await node.pttl(proxy_key(p.id)) <= 3000
        port = p.coord.topology.nodes[p.coord.topology.node_of(slot(p.id))].port
    with redis.Redis(port=port) as r:  # unregistered on close
        assert r.exists(proxy_key(p.id)) == 0


async def test_catalog_mismatch_refused(cluster: LocalCluster) -> None:
    other = Catalog.from_toml(TEST_CATALOG + "\n[states.extra]\nclass='trigger'\ntype='int'\n")
    with pytest.raises(CatalogMismatch, match="only given: extra"):
        async with StateProxy(cluster.url, catalog=other):
            pass


async def test_updates_survive_a_slot_migration(cluster: LocalCluster) -> None:
    from tests.integration.test_coordinator import _migrate_slot

    async with StateProxy(cluster.url) as p:
        assert p.coord.topology is not None
        key = next(k for k in (f"mig{i}" for i in range(300)) if p.coord.topology.node_of(slot(k)) == 0)
        s = slot(key)
        src, dst = p.coord.topology.nodes[0], p.coord.topology.nodes[1]
        for _ in range(50):
            p.update("cnt", key, "add", 1)
        await p.flush()
        _migrate_slot(src.port, dst.port, dst.node_id, src.node_id, s, [f"cogs:cnt:{{{key}}}"])
        try:
            for _ in range(50):  # the proxy's slot map is stale now: MOVED, re-routed
                p.update("cnt", key, "add", 1)
                await p.flush()
            assert p.statistics().rerouted >= 1
            assert await p.syn_retrieve("cnt", key) == 100
        finally:
            _migrate_slot(dst.port, src.port, src.node_id, dst.node_id, s, [f"cogs:cnt:{{{key}}}"])
            await p.coord.refresh()


async def _half_move(p: StateProxy, prefix: str, start: int) -> tuple[str, int, Any, Any, str]:
    """A "cnt" key of node 0 set to ``start``, its slot then left half moved to node 1
    (MIGRATING/IMPORTING, the key already there): (key, slot, src, dst, Redis key)."""
    assert p.coord.topology is not None
    key = next(k for k in (f"{prefix}{i}" for i in range(300)) if p.coord.topology.node_of(slot(k)) == 0)
    s = slot(key)
    src, dst = p.coord.topology.nodes[0], p.coord.topology.nodes[1]
    rk = f"cogs:cnt:{{{key}}}"
    await p.syn_up("cnt", key, "add", start)
    with redis.Redis(port=src.port) as a, redis.Redis(port=dst.port) as b:
        b.execute_command("CLUSTER", "SETSLOT", s, "IMPORTING", src.node_id)
        a.execute_command("CLUSTER", "SETSLOT", s, "MIGRATING", dst.node_id)
        a.execute_command("MIGRATE", "127.0.0.1", dst.port, rk, 0, 5000)
    return key, s, src, dst, rk


async def test_updates_wait_out_a_slot_migration_in_progress(cluster: LocalCluster) -> None:
    """While a slot is half moved (MIGRATING/IMPORTING, its key already at the target),
    the source refuses the key (ASK); the proxy keeps re-routing those updates until
    the move completes: none is lost or applied twice, other slots flow meanwhile."""
    async with StateProxy(cluster.url) as p:
        assert p.coord.topology is not None
        other = next(k for k in (f"calm{i}" for i in range(300)) if p.coord.topology.node_of(slot(k)) == 2)
        key, s, src, dst, rk = await _half_move(p, "ask", 10)
        a, b = redis.Redis(port=src.port), redis.Redis(port=dst.port)
        try:
            for _ in range(20):
                p.update("cnt", key, "add", 1)
                p.update("cnt", other, "add", 1)
            await anyio.sleep(0.5)  # the slot stays half moved: its updates wait
            assert await p.syn_retrieve("cnt", other) == 20
            assert p.statistics().rerouted >= 1
        finally:
            from tests.integration.test_coordinator import _migrate_slot

            for c in (b, a):  # finish the move
                c.execute_command("CLUSTER", "SETSLOT", s, "NODE", dst.node_id)
            await p.flush()
            assert await p.syn_retrieve("cnt", key) == 30
            _migrate_slot(dst.port, src.port, src.node_id, dst.node_id, s, [rk])
            await p.coord.refresh()
        assert p.statistics().errors == 0


async def test_ops_on_a_slot_that_never_finishes_moving_fail_after_the_reroute_timeout(
    cluster: LocalCluster,
) -> None:
    errors: list[CogsError] = []
    settings = load_settings(url=cluster.url, reroute_timeout_s=0.5)
    async with StateProxy(settings=settings, on_error=lambda e, pkt: errors.append(e)) as p:
        key, s, src, dst, rk = await _half_move(p, "stuck", 1)
        a, b = redis.Redis(port=src.port), redis.Redis(port=dst.port)
        try:
            p.update("cnt", key, "add", 1)
            with anyio.fail_after(10):
                await p.flush()  # returns: the op failed, it does not wait forever
            assert [type(e) for e in errors] == [Moved]
            assert "kept refusing it for 0.5 s" in str(errors[0])
            assert isinstance(errors[0], Moved)
            assert errors[0].key == key
            with pytest.raises(Moved, match="kept refusing"):
                await p.syn_up("cnt", key, "add", 1)  # a waiter gets the error
            assert p.statistics().errors == 2
        finally:
            for c in (b, a):  # the move completes at last
                c.execute_command("CLUSTER", "SETSLOT", s, "NODE", dst.node_id)
        try:
            assert await p.syn_up("cnt", key, "add", 1) == 2  # nothing of the failed ops was applied
        finally:
            from tests.integration.test_coordinator import _migrate_slot

            _migrate_slot(dst.port, src.port, src.node_id, dst.node_id, s, [rk])
            await p.coord.refresh()


def test_blocking_facade_same_semantics(cluster: LocalCluster) -> None:
    got: list[tuple[Any, Any]] = []
    with BlockingStateProxy(cluster.url) as p:
        for _ in range(1000):
            p.update("cnt", "blk", "add", 1)
        assert p.syn_retrieve("cnt", "blk") == 1000  # issue order kept
        assert p.syn_up("cnt", "blk", "add", 1) == 1001
        p.asyn_retrieve("cnt", "blk", None, lambda s, pkt: got.append((s, pkt)), "pkt")
        with pytest.raises(BadDelta):
            p.update("cnt", "blk", "add", "x")
        with pytest.raises(UnknownState):
            p.update("nope", "blk", "add", 1)
        p.flush()
        assert got == [(1001, "pkt")]
        assert p.syn_check("cnt", "blk", "ge", 1000) is True
        assert p.statistics().updates == 1000
        p.syn_up("nat", "blk", "set", 4)
        assert p.syn_retrieve("nat", "blk") == 4
        assert p.cached("nat", "blk") == 4
        t = time.perf_counter()
        assert p.future("cnt", "blk").result(timeout=5) == 1001
        assert time.perf_counter() - t < 5


async def test_map_incr_coalesces_field_by_field(proxy: StateProxy) -> None:
    for i in range(300):
        proxy.update("qtypes", f"mi{i % 3}", "incr", {"all": 1, "odd": i % 2})
    await proxy.flush()
    s = proxy.statistics()
    assert s.coalesced >= 290
    assert await proxy.syn_retrieve("qtypes", "mi0") == {"all": "100", "odd": "50"}
    with pytest.raises(BadDelta, match="field: int"):
        proxy.update("qtypes", "mi0", "incr", {"all": "x"})


async def test_closing_proxy_removes_its_exactly_once_records(cluster: LocalCluster) -> None:
    before = _once_records(cluster)  # (of proxies other tests killed: they expire)
    async with StateProxy(cluster.url) as p:
        session = p._batcher.delivery.session
        for i in range(30):
            await p.syn_retrieve("cnt", f"once{i}")
        assert _once_records(cluster) == before  # reads only: nothing to apply exactly once
        for i in range(30):
            p.update("cnt", f"once{i}", "add", 1)  # an update and a read in one batch: recorded
            assert await p.syn_retrieve("cnt", f"once{i}") == 1
        records = _once_records(cluster) - before
        assert records  # a record per channel that carried updates
        streams = list(p._batcher.delivery.channels)
        assert records <= {once_key(s, session).encode() for s in streams}
        assert all(session.encode() not in r for r in records)  # named by a digest, never the secret
    assert _once_records(cluster) - before == set()


def _once_records(cluster: LocalCluster) -> set[bytes]:
    found: set[bytes] = set()
    for port in cluster.ports:
        with redis.Redis(port=port) as r:
            found |= set(r.keys("cogs:once:*"))
    return found


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_path_on_both_event_loops(cluster: LocalCluster, loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """COGS_LOOP picks the loop; the proxy's raw-transport links, batches, callbacks and
    discards work the same on asyncio's own loop and on uvloop."""
    monkeypatch.setenv("COGS_LOOP", loop)

    async def go() -> tuple[str, list[Any]]:
        got: list[Any] = []
        async with StateProxy(cluster.url) as a, StateProxy(cluster.url) as b:
            for i in range(500):
                a.update("ports", f"lp{loop}", "add", str(i % 50))
            await a.flush()
            got.append(await b.syn_retrieve("ports", f"lp{loop}", "card"))
            got.append(await a.syn_up("nat", f"lp{loop}", "set", 7))
            got.append(await b.syn_retrieve("nat", f"lp{loop}"))  # b now holds a replica
            dropped: list[str] = []
            b.add_discard_listener(lambda sidx, key, version: dropped.append(key))
            done = anyio.Event()

            def back(v: Any, pkt: Any) -> None:
                got.append((v, pkt))
                done.set()

            a.asyn_up("nat", f"lp{loop}", "add", 1, back, "pkt")
            await done.wait()
            await eventually(lambda: dropped == [f"lp{loop}"])
            got.append(await b.syn_retrieve("nat", f"lp{loop}"))
        return type(asyncio.get_running_loop()).__module__, got

    module, got = runtime.run(go)
    assert module.startswith(loop)
    assert got == [50, 7, 7, (8, "pkt"), 8]
