"""The evasions of attacks 20-22 piece by piece: IP reassembly, IPv6 header chains,
HTTP requests as servers read them, DNS messages over TCP; each bounded, each drop
counted (the crafted captures run through real NFs in tests/integration)."""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any

import dpkt

from cogs.nf.defrag import EVICTED, EXPIRED, INCONSISTENT, OVERLAP, TOO_BIG, Defrag
from cogs.nf.detectors import DnsTunnel, SideJack
from cogs.nf.frames import FIN, FRAGMENT, HELD, SYN, TCP, TOO_MANY_EXT, UDP, Packet, decode
from cogs.nf.payloads import MAX_COOKIES, MAX_REQUESTS, http_cookies, http_requests, url_decoded
from cogs.nf.streams import MAX_MESSAGES, Messages
from tests.evasions import Evasions

ETH4, ETH6 = b"\x02" * 12 + b"\x08\x00", b"\x02" * 12 + b"\x86\xdd"


def _syn4(sport: int = 45000, dport: int = 22) -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=SYN, seq=7, win=65535)
    ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=6, data=seg)
    ip.len = len(ip)
    return bytes(ip)[20:]


def _frag4(l4: bytes, off: int, more: bool, ident: int = 9, proto: int = 6) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=proto, id=ident,
                    offset=off // 8, mf=int(more), data=l4)  # fmt: skip
    ip.len = 20 + len(l4)
    return ETH4 + bytes(ip)


def _ip6(nxt: int, payload: bytes) -> bytes:
    a = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    return ETH6 + struct.pack(">IHBB", 6 << 28, len(payload), nxt, 64) + a + a + payload


def test_ipv4_fragments_are_reassembled_in_any_order() -> None:
    syn, d = _syn4(), Defrag()
    assert decode(_frag4(syn[:8], 0, True), 1.0, defrag=d) == HELD  # 8 bytes: ports and sequence number
    p = decode(_frag4(syn[8:], 8, False), 1.1, defrag=d)
    assert isinstance(p, Packet)
    assert (p.sport, p.dport, p.flags, p.seq, p.ts) == (45000, 22, SYN, 7, 1.1)
    assert (d.reassembled, len(d), d.bytes) == (1, 0, 0)
    # the last piece first, then a repeat of it (a retransmission: ignored), then the first
    assert decode(_frag4(syn[8:], 8, False, ident=10), 2.0, defrag=d) == HELD
    assert decode(_frag4(syn[8:], 8, False, ident=10), 2.0, defrag=d) == HELD
    assert isinstance(decode(_frag4(syn[:8], 0, True, ident=10), 2.1, defrag=d), Packet)
    # without a table: the first fragment is what it holds, the others are skipped
    assert decode(_frag4(syn[8:], 8, False), 3.0) == FRAGMENT


def test_reassembly_drops_what_linux_drops_and_counts_it() -> None:
    d = Defrag()
    data = bytes(range(48))
    d.add("overlap", 0.0, 0, True, data[:16])
    assert d.add("overlap", 0.0, 8, False, data[8:]) is None  # overlaps the first piece
    d.add("end", 0.0, 16, False, data[16:24])
    assert d.add("end", 0.0, 24, True, data[24:32]) is None  # past the end the last piece set
    assert d.add("big", 0.0, 65528, False, data[:16]) is None
    d.add("old", 0.0, 0, True, data[:8])
    d.add("new", 31.0, 0, True, data[:8])  # 31 s later: "old" expired
    assert d.counters == {OVERLAP: 1, INCONSISTENT: 1, TOO_BIG: 1, EXPIRED: 1}
    assert len(d) == 1
    d.finish()
    assert d.counters[EXPIRED] == 2
    assert (len(d), d.bytes) == (0, 0)


