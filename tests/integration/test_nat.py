"""NAT mappings as global state (portmap) through real proxies on the real cluster:
unique external ports under concurrency, reverse lookups from other middleboxes,
exhaustion, replica caching with discards, idle expiry of unused mappings only."""

from __future__ import annotations

import json
import socket
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import dpkt
import pytest
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.errors import BadKey
from cogs.nf.nat import Classifier, run_nat
from cogs.nf.nat_table import NatTable, Pool, flow_id
from cogs.nf.packets import read_ipv4
from cogs.nf.synth import Synth
from cogs.proxy import StateProxy
from cogs.proxy.cache import MISS
from tests.conftest import captures
from tests.helpers import eventually


def _flows(tag: str, n: int) -> list[tuple[int, str, int]]:
    return [(6 if i % 2 else 17, f"10.{tag}.{i // 250}.{i % 250}", 1024 + i) for i in range(n)]


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_async_drops_reach_the_callback_with_their_packet(cluster: LocalCluster) -> None:
    """Async lookups that fail hand the callback None and the packet (drop it), and count."""
    errors: list[tuple[type, object]] = []
    async with StateProxy(cluster.url, on_error=lambda e, pkt: errors.append((type(e), pkt))) as p:
        nat = NatTable(p, "pmap")
        flows = _flows("5", 40)  # more new flows than the pool (20 ports) has
        seen: dict[int, object] = {}
        for i, f in enumerate(flows):
            nat.asyn_outbound(*f, lambda m, pkt: seen.__setitem__(pkt, m), i)
        await eventually(lambda: len(seen) == len(flows))
        dropped = [i for i, m in seen.items() if m is None]
        assert len(dropped) == nat.exhausted >= 20
        assert nat.errors == 0  # exhaustion is counted on its own, not as an error
        # a NAT whose pool disagrees with the coordinator's (block size 2, not 4): the
        # coordinator refuses the block; the reply packet is dropped and the error reported
        nat.pool = Pool(nat.pool.ips, nat.pool.port_min, nat.pool.port_max, 2)
        back: list[object] = []
        nat.asyn_inbound(6, "192.0.2.1", 1003, lambda m, pkt: back.append((m, pkt)), "reply")
        await eventually(lambda: back == [(None, "reply")])
        assert nat.errors == 1
        assert errors == [(BadKey, "reply")]
        for f, i in zip(flows, range(len(flows)), strict=True):
            if seen[i] is not None:
                assert await nat.release(*f)


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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
            await p.entries.syn("pmap", blk, "out", flow_id(*idle), "probe", share=False)  # reaps if due
        assert await other.inbound(17, *m_idle) is None
        await nat.release(*busy)


# -- the NAT NF on packets ---------------------------------------------------------------


def _checksums_ok(data: bytes) -> bool:
    """IP header and TCP/UDP checksums, computed here from the bytes (not by dpkt)."""
    ip = dpkt.ip.IP(data)
    hl = ip.hl * 4
    if dpkt.in_cksum(data[:hl]) != 0:
        return False
    seg = data[hl : ip.len]
    if ip.p == 17 and struct.unpack(">H", seg[6:8])[0] == 0:
        return True  # UDP without a checksum
    pseudo = ip.src + ip.dst + struct.pack(">BBH", 0, ip.p, len(seg))
    return bool(dpkt.in_cksum(pseudo + seg) == 0)


def _key(ip: dpkt.ip.IP, remote_is_dst: bool) -> tuple[Any, ...]:
    """What identifies a packet across translation: the remote end, and the payload."""
    l4 = ip.data
    remote = (ip.dst, l4.dport) if remote_is_dst else (ip.src, l4.sport)
    return (ip.p, *remote, ip.id, getattr(l4, "seq", 0), getattr(l4, "ack", 0), bytes(l4.data))


def _read(path: Path) -> list[tuple[float, dpkt.ip.IP]]:
    with path.open("rb") as fh:
        return [(ts, dpkt.ip.IP(buf)) for ts, buf in dpkt.pcap.Reader(fh)]


