"""NF building blocks without Redis: packet input on broken captures, the flow
splitter, detector logic (recording the updates it issues)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dpkt
import pytest

from cogs.nf.detectors import DnsTunnel, PortScan, SideJack, entropy, registered_domain
from cogs.nf.packets import ACK, RST, SYN, TCP, Packet, TraceError, TraceStats, read_trace
from cogs.nf.splitter import flow_hash, middlebox_of
from cogs.nf.synth import Synth


def _recorder() -> tuple[list[tuple[str, str, str, Any]], Any]:
    calls: list[tuple[str, str, str, Any]] = []
    return calls, lambda *a: calls.append(a)


def test_flow_hash_is_symmetric_and_spreads() -> None:
    assert flow_hash(6, "1.1.1.1", 1234, "2.2.2.2", 80) == flow_hash(6, "2.2.2.2", 80, "1.1.1.1", 1234)
    boxes = {middlebox_of(4, 6, "9.9.9.9", 40000, "1.2.3.4", port) for port in range(100)}
    assert boxes == {0, 1, 2, 3}


@pytest.fixture
def synth_pcap(tmp_path: Path) -> Path:
    pcap, _ = Synth(seed=1, benign_flows=50, scans=1, tunnels=1, sidejacks=1).build().write(tmp_path / "s.pcap")
    return pcap


@pytest.mark.parametrize("extra", [5, 0])
def test_truncated_capture_is_read_up_to_the_cut(synth_pcap: Path, tmp_path: Path, extra: int) -> None:
    n = sum(1 for _ in read_trace(synth_pcap))
    data = synth_pcap.read_bytes()
    first_len = int.from_bytes(data[24 + 8 : 24 + 12], "little")  # caplen of record 1
    cut = tmp_path / "cut.pcap"
    # cut inside record 2's header (extra=5), or inside record 1's data (extra=0)
    cut.write_bytes(data[: 24 + 16 + first_len + extra] if extra else data[: 24 + 16 + first_len // 2])
    st = TraceStats()
    got = list(read_trace(cut, st))
    assert len(got) <= 1 < n
    assert st.frames == len(got) + sum(v for k, v in st.skipped.items() if k != "truncated capture")
    if extra:
        assert st.skipped["truncated capture"] == 1


def test_garbage_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(TraceError, match="not a pcap or pcapng"):
        list(read_trace(junk))
    with pytest.raises(TraceError, match="No such file"):
        list(read_trace(tmp_path / "none.pcap"))


def test_malformed_frames_are_skipped_and_counted(tmp_path: Path) -> None:
    p = tmp_path / "m.pcap"
    ip6 = dpkt.ip6.IP6(src=b"\x20\x01" + b"\x00" * 14, dst=b"\x20\x01" + b"\x00" * 13 + b"\x01", nxt=17, hlim=64)
    ip6.data = dpkt.udp.UDP(sport=5, dport=53, data=b"xx")
    ip6.plen = len(ip6.data)
    eth6 = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP6, data=ip6)
    with p.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        w.writepkt(bytes(eth6), ts=1.0)
        w.writepkt(b"\x01\x02\x03", ts=2.0)  # far too short for Ethernet
        w.writepkt(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_ARP, data=b"\x00" * 28)), ts=3.0)
    st = TraceStats()
    pkts = list(read_trace(p, st))
    assert [(x.src, x.dport) for x in pkts] == [("2001::", 53)]
    assert st.frames == 3
    assert sum(st.skipped.values()) == 2


def test_portscan_counts_failed_attempts_only() -> None:
    calls, up = _recorder()
    d = PortScan(up)
    s, t = "6.6.6.6", "10.0.0.1"
    d.packet(Packet(0.0, s, t, TCP, 1000, 22, SYN, b""))  # accepted: no count
    d.packet(Packet(0.1, t, s, TCP, 22, 1000, SYN | ACK, b""))
    d.packet(Packet(0.2, s, t, TCP, 1001, 23, SYN, b""))  # rejected: counted at once
    d.packet(Packet(0.3, t, s, TCP, 23, 1001, RST | ACK, b""))
    d.packet(Packet(0.4, s, t, TCP, 1002, 24, SYN, b""))  # unanswered: counted at the end
    assert [c[3] for c in calls if c[0] == "scan_ports"] == ["23"]
    d.finish()
    assert sorted(c[3] for c in calls if c[0] == "scan_ports") == ["23", "24"]
    assert {c[1] for c in calls if c[0] == "scan_hosts"} == {"6.6.6.6>23", "6.6.6.6>24"}
    assert PortScan.key_of("scan_ports", "6.6.6.6>10.0.0.1") == "6.6.6.6"


def test_dns_helpers() -> None:
    assert registered_domain("a.b.example.com") == "example.com"
    assert registered_domain("x.news.example.co.uk") == "example.co.uk"
    assert entropy("aaaa") == 0
    assert entropy("abcdefgh") == 3


def test_dnstunnel_updates_per_query(synth_pcap: Path) -> None:
    calls, up = _recorder()
    d = DnsTunnel(up)
    for p in read_trace(synth_pcap):
        d.packet(p)
    subs = [c for c in calls if c[0] == "dns_subdomains" and c[1] == "tunnel0.example"]
    assert len(subs) == 150
    assert len({c[3] for c in subs}) == 150  # distinct names
    assert any(c[0] == "dns_qtypes" and c[3] == {"all": 1, "odd": 1} for c in calls)


def test_sidejack_reads_session_cookies(synth_pcap: Path) -> None:
    calls, up = _recorder()
    d = SideJack(up)
    for p in read_trace(synth_pcap):
        d.packet(p)
    by_cookie: dict[str, set[str]] = {}
    for _, key, _, ip in calls:
        by_cookie.setdefault(key, set()).add(ip)
    shared = [k for k, ips in by_cookie.items() if len(ips) > 1]
    assert len(shared) == 1
    assert shared[0].startswith("PHPSESSID=")
    assert all("theme" not in k for k in by_cookie)  # not a session cookie