def test_reassembly_table_is_bounded() -> None:
    d = Defrag(max_datagrams=100, max_bytes=50_000)
    for i in range(1000):  # first fragments that never complete
        d.add(i, 0.0, 0, True, bytes(200))
        assert len(d) <= 100
        assert d.bytes <= 50_000
    assert d.counters[EVICTED] == 1000 - len(d)
    assert d.add(999, 0.0, 200, False, bytes(8)) == (bytes(208), None)  # the newest still completes


def test_ipv6_fragments_and_extension_headers() -> None:
    syn = dpkt.tcp.TCP(sport=45000, dport=80, flags=SYN, seq=7, win=65535)
    raw = bytes(syn)
    d = Defrag()
    # the fragmentable part: a destination-options header, then TCP
    part = bytes([6, 0, 1, 4, 0, 0, 0, 0]) + raw
    f1 = _ip6(44, struct.pack(">BBHI", 60, 0, 0 | 1, 77) + part[:16])
    f2 = _ip6(44, struct.pack(">BBHI", 60, 0, 16, 77) + part[16:])
    assert decode(f1, 0.0, defrag=d) == HELD
    p = decode(f2, 0.1, defrag=d)
    assert isinstance(p, Packet)
    assert (p.proto, p.sport, p.dport, p.flags) == (TCP, 45000, 80, SYN)
    assert decode(f2, 0.2) == FRAGMENT  # no table
    # an atomic fragment (offset 0, the last) is the datagram itself (RFC 6946)
    atomic = decode(_ip6(44, struct.pack(">BBHI", 6, 0, 0, 78) + raw), 0.3, defrag=d)
    assert isinstance(atomic, Packet)
    assert atomic.sport == 45000

    def chain(n: int, kinds: tuple[int, ...] = (60,)) -> Any:
        data, nxt = raw, 6
        for i in range(n):  # hop-by-hop only first in real traffic; the decoder is lenient
            kind = kinds[i % len(kinds)]
            data, nxt = (
                (bytes([nxt, 2, 0, 0, 0, 0, 0, 0]) + bytes(8) if kind == 51 else bytes([nxt, 0]) + bytes(6)) + data,
                kind,
            )
        return decode(_ip6(nxt, data), 0.0)

    assert chain(9).dport == 80
    assert chain(20, (0, 43, 60, 135, 51)).dport == 80  # Linux took 20 in a row
    assert chain(32).dport == 80
    assert chain(33) == TOO_MANY_EXT


def test_http_requests_as_servers_read_them() -> None:
    c: Counter[str] = Counter()
    cookie = b"Cookie: PHPSESSID=abc\r\n\r\n"
    assert http_requests(b"\r\n\r\nGET / HTTP/1.1\r\n" + cookie, c) == [[(b"PHPSESSID", b"abc")]]
    assert http_requests(b"PROPFIND /x HTTP/1.1\r\n" + cookie, c) == [[(b"PHPSESSID", b"abc")]]
    assert http_requests(b"MKCALENDAR /x HTTP/1.1\n" + cookie, c) == [[(b"PHPSESSID", b"abc")]]
    for not_one in (
        b"propfind /x HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"FOO bar\r\n",
        b"FOO /x HTTP/1.1",
        b"\r\n",
        b"AB /x HTTP/1.1\r\n",
        b"M1 /x HTTP/1.1\r\n",
    ):
        assert http_requests(not_one + cookie, c) is None, not_one
    # pipelined: a body of Content-Length bytes skipped to reach the next request
    three = (
        b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nCookie: a=1\r\n\r\nGETGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n"
        + cookie
    )
    assert http_requests(three, c) == [[(b"a", b"1")], [], [(b"PHPSESSID", b"abc")]]
    chunked = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /b HTTP/1.1\r\n" + cookie
    assert http_requests(chunked, c) == [[]]  # what follows is body
    assert http_requests(b"GET / HTTP/1.1\n" + b"Cookie: a=1\n\nGET /2 HTTP/1.1\n" + cookie, c) == [
        [(b"a", b"1")],
        [(b"PHPSESSID", b"abc")],
    ]  # bare line feeds
    assert not c
    many = b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(100))
    assert len(http_requests(many, c) or []) == MAX_REQUESTS
    assert c["http requests over the limit"] == 1
    got = http_requests(b"GET / HTTP/1.1\r\nCookie: " + b"".join(b"c%d=1; " % i for i in range(300)) + b"\r\n\r\n", c)
    assert got is not None
    assert len(got[0]) == MAX_COOKIES
    assert c["cookies over the limit"] == 300 - MAX_COOKIES
    assert http_requests(b"GET / HTTP/1.1\r\nHost: x\r\n", c) == [[]]
    assert c["http request heads continued in a later segment"] == 1
    assert http_cookies(b"GET") is None
    assert url_decoded(b"PHPSESS%49D") == b"PHPSESSID"
    assert url_decoded(b"a+b%2") == b"a b%2"  # as PHP: + is a space, a broken escape stays


