"""A hostile capture: real attacks hidden among packets made to blind the detectors.

Built on a :class:`~cogs.nf.synth.Synth` trace (benign traffic, a scan, a tunnel, a
sidejack), plus:

* the attacks an attacker would send to escape or break a detector: a session cookie
  of 700 bytes sent *first* and then reused from a second client (a long-cookie
  sidejack), a cookie with bytes that are not UTF-8 (one sequence decodes to a lone
  surrogate with ``surrogatepass``) reused likewise, a DNS tunnel in 8-bit labels
  (as iodine's raw mode: a full-message parser rejected those) under a domain whose
  own label is such bytes;
* junk: random frames, frames cut inside each header, IP and TCP lengths that lie,
  DNS messages with 65,535 questions, pointer loops, forward pointers, names over
  255 bytes, reserved label types, HTTP requests with 100 session cookies, no line
  end, empty cookies, an IPv6 request with a long cookie, and frames far over the MTU
  (left out with ``max_frame``, for a replay on an interface).

``expected`` lists the alerts each detector must still raise, with keys worked out
here from the identifier rule (printable ASCII kept, the rest ``\\xNN``; over 256
characters a 64-character prefix, the length and a BLAKE2b-128 digest), not by the
code under test.
"""

from __future__ import annotations

import hashlib
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from cogs.nf.packets import ACK, SYN
from cogs.nf.synth import MAC_A, MAC_B, PSH, Synth

SURROGATE = b"\xed\xa0\x80"  # UTF-8 form of U+D800: invalid UTF-8, a lone surrogate under surrogatepass
LONG_COOKIE = b"PHPSESSID=" + b"".join(b"%08x" % i for i in range(87))[:690]  # 700 bytes
ODD_COOKIE = b"sid=ab" + SURROGATE + b"cd}%|\xff\x00=qZ9"


def expected_ident(raw: bytes) -> str:
    """The identifier rule, written independently of cogs.nf.ident."""
    text = "".join(chr(b) if 0x21 <= b < 0x7F and chr(b) not in "\\%}|" else f"\\x{b:02x}" for b in raw)
    if len(text) <= 256:
        return text
    return f"{text[:64]}~{len(text)}~{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"


