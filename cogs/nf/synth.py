"""Synthetic traces: real pcap files (written with dpkt) of benign mixed traffic plus
port scans, DNS tunnels and session-cookie reuse, with a ground-truth file.

Every attack is made of many flows, so the flow splitter spreads it over the
middleboxes; its size is chosen above the default thresholds overall and well below
them per box once split.
"""

from __future__ import annotations

import base64
import json
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt

from cogs.nf.packets import ACK, FIN, RST, SYN

PSH = 0x08
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
RESOLVER = "10.0.0.53"
BENIGN_DOMAINS = ("example.com", "wikipedia.org", "cdn.example.net", "mail.example.org", "news.example.co.uk")


@dataclass
class Synth:
    seed: int = 7
    benign_flows: int = 300
    scans: int = 1
    scan_ports: int = 40
    tunnels: int = 1
    tunnel_queries: int = 150
    sidejacks: int = 1
    #: flows from inside hosts (10.1.0.0/16) to outside servers (203.0.113.0/24): NAT traffic
    nat_flows: int = 0
    nat_hosts: int = 50
    duration: float = 60.0
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    truth: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- frame builders ----------------------------------------------------------------

    def _ip(self, src: str, dst: str, l4: Any, proto: int) -> bytes:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64, data=l4)
        ip.len = len(ip)
        eth = dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
        return bytes(eth)

    def tcp(self, t: float, src: str, sport: int, dst: str, dport: int, flags: int, data: bytes = b"") -> None:
        seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=self.rng.randrange(2**32), win=65535, data=data)
        self.frames.append((t, self._ip(src, dst, seg, dpkt.ip.IP_PROTO_TCP)))

    def udp(self, t: float, src: str, sport: int, dst: str, dport: int, data: bytes) -> None:
        dg = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        dg.ulen = len(dg)
        self.frames.append((t, self._ip(src, dst, dg, dpkt.ip.IP_PROTO_UDP)))

    def _t(self) -> float:
        return self.rng.uniform(0, self.duration)

    def _port(self) -> int:
        return self.rng.randrange(1024, 65535)

    # -- traffic -----------------------------------------------------------------------

    def http_flow(self, t: float, client: str, server: str, cookie: str | None = None) -> None:
        sp = self._port()
        self.tcp(t, client, sp, server, 80, SYN)
        self.tcp(t + 0.001, server, 80, client, sp, SYN | ACK)
        self.tcp(t + 0.002, client, sp, server, 80, ACK)
        headers = f"Host: {server}\r\nUser-Agent: synth\r\n"
        if cookie:
            headers += f"Cookie: {cookie}\r\n"
        self.tcp(
            t + 0.003,
            client,
            sp,
            server,
            80,
            PSH | ACK,
            f"GET /{self.rng.randrange(1000)} HTTP/1.1\r\n{headers}\r\n".encode(),
        )
        body = b"<html>ok</html>"
        self.tcp(
            t + 0.010,
            server,
            80,
            client,
            sp,
            PSH | ACK,
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        self.tcp(t + 0.011, client, sp, server, 80, FIN | ACK)
        self.tcp(t + 0.012, server, 80, client, sp, FIN | ACK)

    def dns_query(self, t: float, client: str, name: str, qtype: int, resolver: str = RESOLVER) -> None:
        q = dpkt.dns.DNS(id=self.rng.randrange(65536), qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
        sp = self._port()
        self.udp(t, client, sp, resolver, 53, bytes(q))
        q.qr, q.op, q.rcode = dpkt.dns.DNS_R, dpkt.dns.DNS_RA, dpkt.dns.DNS_RCODE_NOERR
        self.udp(t + 0.002, resolver, 53, client, sp, bytes(q))

    def benign(self) -> None:
        clients = [f"192.168.1.{i}" for i in range(10, 60)]
        servers = [f"10.0.0.{i}" for i in range(2, 40)]
        for i in range(self.benign_flows):
            c, t = self.rng.choice(clients), self._t()
            kind = i % 10
            if kind < 6:
                own = f"PHPSESSID={base64.b32encode(c.encode()).decode().strip('=')}" if kind == 0 else "theme=dark"
                self.http_flow(t, c, self.rng.choice(servers), own)
            elif kind < 9:
                name = f"{self.rng.choice(['www', 'img', 'api'])}.{self.rng.choice(BENIGN_DOMAINS)}"
                self.dns_query(t, c, name, self.rng.choice([dpkt.dns.DNS_A, dpkt.dns.DNS_AAAA]))
            else:  # a client retrying its one misconfigured service: failed attempts, not a scan
                octet = int(c.rsplit(".", 1)[1])
                s, sp, port = servers[octet % len(servers)], self._port(), 8443 + octet % 3
                self.tcp(t, c, sp, s, port, SYN)
                self.tcp(t + 0.001, s, port, c, sp, RST | ACK)

    def scan(self, k: int) -> None:
        scanner, target = f"203.0.113.{10 + k}", f"10.0.1.{10 + k}"
        t = self._t() * 0.5
        ports = self.rng.sample(range(1, 1024), self.scan_ports)
        for j, port in enumerate(ports):
            sp = self._port()
            ts = t + j * 0.01
            self.tcp(ts, scanner, sp, target, port, SYN)
            if j % 10 == 0:  # closed: RST; the rest stays unanswered
                self.tcp(ts + 0.001, target, port, scanner, sp, RST | ACK)
        self.truth.append({"nf": "portscan", "key": scanner})

    def tunnel(self, k: int) -> None:
        client, domain = f"192.168.2.{10 + k}", f"tunnel{k}.example"
        t = self._t() * 0.5
        for j in range(self.tunnel_queries):
            data = bytes(self.rng.randrange(256) for _ in range(30))
            label = base64.b32encode(data).decode().strip("=").lower()
            self.dns_query(t + j * 0.05, client, f"{label}.{domain}", dpkt.dns.DNS_NULL if j % 2 else dpkt.dns.DNS_TXT)
        self.truth += [{"nf": "dnstunnel", "key": domain}, {"nf": "dnstunnel", "key": client}]

    def sidejack(self, k: int) -> None:
        token = base64.b32encode(bytes(self.rng.randrange(256) for _ in range(15))).decode().lower()
        victim, attacker, server = f"192.168.3.{10 + k}", f"198.51.100.{10 + k}", "10.0.0.80"
        t = self._t() * 0.5
        self.http_flow(t, victim, server, f"PHPSESSID={token}")  # one connection each:
        self.http_flow(t + 5, attacker, server, f"PHPSESSID={token}")  # the split decides who sees what
        self.truth.append({"nf": "sidejack", "key": f"PHPSESSID={token}"})

    def nat(self) -> None:
        """Inside hosts browsing outside servers (HTTP) and asking an outside resolver."""
        hosts = [f"10.1.{i // 250}.{1 + i % 250}" for i in range(self.nat_hosts)]
        servers = [f"203.0.113.{i}" for i in range(2, 60)]
        for i in range(self.nat_flows):
            host, t = self.rng.choice(hosts), self._t()
            if i % 5:
                self.http_flow(t, host, self.rng.choice(servers))
            else:
                name = f"www.{self.rng.choice(BENIGN_DOMAINS)}"
                self.dns_query(t, host, name, dpkt.dns.DNS_A, resolver="203.0.113.53")

    def build(self) -> Synth:
        self.benign()
        self.nat()
        for k in range(self.scans):
            self.scan(k)
        for k in range(self.tunnels):
            self.tunnel(k)
        for k in range(self.sidejacks):
            self.sidejack(k)
        self.frames.sort(key=lambda f: f[0])
        return self

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write the pcap and ``<out>.truth.json`` (expected alerts: nf and key)."""
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        base = 1_700_000_000.0
        with path.open("wb") as fh:
            w = dpkt.pcap.Writer(fh)
            for t, frame in self.frames:
                w.writepkt(frame, ts=base + t)
        truth = path.with_name(path.name + ".truth.json")
        truth.write_text(json.dumps({"alerts": self.truth, "frames": len(self.frames), "seed": self.seed}, indent=2))
        return path, truth