def _sessions(payload: bytes, src: str = "10.0.0.1") -> list[str]:
    calls: list[tuple[str, str, str, Any]] = []
    d = SideJack(lambda *a: calls.append(a))
    d.packet(Packet(0.0, src, "10.0.0.80", TCP, 1000, 80, 0x18, payload))
    assert all(c[3] == src for c in calls)
    return [c[1] for c in calls]


def test_sidejack_keys_as_the_server_sees_the_session() -> None:
    plain = _sessions(b"GET / HTTP/1.1\r\nCookie: PHPSESSID=5f2b\r\n\r\n")
    assert plain == ["PHPSESSID=5f2b"]
    assert _sessions(b"GET / HTTP/1.1\r\nCookie: PHPSESS%49D=%35f2b\r\n\r\n") == plain
    decoys = b"sid=1; sid=2; sid=3; sid=4; session=5; sessionid=6; jsessionid=7; connect.sid=8; PHPSESSID=5f2b"
    assert "PHPSESSID=5f2b" in _sessions(b"GET / HTTP/1.1\r\nCookie: " + decoys + b"\r\n\r\n")
    # one name many times: the first and the last (what servers read) come first
    many = b"GET / HTTP/1.1\r\nCookie: " + b"".join(b"sid=%d; " % i for i in range(40)) + b"\r\n\r\n"
    keys = _sessions(many)
    assert keys[:2] == ["sid=0", "sid=39"]
    assert len(keys) == 16
    assert _sessions(b"GET / HTTP/1.1\r\nCookie: theme=dark; lang=en\r\n\r\n") == []


def _dns(name: bytes = b"\x03abc\x07example\x03com\x00") -> bytes:
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x10\x00\x01"


def _seg(seq: int, data: bytes, flags: int = 0x18, sport: int = 4000, ts: float = 0.0) -> Packet:
    return Packet(ts, "10.0.0.1", "10.0.0.53", TCP, sport, 53, flags, data, seq)


def test_dns_over_tcp_reassembled_per_flow() -> None:
    c: Counter[str] = Counter()
    m = Messages(c, "dns tcp")
    q = struct.pack(">H", len(_dns())) + _dns()
    assert m.segment(_seg(99, b"", SYN)) == []
    assert m.segment(_seg(100, q[:2])) == []  # the length alone
    assert m.segment(_seg(102, q[2:9])) == []
    assert m.segment(_seg(102, q[2:9])) == []  # a retransmission: read once
    assert m.segment(_seg(109, q[9:] + q + q[:1])) == [_dns(), _dns()]  # the rest, one more, a byte
    assert m.segment(_seg(109 + len(q[9:]) + len(q) + 1, q[1:], FIN | 0x10)) == [_dns()]
    assert len(m) == 0
    assert not c
    # a gap (a segment the capture lost): the partial message is dropped, framing resumes
    m.segment(_seg(1, q[:5], SYN, sport=4001))
    assert m.segment(_seg(500, q, sport=4001)) == [_dns()]
    assert c["dns tcp gaps (partial message dropped)"] == 1
    # pipelined beyond the per-segment bound: counted
    assert len(m.segment(_seg(0, q * (MAX_MESSAGES + 5), sport=4002))) == MAX_MESSAGES
    assert c["dns tcp messages over the limit"] == 1
    m.finish()  # flows left open hold whole messages only: nothing lost
    assert set(c) == {"dns tcp gaps (partial message dropped)", "dns tcp messages over the limit"}


