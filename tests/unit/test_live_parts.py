"""Live capture's parts without an interface: the frame decoder (against dpkt, and on
what dpkt never sees), the libpcap-compiled filters (against tcpdump), replay helpers."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import dpkt
import pytest

from cogs.errors import ConfigError
from cogs.nf import frames
from cogs.nf.bpf import FILTERS, compile_filter, sock_fprog
from cogs.nf.frames import FRAGMENT, NOT_IP, SYN, TCP, TRUNCATED, TRUNCATED_L4, UDP, Packet, decode
from cogs.nf.replay import Rate, _ethernet
from cogs.nf.synth import Synth

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def _tcp_ip(payload: bytes = b"GET / HTTP/1.1\r\n", flags: int = SYN, frag: int = 0) -> bytes:
    seg = dpkt.tcp.TCP(sport=1234, dport=80, flags=flags, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=6, data=seg)
    ip.len = len(ip)
    raw = bytearray(bytes(ip))
    raw[6:8] = frag.to_bytes(2, "big")  # flags (MF) and fragment offset
    return bytes(raw)


def test_decoder_matches_dpkt_on_a_synthetic_trace(tmp_path: Path) -> None:
    s = Synth(seed=3, benign_flows=100).build()
    for ts, frame in s.frames:
        ip = dpkt.ethernet.Ethernet(frame).data
        l4 = ip.data
        want = Packet(ts, socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), ip.p, l4.sport, l4.dport,
                      getattr(l4, "flags", 0), bytes(l4.data), getattr(l4, "seq", 0))  # fmt: skip
        assert decode(frame, ts) == want


def test_decoder_layers() -> None:
    ip = _tcp_ip()
    p = decode(ETH + b"\x08\x00" + ip, 1.0)
    assert isinstance(p, Packet)
    assert (p.src, p.sport, p.dst, p.dport, p.flags, p.payload) == (
        "198.18.0.1",
        1234,
        "198.18.0.2",
        80,
        SYN,
        b"GET / HTTP/1.1\r\n",
    )
    # 802.1Q, and QinQ around it
    assert decode(ETH + b"\x81\x00\x00\x05\x08\x00" + ip, 1.0) == p
    assert decode(ETH + b"\x88\xa8\x00\x05\x81\x00\x00\x06\x08\x00" + ip, 1.0) == p
    # Linux cooked, raw IP, BSD loopback (both byte orders), as pcap link types
    assert decode(b"\x00" * 14 + b"\x08\x00" + ip, 1.0, frames.LINUX_SLL) == p
    assert decode(ip, 1.0, 101) == p
    assert decode(b"\x02\x00\x00\x00" + ip, 1.0, frames.NULL) == p
    assert decode(b"\x00\x00\x00\x02" + ip, 1.0, frames.LOOP) == p
    assert decode(ip, 1.0, 147) == "unknown link type 147"


def test_decoder_on_what_a_wire_and_an_attacker_make() -> None:
    syn = _tcp_ip(b"")
    padded = ETH + b"\x08\x00" + syn + b"\x00" * 6  # a NIC pads a 54-byte frame to 60
    p = decode(padded, 0.0)
    assert isinstance(p, Packet)
    assert p.payload == b""  # the padding is not payload
    tso = bytearray(syn)
    tso[2:4] = b"\x00\x00"  # total length 0, as segmentation offload leaves it: the rest
    assert isinstance(decode(ETH + b"\x08\x00" + bytes(tso), 0.0), Packet)
    assert decode(ETH + b"\x08\x00" + _tcp_ip(frag=185), 0.0) == FRAGMENT
    assert decode(ETH + b"\x08\x00" + _tcp_ip(frag=0x2000), 0.0) != FRAGMENT  # MF, offset 0: the first one
    bad_ihl = bytearray(syn)
    bad_ihl[0] = 0x44
    assert decode(ETH + b"\x08\x00" + bytes(bad_ihl), 0.0) == TRUNCATED
    assert decode(ETH + b"\x08\x00" + syn[:30], 0.0) == TRUNCATED_L4
    assert decode(ETH + b"\x08\x06" + b"\x00" * 28, 0.0) == NOT_IP
    assert decode(ETH[:10], 0.0) == TRUNCATED
    assert decode(ETH + b"\x81\x00\x00", 0.0) == TRUNCATED
    for cut in range(len(padded)):  # never raises, whatever the cut
        assert decode(padded[:cut], 0.0) in (TRUNCATED, TRUNCATED_L4, NOT_IP) or isinstance(
            decode(padded[:cut], 0.0), Packet
        )


def test_decoder_ipv6_extension_headers() -> None:
    udp = b"\x13\x88\x00\x35\x00\x0a\x00\x00hi"
    hop = bytes([17, 0]) + b"\x00" * 6  # hop-by-hop, 8 bytes, then UDP
    frag_first = bytes([0, 0, 0, 0, 0, 0, 0, 1])  # fragment header, offset 0, then hop-by-hop
    src, dst = socket.inet_pton(socket.AF_INET6, "2001:db8::1"), socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    body = frag_first + hop + udp
    ip6 = b"\x60\x00\x00\x00" + len(body).to_bytes(2, "big") + bytes([44, 64]) + src + dst + body
    p = decode(ETH + b"\x86\xdd" + ip6, 2.0)
    assert isinstance(p, Packet)
    assert (p.proto, p.sport, p.dport, p.payload, p.dst) == (UDP, 5000, 53, b"hi", "2001:db8::2")
    later = bytes([17, 0, 0, 8, 0, 0, 0, 1])  # offset 1 (x 8 bytes): no transport header in it
    ip6 = b"\x60\x00\x00\x00\x00\x12" + bytes([44, 64]) + src + dst + later + udp
    assert decode(ETH + b"\x86\xdd" + ip6, 2.0) == FRAGMENT
    assert decode(ETH + b"\x86\xdd" + ip6[:41], 2.0) == TRUNCATED_L4


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed (bootstrap installs it)")
@pytest.mark.parametrize("nf", sorted(FILTERS))
def test_filters_are_what_tcpdump_compiles(nf: str) -> None:
    out = subprocess.run(["tcpdump", "-dd", "-y", "EN10MB", FILTERS[nf]], capture_output=True, text=True, check=True)
    want = [tuple(int(x, 0) for x in line.strip(" {},").split(",")) for line in out.stdout.splitlines() if line.strip()]
    assert compile_filter(FILTERS[nf]) == want


def test_filter_errors() -> None:
    with pytest.raises(ConfigError, match=r"bad capture filter 'tcp port ': .*syntax error"):
        compile_filter("tcp port ")
    with pytest.raises(ConfigError, match="1 to 4096 instructions"):
        sock_fprog([])
    prog, keep = sock_fprog(compile_filter("ip"))
    assert len(prog) == 16  # struct sock_fprog on 64-bit: u16 count, padding, pointer
    assert keep is not None


def test_replay_helpers() -> None:
    ip = _tcp_ip()
    assert _ethernet(101, ip) == b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip
    sll = _ethernet(frames.LINUX_SLL, b"\x00" * 14 + b"\x86\xdd" + b"`xyz")
    assert sll is not None
    assert sll[12:] == b"\x86\xdd`xyz"
    assert _ethernet(frames.EN10MB, b"abc") == b"abc"
    assert _ethernet(147, ip) is None
    with pytest.raises(ConfigError, match="one of --pps, --mbps, --topspeed"):
        Rate(pps=10, topspeed=True)
    with pytest.raises(ConfigError, match="positive"):
        Rate(mbps=0)
    assert TCP == 6


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--interface", "eth0", "--trace", "x.pcap"], "--trace, --local-only and --out are for captures"),
        (["--interface", "eth0", "-n", "3"], "not --middleboxes"),
        (["--interface", "eth0", "--out-interface", "eth1"], "the detectors send nothing"),
        (["--trace", "x.pcap", "--workers", "2"], "are for --interface"),
        (["--trace", "x.pcap", "--namespace", "a|"], "are for --interface"),
        ([], "give --trace FILE or --interface IF"),
    ],
)
def test_live_options_are_checked_before_anything_runs(tmp_path: Path, args: list[str], says: str) -> None:
    from click.testing import CliRunner

    from cogs.cli import main

    (tmp_path / "x.pcap").write_bytes(b"")
    args = [str(tmp_path / a) if a == "x.pcap" else a for a in args]
    r = CliRunner().invoke(main, ["nf", "run", "portscan", *args], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert says in r.output