@dataclass
class Hostile:
    seed: int = 5
    #: frames longer than this are left out (an interface's MTU + 14); None keeps all
    max_frame: int | None = None
    synth: Synth = field(init=False)
    expected: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.synth = Synth(seed=self.seed, benign_flows=200, scans=1, scan_ports=30, tunnels=1, sidejacks=1)

    # -- frames ----------------------------------------------------------------------

    def _add(self, t: float, frame: bytes) -> None:
        self.synth.frames.append((t, frame))

    def _eth_ip(self, src: str, dst: str, proto: int, l4: bytes) -> bytes:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))

    def _tcp(self, src: str, dst: str, dport: int, flags: int, data: bytes, sport: int = 40000) -> bytes:
        seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, win=65535, data=data)
        return self._eth_ip(src, dst, dpkt.ip.IP_PROTO_TCP, bytes(seg))

    def _udp(self, src: str, dst: str, dport: int, data: bytes, sport: int = 40000) -> bytes:
        dg = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        dg.ulen = len(dg)
        return self._eth_ip(src, dst, dpkt.ip.IP_PROTO_UDP, bytes(dg))

    def _request(self, t: float, client: str, cookie: bytes, sport: int) -> None:
        """A whole HTTP connection (handshake, request, reply) presenting ``cookie``."""
        s = "10.0.0.80"
        self._add(t, self._tcp(client, s, 80, SYN, b"", sport))
        self._add(t + 0.001, self._tcp(s, client, sport, SYN | ACK, b"", sport=80))
        req = b"GET /account HTTP/1.1\r\nHost: shop.example\r\nCookie: theme=dark; " + cookie + b"\r\n\r\n"
        self._add(t + 0.002, self._tcp(client, s, 80, PSH | ACK, req, sport))

    @staticmethod
    def _dns_query(labels: list[bytes], qtype: int, qid: int) -> bytes:
        name = b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\x00"
        return (
            qid.to_bytes(2, "big")
            + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
            + name
            + qtype.to_bytes(2, "big")
            + b"\x00\x01"
        )

    # -- the attacks that must still be reported -------------------------------------

    def attacks(self) -> None:
        # the long cookie comes first: one packet that used to end the middlebox
        self._request(-1.0, "192.168.3.50", LONG_COOKIE, 41000)
        self._request(20.0, "198.51.100.50", LONG_COOKIE, 41001)
        self._request(1.0, "192.168.3.51", ODD_COOKIE, 41002)
        self._request(21.0, "198.51.100.51", ODD_COOKIE, 41003)
        self.expected.setdefault("sidejack", set()).update({expected_ident(LONG_COOKIE), expected_ident(ODD_COOKIE)})
        # a tunnel in 8-bit labels, under a domain whose own label is not UTF-8
        domain = [b"t" + SURROGATE, b"example"]
        client = "192.168.2.77"
        for j in range(150):
            label = self.rng.randbytes(30)  # dots and all: a label is length-prefixed
            q = self._dns_query([label, *domain], 16, j)
            self._add(5.0 + j * 0.05, self._udp(client, "10.0.0.53", 53, q, 42000 + j))
        self.expected.setdefault("dnstunnel", set()).update({expected_ident(b"t" + SURROGATE) + ".example", client})

    # -- junk ------------------------------------------------------------------------

    def junk(self) -> None:
        rng = self.rng

        def t() -> float:
            return rng.uniform(0, 60)

        good = self._tcp("192.168.9.9", "10.0.0.80", 80, PSH | ACK, b"GET / HTTP/1.1\r\nCookie: sid=1\r\n\r\n")
        for _ in range(300):  # random bytes of every length up to a jumbo frame
            self._add(t(), rng.randbytes(rng.choice([0, 1, 13, 20, 60, 600, 1514, 9000])))
        for cut in range(1, len(good)):  # cut inside every header
            self._add(t(), good[:cut])
        lies = bytearray(good)
        lies[16:18] = (60000).to_bytes(2, "big")  # IP total length far past the frame
        self._add(t(), bytes(lies))
        lies = bytearray(good)
        lies[14] = 0x4F  # IHL 15: the IP header claims 60 bytes
        self._add(t(), bytes(lies))
        lies = bytearray(good)
        lies[14 + 20 + 12] = 0xF0  # TCP data offset 60 bytes, past the segment
        self._add(t(), bytes(lies))
        hdr = b"\x00\x01\x01\x00"
        dns_junk = [
            hdr + b"\xff\xff\x00\x00\x00\x00\x00\x00" + b"\x03abc" * 3,  # 65,535 questions, truncated
            hdr + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c",  # a pointer to itself
            hdr + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x01a\xc0\x20",  # a pointer forwards
            hdr + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x41abc",  # reserved label type
            hdr + b"\x00\x01\x00\x00\x00\x00\x00\x00" + (b"\x3f" + b"x" * 63) * 5 + b"\x00\x00\x10\x00\x01",  # > 255
            hdr + b"\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x03www\x07example\x03com\x00",  # no qtype
            b"\x00",
        ]
        for i, payload in enumerate(dns_junk):
            self._add(t(), self._udp("192.168.9.10", "10.0.0.53", 53, payload, 43000 + i))
            self._add(t(), self._tcp("192.168.9.10", "10.0.0.53", 53, PSH | ACK, payload[:2], 44000 + i))
        http_junk = [
            b"GET /" + b"A" * 1400,  # no line end at all
            b"GET / HTTP/1.1\r\nCookie: " + b"".join(b"PHPSESSID=x%d; " % i for i in range(100)) + b"\r\n\r\n",  # 100
            b"GET / HTTP/1.1\r\nCookie: ;;;===;=; PHPSESSID=\r\nCookie:\r\n\r\n",  # empty ones
            b"POST /login HTTP/1.1\r\nContent-Length: 999999999\r\nCookie: PHPSESSID=",  # cut in the value
            b"PATCH " + rng.randbytes(1000),
        ]
        for i, payload in enumerate(http_junk):
            self._add(t(), self._tcp("192.168.9.11", "10.0.0.80", 80, PSH | ACK, payload, 45000 + i))
        self._add(t(), self._tcp("192.168.9.11", "10.0.0.80", 80, PSH | ACK, b"GET / HTTP/1.1\r\nCookie: PHPSESSID=" + b"B" * 60000 + b"\r\n\r\n"))  # fmt: skip
        ip6 = dpkt.ip6.IP6(
            src=b"\x20\x01" + b"\x00" * 13 + b"\x05", dst=b"\x20\x01" + b"\x00" * 13 + b"\x06", nxt=6, hlim=64
        )
        ip6.data = dpkt.tcp.TCP(sport=46000, dport=80, flags=PSH | ACK, data=b"GET / HTTP/1.1\r\nCookie: JSESSIONID=" + b"C" * 900 + b"\r\n\r\n")  # fmt: skip
        ip6.plen = len(ip6.data)
        self._add(t(), bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=dpkt.ethernet.ETH_TYPE_IP6, data=ip6)))

    def build(self) -> Hostile:
        self.synth.build()
        for a in self.synth.truth:
            self.expected.setdefault(a["nf"], set()).add(a["key"])
        self.attacks()
        self.junk()
        if self.max_frame is not None:
            self.synth.frames = [f for f in self.synth.frames if len(f[1]) <= self.max_frame]
        self.synth.frames.sort(key=lambda f: f[0])
        return self

    def write(self, out: Path) -> Path:
        pcap, _truth = self.synth.write(out)
        return pcap