def test_dns_over_tcp_state_is_bounded() -> None:
    c: Counter[str] = Counter()
    m = Messages(c, "dns tcp", max_flows=50, max_bytes=10_000)
    for i in range(500):  # each holds a partial message of 1,000 bytes
        m.segment(_seg(0, b"\x10\x00" + bytes(998), sport=10_000 + i))
        assert len(m) <= 50
        assert m.bytes <= 10_000
    assert c["dns tcp flows evicted (table full)"] == 500 - len(m)
    m.expire(120.0)
    assert len(m) == 0
    assert c["dns tcp partial messages expired"] > 0


def test_dnstunnel_reads_tcp_queries_split_and_pipelined() -> None:
    calls: list[tuple[str, str, str, Any]] = []
    d = DnsTunnel(lambda *a: calls.append(a))
    q = struct.pack(">H", len(_dns())) + _dns()
    for p in (_seg(0, b"", SYN), _seg(1, q[:2]), _seg(3, q[2:] + q + q), _seg(3 + len(q[2:]) + 2 * len(q), q, FIN)):
        d.packet(p)
    d.packet(Packet(0.0, "10.0.0.1", "10.0.0.53", UDP, 5, 53, 0, _dns()))
    assert d.counters["queries"] == 5
    assert len([c for c in calls if c[0] == "dns_subdomains"]) == 5


def test_evasion_capture_decodes_without_a_coordinator(tmp_path: Any) -> None:
    """The crafted capture of the integration tests, through the detectors alone."""
    from cogs.nf.packets import TraceStats, read_trace

    ev = Evasions().build()
    st = TraceStats()
    packets = list(read_trace(ev.write(tmp_path / "ev.pcap"), st))
    assert st.reassembled == 30 + 30 + 120 + 120  # SYNs over IPv4 and IPv6, DNS over UDP and IPv6
    assert st.skipped == {HELD: 300, TOO_MANY_EXT: 30}
    d = DnsTunnel(lambda *a: None)
    for p in packets:
        d.packet(p)
    d.finish()
    assert d.counters == {"queries": 5 * 120}


def test_live_prefilter_admits_every_request_the_detector_reads(tmp_path: Any) -> None:
    """tcpdump runs the sidejack pre-filter (libpcap's compiler, as the kernel gets it)
    on segments the parser reads as requests, and on ones it does not."""
    import subprocess

    from cogs.nf.bpf import FILTERS

    requests = [b"GET / HTTP/1.1\r\n", b"\r\n\r\nGET / HTTP/1.1\r\n", b"PROPFIND /x HTTP/1.1\r\n",
                b"VERSION-CONTROL /x HTTP/1.1\r\n", b"M_X /x HTTP/1.1\r\n", b"\nPOST / HTTP/1.0\n"]  # fmt: skip
    others = [b"HTTP/1.1 200 OK\r\n", b"<html>", b"xyz", b"Ab /x HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00"]
    path = tmp_path / "http.pcap"
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for payload in requests + others:
            assert (http_requests(payload + b"Cookie: a=1\r\n\r\n", Counter()) is not None) == (payload in requests)
            w.writepkt(_frag4(bytes(dpkt.tcp.TCP(sport=1, dport=80, flags=0x18, data=payload)), 0, False))
    out = subprocess.run(["tcpdump", "-nr", str(path), FILTERS["sidejack"]], capture_output=True, text=True, check=True)
    assert len(out.stdout.splitlines()) == len(requests)
