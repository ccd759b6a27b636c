"""The coordinator on a real 3-primary Redis Cluster: routing, batches, re-routing."""

from __future__ import annotations

import json
from collections import Counter

import anyio
import pytest
import redis

from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.frames import runs
from cogs.coordinator.ops import Op, StateTable
from cogs.errors import BadDelta, Moved, UnknownOp, UnknownState
from cogs.keys import escape, slot, state_key
from cogs.protocol import Mode

pytestmark = pytest.mark.anyio


async def test_topology_has_three_primaries_covering_all_slots(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        topo = co.topology
        assert topo is not None
        assert topo.cluster
        assert sorted(n.port for n in topo.nodes) == cluster.ports
        assert sorted(Counter(topo.owner).keys()) == [0, 1, 2]


async def test_library_on_every_primary(cluster: LocalCluster, catalog: Catalog) -> None:
    async with Coordinator(url=cluster.url) as co:
        status = await co.library_status()
        assert len(status) == 3
        assert {(s.version, s.catalog_digest) for s in status} == {(co.spec.version, catalog.digest)}


async def test_ops_spread_over_all_nodes(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        keys = [f"10.1.0.{i}" for i in range(60)]
        assert co.topology is not None
        assert {co.topology.node_of(slot(escape(k))) for k in keys} == {0, 1, 2}
        ops = [Op(Mode.UPDATE, "cnt", k, "add", i) for i, k in enumerate(keys)]
        ops += [Op(Mode.RETRIEVE, "cnt", k, "get") for k in keys]
        res = await table.execute(ops)
        assert res[: len(keys)] == [None] * len(keys)
        assert res[len(keys) :] == list(range(len(keys)))
        for i, k in enumerate(keys[:5]):  # the value really is in Redis, in the key's slot
            node = co.node_client(co.topology.node_of(slot(escape(k))))
            assert await node.get(state_key("cnt", escape(k))) == str(i).encode()


async def test_bad_ops_raise_typed_errors(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        with pytest.raises(UnknownState, match="nope"):
            await table.update("nope", "k", "add", 1)
        with pytest.raises(UnknownOp, match="push"):
            await table.update("cnt", "k", "push", 1)
        with pytest.raises(BadDelta, match=r"state=cnt key=\"k\" op=\"add\""):
            await table.update("cnt", "k", "add", "many")
        assert await table.retrieve("cnt", "k") is None


async def test_cross_slot_batch_on_one_node(cluster: LocalCluster) -> None:
    """Keys of many slots in ONE FCALL work when the node serves them all."""
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        assert co.topology is not None
        mine = [k for k in (f"x{i}" for i in range(400)) if co.topology.node_of(slot(k)) == 1][:50]
        assert len({slot(k) for k in mine}) > 40
        frame = runs((0, table.catalog.index("cnt"), "add", k, "2") for k in mine)
        reply = await co.call_batch(1, table.token, co.alert_stream(1), json.dumps(frame))
        assert reply.applied == len(mine)
        assert reply.errors == {}


async def test_key_of_another_node_is_moved_not_applied(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        assert co.topology is not None
        here = next(k for k in (f"h{i}" for i in range(100)) if co.topology.node_of(slot(k)) == 0)
        away = next(k for k in (f"a{i}" for i in range(100)) if co.topology.node_of(slot(k)) == 2)
        sidx = table.catalog.index("cnt")
        frame = runs([(0, sidx, "add", here, "1"), (0, sidx, "add", away, "1")])
        reply = await co.call_batch(0, table.token, co.alert_stream(0), json.dumps(frame))
        assert reply.applied == 1
        assert reply.errors[1].startswith("MOVED")
        assert await table.retrieve("cnt", away) is None
        assert await table.retrieve("cnt", here) == 1


async def test_reroute_after_slot_migration(cluster: LocalCluster) -> None:
    """A slot moved to another primary: ops on it come back MOVED and are re-sent."""
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        assert co.topology is not None
        key = next(k for k in (f"m{i}" for i in range(200)) if co.topology.node_of(slot(k)) == 0)
        await table.update("cnt", key, "add", 5)
        s = slot(key)
        src, dst = co.topology.nodes[0], co.topology.nodes[1]
        _migrate_slot(src.port, dst.port, dst.node_id, src.node_id, s, [state_key("cnt", key)])
        try:
            # the table still holds the old slot map: the op is MOVED, re-routed, applied once
            assert co.topology.node_of(s) == 0
            assert await table.update("cnt", key, "add", 1) == 6
            assert co.topology.node_of(s) == 1
        finally:
            _migrate_slot(dst.port, src.port, src.node_id, dst.node_id, s, [state_key("cnt", key)])
            await co.refresh()
        assert await table.retrieve("cnt", key) == 6


def _migrate_slot(src_port: int, dst_port: int, dst_id: str, src_id: str, s: int, keys: list[str]) -> None:
    src, dst = redis.Redis(port=src_port), redis.Redis(port=dst_port)
    dst.execute_command("CLUSTER", "SETSLOT", s, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", s, "MIGRATING", dst_id)
    for k in keys:
        src.execute_command("MIGRATE", "127.0.0.1", dst_port, k, 0, 5000)
    # and whatever else the slot holds (a proxy's exactly-once record, when the slot
    # became the node's first and so its alert-stream tag): a slot leaves a node empty
    while rest := src.execute_command("CLUSTER", "GETKEYSINSLOT", s, 100):
        for k in rest:
            src.execute_command("MIGRATE", "127.0.0.1", dst_port, k, 0, 5000)
    for c in (dst, src):
        c.execute_command("CLUSTER", "SETSLOT", s, "NODE", dst_id)


async def test_many_ops_concurrently_from_one_process(cluster: LocalCluster) -> None:
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)

        async def worker(w: int) -> None:
            ops = [Op(Mode.UPDATE, "tags", f"w{i % 7}", "add", f"{w}") for i in range(70)]
            res = await table.execute(ops)
            assert all(r is None for r in res)

        async with anyio.create_task_group() as tg:
            for w in range(4):
                tg.start_soon(worker, w)
        for i in range(7):
            assert await table.retrieve("tags", f"w{i}") == {"0", "1", "2", "3"}


async def test_moved_gives_up_with_clear_error_when_topology_lies(cluster: LocalCluster) -> None:
    """If re-reading the slot map never helps, the op fails with MOVED, not a hang (after
    the reroute bound: 2 s here, the default 30 s only made the test wait)."""
    async with Coordinator(url=cluster.url, reroute_timeout_s=2.0) as co:
        table = await StateTable.open(co)
        assert co.topology is not None
        key = next(k for k in (f"l{i}" for i in range(100)) if co.topology.node_of(slot(k)) == 0)

        async def wrong_refresh() -> object:
            assert co.topology is not None
            co.topology.owner[slot(key)] = 2
            return co.topology

        co.topology.owner[slot(key)] = 2
        co.refresh = wrong_refresh  # type: ignore[method-assign,assignment]
        [res] = await table.execute([Op(Mode.UPDATE, "cnt", key, "add", 1)])
        assert isinstance(res, Moved)
        assert "kept refusing it for 2 s" in str(res)  # given up at the bound set, not another
