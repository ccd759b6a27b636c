"""Captures of attacks in the forms an attacker used to slip past the detectors (issue
16's follow-up, attacks 20-22), each in a form the receiving server (Linux, PHP, a
resolver) still accepts as the attack:

* portscan: SYNs in two IPv4 fragments (8 bytes first: ports and sequence number),
  over IPv6 behind 9 and 20 destination-options headers, in IPv6 fragments; and one
  behind 40 headers, past the decoder's bound (counted, not reported);
* dnstunnel: TXT queries over TCP with the length prefix in its own segment, 16
  pipelined in one segment, one cut in three segments with a retransmission, UDP in
  two IPv4 fragments, and over IPv6 in fragments behind a destination-options header;
* sidejack: a victim's PHPSESSID replayed by an attacker after an empty line, with
  PROPFIND, pipelined behind a harmless request, percent-encoded in its value and in
  its name, behind 8 session-cookie decoys; and two it cannot see (counted): behind
  300 other cookies, and in a later segment than its request line.

Each attack has its own attacker (and domain, session), so ``expected`` names the
alert of each evasion; ``missed`` the ones still out of reach.
"""

from __future__ import annotations

import random
import socket
import string
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

S, A, F, P, R = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_RST
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
SERVER6 = "2001:db8:1::9"


def _v6(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, a)


def _cksum6(src: str, dst: str, proto: int, l4: bytes) -> int:
    return int(dpkt.in_cksum(_v6(src) + _v6(dst) + struct.pack(">I3xB", len(l4), proto) + l4))


def _req(cookie: bytes, method: bytes = b"GET", pre: bytes = b"") -> bytes:
    return pre + method + b" /account HTTP/1.1\r\nHost: shop.example\r\nCookie: " + cookie + b"\r\n\r\n"


SIDEJACKS = ("empty lines first", "PROPFIND", "pipelined", "encoded value", "encoded name", "decoys",
             "300 cookies first", "cookie in a later segment")  # fmt: skip
UNSEEN = ("300 cookies first", "cookie in a later segment")


def _sidejack(name: str, s: bytes) -> list[bytes]:
    """The segments an attacker sends to present session id ``s`` in the form ``name``."""
    if name == "empty lines first":
        return [_req(b"PHPSESSID=" + s, pre=b"\r\n\r\n")]
    if name == "PROPFIND":
        return [_req(b"PHPSESSID=" + s, b"PROPFIND")]
    if name == "pipelined":  # behind a POST with a body and a GET
        head = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nx=1&yGET /b HTTP/1.1\r\n\r\n"
        return [head + _req(b"PHPSESSID=" + s)]
    if name == "encoded value":
        return [_req(b"PHPSESSID=%" + b"%02X" % s[0] + s[1:])]
    if name == "encoded name":
        return [_req(b"PHPSESS%49D=" + s)]
    if name == "decoys":
        return [
            _req(b"sid=1; sid=2; sid=3; sid=4; session=5; sessionid=6; jsessionid=7; connect.sid=8; PHPSESSID=" + s)
        ]
    if name == "300 cookies first":
        return [_req(b"".join(b"c%d=1; " % i for i in range(300)) + b"PHPSESSID=" + s)]
    # the Cookie header in the segment after the request line
    return [b"GET /account HTTP/1.1\r\nHost: shop.example\r\n", b"Cookie: PHPSESSID=" + s + b"\r\n\r\n"]