@pytest.mark.parametrize(
    ("n", "mode", "state"), [(3, "async", "natpool"), (2, "sync", "natsmall"), (1, "sync", "natpool")]
)
def test_nat_on_a_real_capture(cluster: LocalCluster, tmp_path: Path, n: int, mode: str, state: str) -> None:
    cap = captures("ndpi__alexa-app.pcapng")
    out = tmp_path / "out.pcap"
    r = run_nat(cap, n, cluster.url, out=out, state=state, mode=mode)
    ext_ip = "198.51.100.7" if state == "natpool" else "198.51.100.8"
    side = Classifier()
    # what went in, read here independently of the NF
    inside_out: dict[tuple[Any, ...], tuple[int, str, int]] = {}
    inside_in: dict[tuple[Any, ...], tuple[str, int]] = {}
    n_out = 0
    for _, data in read_ipv4(cap):
        ip = dpkt.ip.IP(data)
        if not isinstance(ip.data, dpkt.tcp.TCP | dpkt.udp.UDP):
            continue
        s_in, d_in = side.inside(socket.inet_ntoa(ip.src)), side.inside(socket.inet_ntoa(ip.dst))
        if s_in and not d_in:
            n_out += 1
            flow = (ip.p, socket.inet_ntoa(ip.src), ip.data.sport)
            assert inside_out.setdefault(_key(ip, True), flow) == flow  # the key tells the flow
        elif d_in and not s_in:
            inside_in[_key(ip, False)] = (socket.inet_ntoa(ip.dst), ip.data.dport)
    assert n_out > 1000  # the capture has real traffic both ways
    flows_of_ext: dict[tuple[int, str, int], set[tuple[int, str, int]]] = {}
    ext_of_flow: dict[tuple[int, str, int], set[tuple[int, str, int]]] = {}
    outs = ins = 0
    packets = _read(out)
    assert [ts for ts, _ in packets] == sorted(ts for ts, _ in packets)
    for _, ip in packets:
        assert _checksums_ok(bytes(ip))
        if socket.inet_ntoa(ip.src) == ext_ip:  # outbound, as it leaves
            outs += 1
            flow = inside_out[_key(ip, True)]
            ext = (ip.p, ext_ip, ip.data.sport)
            flows_of_ext.setdefault(ext, set()).add(flow)
            ext_of_flow.setdefault(flow, set()).add(ext)
        else:  # inbound, delivered inside: to exactly where the capture says
            ins += 1
            assert (socket.inet_ntoa(ip.dst), ip.data.dport) == inside_in[_key(ip, False)]
    dropped = r.counters["dropped: no free port"]
    assert outs + dropped == n_out == r.counters["translated outbound"] + dropped
    assert ins == r.counters["translated inbound"] > 1000
    assert all(len(f) == 1 for f in flows_of_ext.values())  # no external port shared by two flows
    assert all(len(e) == 1 for e in ext_of_flow.values())  # every packet of a flow: one mapping
    assert r.counters["reverse translated WRONG"] == 0
    if state == "natsmall":  # 116 flows, 100 ports: some blocks run out
        assert dropped > 0
        assert len(flows_of_ext) <= 100


def test_nat_drops_unsolicited_and_untranslatable(cluster: LocalCluster, tmp_path: Path) -> None:
    s = Synth(seed=3, benign_flows=0, scans=0, tunnels=0, sidejacks=0, nat_flows=40, duration=5)
    s.build()
    s.udp(1.0, "203.0.113.9", 53, "10.1.0.7", 40000, b"unsolicited")  # a reply to nothing
    s.tcp(1.1, "10.1.0.8", 40001, "10.1.0.9", 80, 2)  # stays inside
    s.frames.sort(key=lambda f: f[0])
    pcap, _ = s.write(tmp_path / "t.pcap")
    r = run_nat(pcap, 2, cluster.url, out=tmp_path / "o.pcap", state="natpool")
    assert r.counters["dropped: unsolicited (no outbound flow)"] == 1
    assert r.counters["not crossing the NAT"] == 1
    assert r.counters["reverse translated back"] == r.counters["translated inbound"] > 0


def test_nat_cli(cluster: LocalCluster, tmp_path: Path) -> None:
    cap = str(captures("ndpi__alexa-app.pcapng"))
    runner = CliRunner()
    r = runner.invoke(main, ["nf", "run", "nat", "--trace", cap, "--coordinator", cluster.url])
    assert r.exit_code == 2
    assert "--out" in r.output
    out = tmp_path / "cli.pcap"
    args = ["nf", "run", "nat", "--trace", cap, "--coordinator", cluster.url, "-n", "2", "--out", str(out)]
    r = runner.invoke(main, [*args, "--state", "natpool", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.splitlines()[0])
    assert summary["counters"]["reverse translated back"] > 1000
    assert summary["counters"]["external ports shared by two flows"] == 0
    assert out.stat().st_size > 100_000
    r = runner.invoke(main, [*args, "--state", "cnt"])
    assert r.exit_code == 2
    assert "not portmap" in r.output
