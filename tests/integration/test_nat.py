"""NAT mappings as global state (portmap) through real proxies on the real cluster:
unique external ports under concurrency, reverse lookups from other middleboxes,
exhaustion, replica caching with discards, idle expiry of unused mappings only."""

from __future__ import annotations

import zlib
from collections import Counter

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.proxy import StateProxy
from cogs.proxy.cache import MISS
from cogs.proxy.nat import NatTable, Pool, flow_id
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


def _flows(tag: str, n: int) -> list[tuple[int, str, int]]:
    return [(6 if i % 2 else 17, f"10.{tag}.{i // 250}.{i % 250}", 1024 + i) for i in range(n)]


async def test_concurrent_middleboxes_never_share_an_external_port(cluster: LocalCluster) -> None:
    flows = _flows("1", 60)
    async with StateProxy(cluster.url) as a, StateProxy(cluster.url) as b, StateProxy(cluster.url) as c:
        tables = [NatTable(p, "pmap1") for p in (a, b, c)]
        got: dict[tuple[int, tuple[int, str, int]], tuple[str, int] | None] = {}

        async def box(i: int) -> None:
            # every box translates every flow (packets of one flow may reach any box)
            for f in flows[i::3] + flows:
                got[(i, f)] = await tables[i].outbound(*f)

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(box, i)
        per_flow = {f: {got[(i, f)] for i in range(3)} for f in flows}
        assert all(len(m) == 1 and None not in m for m in per_flow.values())  # one mapping per flow
        ext = [next(iter(m)) for m in per_flow.values()]
        assert len(set(ext)) == len(flows)  # no two flows share an external (ip, port)
        assert all(ip == "192.0.2.9" and 2000 <= port <= 2099 for ip, port in ext)  # type: ignore[misc]
        # reverse packets, translated on another box, reach the right internal flow
        for f, m in per_flow.items():
            ip, port = next(iter(m))  # type: ignore[misc]
            assert await tables[(hash(f) + 1) % 3].inbound(f[0], ip, port) == (f[1], f[2])
            assert await tables[0].inbound(23 - f[0], ip, port) is None  # other protocol: no
        for f in flows:
            assert await tables[0].release(*f)
        assert await tables[0].stats() == (0, 100)


async def test_exhaustion_drops_new_flows_and_never_duplicates(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as p:
        nat = NatTable(p, "pmap")
        pool = Pool(("192.0.2.1", "192.0.2.2"), 1000, 1009, 4)
        assert nat.pool == pool
        flows = _flows("2", 40)
        by_block = Counter(pool.blocks[zlib.crc32(flow_id(*f).encode()) % 6] for f in flows)
        room = {b: 2 if b.endswith("|1008") else 4 for b in pool.blocks}
        expected = sum(min(n, room[b]) for b, n in by_block.items())
        got = [await nat.outbound(*f) for f in flows]
        ok = [m for m in got if m is not None]
        assert len(ok) == expected
        assert len(set(ok)) == len(ok)
        assert nat.exhausted == len(flows) - expected
        assert (await nat.stats())[0] == expected
        for f, m in zip(flows, got, strict=True):
            if m is not None:
                await nat.release(*f)


async def test_replica_caches_per_flow_and_drops_on_release(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as a, StateProxy(cluster.url) as b:
        na, nb = NatTable(a, "pmap"), NatTable(b, "pmap")
        f = (6, "10.3.0.1", 5555)
        first = await na.outbound(*f)
        assert first is not None
        sent = a.statistics().ops_sent
        assert await na.outbound(*f) == first  # served from the replica
        assert a.statistics().ops_sent == sent
        assert a.statistics().cache_hits >= 1
        assert await nb.inbound(6, *first) == (f[1], f[2])
        assert await nb.release(*f)
        await eventually(lambda: a.cached("pmap", "o|" + flow_id(*f)) is MISS)
        assert await na.inbound(6, *first) is None  # and the reverse direction is gone


async def test_async_packets_of_a_new_flow_share_one_lookup_in_order(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as p:
        nat = NatTable(p, "pmap1")
        seen: list[tuple[int, tuple[str, int] | None]] = []
        sent = p.statistics().ops_sent
        for i in range(20):
            nat.asyn_outbound(6, "10.4.0.1", 7000, lambda m, pkt: seen.append((pkt, m)), i)
        await eventually(lambda: len(seen) == 20)
        assert [s[0] for s in seen] == list(range(20))  # callbacks in packet order
        assert len({s[1] for s in seen}) == 1
        assert p.statistics().ops_sent - sent == 1  # one round trip for them all
        assert await nat.release(6, "10.4.0.1", 7000)


async def test_idle_mappings_expire_busy_ones_stay(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as p:
        nat = NatTable(p, "pmap")  # idle ttl 1 s
        busy, idle = (17, "10.5.0.1", 53), (17, "10.5.0.2", 53)
        m_busy, m_idle = await nat.outbound(*busy), await nat.outbound(*idle)
        assert m_busy is not None
        assert m_idle is not None
        with anyio.fail_after(10):
            for _ in range(25):  # 2.5 s of packets on one flow only
                assert await nat.outbound(*busy) == m_busy
                await anyio.sleep(0.1)
        # the idle flow's mapping was reclaimed at the coordinator; the busy one lives
        other = NatTable(p, "pmap")
        assert await other.inbound(17, *m_busy) == (busy[1], busy[2])
        await eventually(lambda: p.cached("pmap", "o|" + flow_id(*idle)) is MISS)
        for blk in {nat.block_of_flow(flow_id(*idle))}:
            await p.syn_entry("pmap", blk, "out", flow_id(*idle), "probe", share=False)  # reaps if due
        assert await other.inbound(17, *m_idle) is None
        await nat.release(*busy)