@dataclass
class Evasions:
    seed: int = 20
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    expected: dict[str, set[str]] = field(default_factory=dict)
    missed: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t = 1_700_000_000.0
        self.rng = random.Random(self.seed)
        self.ip_id = 1000

    # -- frames ------------------------------------------------------------------------

    def _add(self, frame: bytes) -> None:
        self.t += 0.001
        self.frames.append((self.t, frame))

    def _eth(self, l3: bytes, v6: bool = False) -> None:
        self._add(MAC_B + MAC_A + (b"\x86\xdd" if v6 else b"\x08\x00") + l3)  # by hand: dpkt would parse l3

    def _ip4(self, src: str, dst: str, proto: int, l4: bytes, **kw: int) -> bytes:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4, **kw)
        ip.len = 20 + len(l4)
        return bytes(ip)

    def _tcp4(self, src: str, sport: int, dst: str, dport: int, flags: int, data: bytes = b"", seq: int = 1) -> bytes:
        seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=1 if flags & A else 0, win=65535,
                           data=data)  # fmt: skip
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=seg)
        ip.len = len(ip)
        return bytes(ip)  # dpkt fills in the TCP checksum over the pseudo header

    def _frag4(self, src: str, dst: str, proto: int, l4: bytes, cut: int) -> None:
        """``l4`` in two IPv4 fragments, the first ``cut`` bytes (a multiple of 8) long."""
        self.ip_id += 1
        self._eth(self._ip4(src, dst, proto, l4[:cut], id=self.ip_id, mf=1, offset=0))
        self._eth(self._ip4(src, dst, proto, l4[cut:], id=self.ip_id, offset=cut // 8))

    def _ip6(self, src: str, dst: str, nxt: int, payload: bytes) -> bytes:
        return struct.pack(">IHBB", 6 << 28, len(payload), nxt, 64) + _v6(src) + _v6(dst) + payload

    @staticmethod
    def _destopts(nxt: int, data: bytes, n: int) -> tuple[int, bytes]:
        for _ in range(n):  # next header, length 0 (8 bytes), PadN of 4
            data, nxt = bytes([nxt, 0, 1, 4, 0, 0, 0, 0]) + data, 60
        return nxt, data

    def _l4_6(self, src: str, dst: str, proto: int, seg: dpkt.Packet) -> bytes:
        seg.sum = 0
        seg.sum = _cksum6(src, dst, proto, bytes(seg))
        return bytes(seg)

    def _frag6(self, src: str, dst: str, nxt: int, fragmentable: bytes, cut: int) -> None:
        """``fragmentable`` (starting with next header ``nxt``) in two IPv6 fragments."""
        self.ip_id += 1
        for off, part, more in ((0, fragmentable[:cut], 1), (cut, fragmentable[cut:], 0)):
            frag = struct.pack(">BBHI", nxt, 0, off | more, self.ip_id)
            self._eth(self._ip6(src, dst, 44, frag + part), v6=True)

    # -- portscan ----------------------------------------------------------------------

    def _probe4(self, scanner: str, target: str, fragment: bool) -> None:
        for port in range(1, 31):
            syn = self._tcp4(scanner, 45000, target, port, S, seq=7)
            if fragment:
                self._frag4(scanner, target, 6, syn[20:], 8)  # 8 bytes: ports and sequence number
            else:
                self._eth(syn)
            self._eth(self._tcp4(target, port, scanner, 45000, R | A, seq=0))

    def _probe6(self, scanner: str, headers: int, fragment: bool = False) -> None:
        for port in range(1, 31):
            syn = self._l4_6(scanner, SERVER6, 6, dpkt.tcp.TCP(sport=45000, dport=port, flags=S, seq=7, win=65535))
            if fragment:
                self._frag6(scanner, SERVER6, 6, syn, 8)
            else:
                nxt, data = self._destopts(6, syn, headers)
                self._eth(self._ip6(scanner, SERVER6, nxt, data), v6=True)
            rst = self._l4_6(SERVER6, scanner, 6, dpkt.tcp.TCP(sport=port, dport=45000, flags=R | A, seq=0, ack=8))
            self._eth(self._ip6(SERVER6, scanner, 6, rst), v6=True)

    def portscan(self) -> None:
        self._probe4("203.0.113.51", "10.3.0.10", fragment=True)
        self._probe6("2001:db8::51", 9)
        self._probe6("2001:db8::52", 20)
        self._probe6("2001:db8::53", 0, fragment=True)
        self._probe6("2001:db8::54", 40)  # past the decoder's bound
        self.expected["portscan"] = {"203.0.113.51", "2001:db8::51", "2001:db8::52", "2001:db8::53"}
        self.missed["portscan"] = {"2001:db8::54"}

    # -- dnstunnel ---------------------------------------------------------------------

    def _queries(self, domain: str, n: int = 120) -> list[bytes]:
        out = []
        for i in range(n):
            label = "".join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(50))
            q = dpkt.dns.DNS(id=i, op=dpkt.dns.DNS_RD, qd=[dpkt.dns.DNS.Q(name=f"{label}.t.{domain}", type=16)])
            out.append(bytes(q))
        return out

    def _dns_tcp(self, client: str, sport: int, segments: list[tuple[int, bytes]]) -> None:
        """One TCP connection to the resolver carrying ``segments`` ((offset, bytes) of the stream)."""
        resolver = "10.2.0.53"
        self._eth(self._tcp4(client, sport, resolver, 53, S, seq=100))
        self._eth(self._tcp4(resolver, 53, client, sport, S | A, seq=900))
        for off, data in segments:
            self._eth(self._tcp4(client, sport, resolver, 53, A | P, data, seq=101 + off))
        end = 101 + max(off + len(d) for off, d in segments)
        self._eth(self._tcp4(client, sport, resolver, 53, F | A, seq=end))

    def dnstunnel(self) -> None:
        framed = [[struct.pack(">H", len(q)) + q for q in self._queries(d)] for d in
                  ("tcp-split.example", "tcp-pipe.example", "tcp-cut.example")]  # fmt: skip
        for i, m in enumerate(framed[0]):  # the length in its own segment, then the message
            self._dns_tcp("10.2.0.8", 40000 + i, [(0, m[:2]), (2, m[2:])])
        for c in range(0, len(framed[1]), 16):  # 16 queries pipelined in one segment (RFC 7766)
            self._dns_tcp("10.2.0.9", 41000 + c, [(0, b"".join(framed[1][c : c + 16]))])
        stream = b"".join(framed[2])  # one connection, cut anywhere, one segment sent twice
        cuts = sorted(self.rng.sample(range(1, len(stream)), 40))
        segs = [(a, stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        self._dns_tcp("10.2.0.10", 42000, [*segs[:10], segs[9], *segs[10:]])
        for q in self._queries("frag-udp.example"):  # UDP in two IPv4 fragments
            dg = dpkt.udp.UDP(sport=self.rng.randrange(30000, 60000), dport=53, data=q)
            dg.ulen = len(dg)
            self._frag4("10.2.0.11", "10.2.0.53", 17, bytes(dg), 24)
        for q in self._queries("v6-frag.example"):  # IPv6: fragments, a destination-options header after
            dg = dpkt.udp.UDP(sport=self.rng.randrange(30000, 60000), dport=53, data=q)
            dg.ulen = len(dg)
            udp = self._l4_6("2001:db8::7", SERVER6, 17, dg)
            nxt, data = self._destopts(17, udp, 1)
            self._frag6("2001:db8::7", SERVER6, nxt, data, 32)
        domains = ("tcp-split.example", "tcp-pipe.example", "tcp-cut.example", "frag-udp.example", "v6-frag.example")
        clients = ("10.2.0.8", "10.2.0.9", "10.2.0.10", "10.2.0.11", "2001:db8::7")
        self.expected["dnstunnel"] = {*domains, *clients}
        self.missed["dnstunnel"] = set()

    # -- sidejack ----------------------------------------------------------------------

    def _http(self, client: str, sport: int, segments: list[bytes]) -> None:
        server = "192.0.2.80"
        self._eth(self._tcp4(client, sport, server, 80, S, seq=100))
        self._eth(self._tcp4(server, 80, client, sport, S | A, seq=500))
        seq = 101
        for seg in segments:
            self._eth(self._tcp4(client, sport, server, 80, A | P, seg, seq=seq))
            seq += len(seg)
        self._eth(self._tcp4(server, 80, client, sport, A | P, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 501))

    def sidejack(self) -> None:
        self.expected["sidejack"], self.missed["sidejack"] = set(), set()
        for i, name in enumerate(SIDEJACKS):
            s = b"%032x%d" % (self.rng.getrandbits(128), i)
            self._http(f"10.1.0.{10 + i}", 40000 + i, [_req(b"lang=en; PHPSESSID=" + s)])  # the victim
            self._http(f"10.9.0.{10 + i}", 50000 + i, _sidejack(name, s))  # the attacker
            (self.missed if name in UNSEEN else self.expected)["sidejack"].add("PHPSESSID=" + s.decode())

    def build(self) -> Evasions:
        self.portscan()
        self.dnstunnel()
        self.sidejack()
        return self

    def write(self, path: Path) -> Path:
        with path.open("wb") as fh:
            w = dpkt.pcap.Writer(fh, snaplen=65535)
            for ts, frame in self.frames:
                w.writepkt(frame, ts=ts)
        return path
