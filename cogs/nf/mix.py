"""The paper's packet mix: bulk HTTP and DNS traffic averaging 591 bytes per frame,
with the three attacks in it at a low rate, for live-capture benchmarks.

Frames are packed with ``struct`` from templates (a replay needs millions; dpkt
builds one in ~20 us). HTTP flows: a handshake, a request with a session cookie, a
response of 1 to 12 full segments with an ACK every second one, a close; DNS: a
query and its answer. Response lengths are drawn so the mean frame is 591 bytes
(the mix reports its own mean). Mixed in: a port scan, a DNS tunnel and a
sidejacked session every ``attack_every`` flows, so every detector has work and its
states see updates. Checksums are left zero: nothing here goes through an IP stack.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cogs.nf.frames import ACK, FIN, SYN

PSH = 0x08
TARGET_MEAN = 591.0
_ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_MSS = 1460


def _ip(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    return _ETH + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst) + l4


def tcp(src: bytes, sport: int, dst: bytes, dport: int, flags: int, seq: int, data: bytes = b"") -> bytes:
    return _ip(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + data)


def udp(src: bytes, sport: int, dst: bytes, dport: int, data: bytes) -> bytes:
    return _ip(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def dns_query(qid: int, name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(lb)]) + lb.encode() for lb in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


@dataclass
class Mix:
    seed: int = 1
    #: a scan, a tunnel and a sidejack every this many flows (0: none)
    attack_every: int = 2000
    frames: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.body = bytes(self.rng.randrange(256) for _ in range(_MSS))
        self.flows = 0

    @staticmethod
    def _addr(net: int, i: int) -> bytes:
        return socket.inet_aton(f"10.{net}.{i >> 8 & 255}.{i & 255}")

    def http(self, client: bytes, server: bytes, cookie: str, segments: int) -> None:
        sp, s = self.rng.randrange(1024, 65535), self.rng.randrange(1 << 32)
        f = self.frames
        f.append(tcp(client, sp, server, 80, SYN, s))
        f.append(tcp(server, 80, client, sp, SYN | ACK, s))
        f.append(tcp(client, sp, server, 80, ACK, s + 1))
        req = f"GET /item/{self.rng.randrange(10**6)} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: mix\r\n"
        f.append(tcp(client, sp, server, 80, PSH | ACK, s + 1, f"{req}Cookie: PHPSESSID={cookie}\r\n\r\n".encode()))
        for k in range(segments):
            f.append(tcp(server, 80, client, sp, ACK, s + k * _MSS, self.body))
            if k % 2:
                f.append(tcp(client, sp, server, 80, ACK, s + 2))
        f.append(tcp(client, sp, server, 80, FIN | ACK, s + 2))
        f.append(tcp(server, 80, client, sp, FIN | ACK, s + 3))
        f.append(tcp(client, sp, server, 80, ACK, s + 3))

    def dns(self, client: bytes, name: str, qtype: int = 1) -> None:
        sp, qid = self.rng.randrange(1024, 65535), self.rng.randrange(65536)
        q = dns_query(qid, name, qtype)
        resolver = socket.inet_aton("10.0.0.53")
        self.frames.append(udp(client, sp, resolver, 53, q))
        answer = bytearray(q)
        answer[2:4] = b"\x81\x80"
        answer[6:8] = b"\x00\x01"
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x0a\x00\x00\x01"  # A 10.0.0.1, TTL 1 h
        self.frames.append(udp(resolver, 53, client, sp, bytes(answer) + record))

    def attacks(self) -> None:
        n = self.flows // max(self.attack_every, 1)
        scanner, target = socket.inet_aton(f"10.200.{n & 255}.1"), socket.inet_aton(f"10.201.{n & 255}.1")
        for port in self.rng.sample(range(1, 1024), 20):  # unanswered SYNs: failed attempts
            self.frames.append(tcp(scanner, self.rng.randrange(1024, 65535), target, port, SYN, 0))
        tunnel = socket.inet_aton(f"10.202.{n & 255}.1")
        for _ in range(120):
            label = "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(45))
            self.dns(tunnel, f"{label}.t{n}.example", 16)
        cookie = f"{self.rng.getrandbits(96):024x}"
        self.http(self._addr(1, self.rng.randrange(1, 60000)), self._addr(0, 80), cookie, 1)
        self.http(socket.inet_aton(f"10.203.{n & 255}.1"), self._addr(0, 80), cookie, 1)

    def build(self, packets: int) -> Mix:
        """At least ``packets`` frames of the mix."""
        rng = self.rng
        while len(self.frames) < packets:
            self.flows += 1
            client = self._addr(1, rng.randrange(1, 60000))
            if rng.random() < 0.25:
                self.dns(client, f"{rng.choice(('www', 'img', 'api', 'cdn'))}{rng.randrange(100)}.example.com")
            else:  # 1 to 12 full segments, few long ones: a web page's objects
                self.http(client, self._addr(0, rng.randrange(1, 250)), f"{rng.getrandbits(64):016x}",
                          min(12, 1 + int(rng.expovariate(1 / 6.6))))  # fmt: skip
            if self.attack_every and self.flows % self.attack_every == 0:
                self.attacks()
        return self

    @property
    def mean(self) -> float:
        return sum(map(len, self.frames)) / len(self.frames) if self.frames else 0.0

    def write(self, path: str | Path, pps: float = 100_000.0) -> Path:
        """A pcap of the frames, stamped ``1/pps`` apart."""
        p = Path(path)
        with p.open("wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for i, frame in enumerate(self.frames):
                t = i / pps
                sec = int(t)
                fh.write(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(frame), len(frame)) + frame)
        return p
