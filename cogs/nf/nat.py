"""The NAT cluster: N middleboxes translating one network's traffic with one
global table of port mappings (cogs.nf.nat_table, a portmap state).

A replay has two passes, as a capture taken inside the network calls for:

1. outbound packets (source inside, destination outside) are split by flow over
   the middleboxes and translated: source (ip, port) -> the flow's external
   (ip, port), allocated on its first packet by whichever box sees it;
2. the captured replies are made to arrive as they would from the outside — to the
   external (ip, port) pass 1 gave their flow — split by the flow hash *of that
   outside 5-tuple* (so usually another box than the one that allocated it), and
   translated back: destination -> the internal (ip, port). A reply whose flow
   never went out is unsolicited and dropped, as a NAT does.

Every translated packet has its addresses, ports and IP/TCP/UDP checksums
rewritten (dpkt), and the output pcap holds both directions in time order.
Fragments, non-TCP/UDP and traffic that stays inside are counted, not translated.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import dpkt

from cogs import runtime
from cogs.coordinator.client import Coordinator
from cogs.errors import CogsError, ConfigError
from cogs.nf.feed import patient_room
from cogs.nf.nat_table import NatTable
from cogs.nf.packets import TCP, UDP, TraceStats, read_ipv4
from cogs.nf.splitter import middlebox_of
from cogs.proxy import StateProxy

PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
LINKTYPE_RAW = 101  # raw IP in pcap files
CHUNK = 500
MODES = ("async", "sync")

Item = tuple[int, float, bytes]  # (sequence number in the trace, time, IPv4 packet)


@dataclass
class NatBoxResult:
    box: int
    packets: int
    seconds: float
    cpu_seconds: float
    ops_sent: int
    cache_hits: int
    counters: dict[str, int]
    out: list[tuple[int, bytes]]  # (sequence number, translated packet)

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0


@dataclass
class NatRunResult:
    middleboxes: int
    mode: str
    state: str
    trace: TraceStats
    outbound: list[NatBoxResult]
    inbound: list[NatBoxResult]
    counters: Counter[str] = field(default_factory=Counter)
    #: internal flow (proto, ip, port) -> external (ip, port), as the outbound pass used them
    mappings: dict[tuple[int, str, int], tuple[str, int]] = field(default_factory=dict)
    out_path: Path | None = None

    @property
    def boxes(self) -> list[NatBoxResult]:
        return self.outbound + self.inbound

    @property
    def packets_per_s(self) -> float:
        """Translated packets over the time the boxes worked in parallel, per pass."""
        busy = sum(max((b.seconds for b in boxes), default=0.0) for boxes in (self.outbound, self.inbound))
        return sum(b.packets for b in self.boxes) / busy if busy else 0.0


# -- packets ---------------------------------------------------------------------------


def ports(ip: dpkt.ip.IP) -> tuple[int, int] | None:
    """(source port, destination port) of a TCP/UDP packet that can be translated."""
    if ip.mf or ip.offset:
        return None  # a fragment: only the first has ports, and we do not reassemble
    l4 = ip.data
    if ip.p in (TCP, UDP) and isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
        return l4.sport, l4.dport
    return None


def rewrite(data: bytes, *, src: tuple[str, int] | None = None, dst: tuple[str, int] | None = None) -> bytes:
    """The packet with its source or destination (ip, port) replaced and its IP and
    TCP/UDP checksums recomputed."""
    ip = dpkt.ip.IP(data)
    l4 = ip.data
    if src is not None:
        ip.src, l4.sport = socket.inet_aton(src[0]), src[1]
    if dst is not None:
        ip.dst, l4.dport = socket.inet_aton(dst[0]), dst[1]
    ip.sum = 0
    l4.sum = 0  # dpkt recomputes both when serializing
    return bytes(ip)


def _addr(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


class Classifier:
    """Which side of the NAT an address is on."""

    def __init__(self, internal: tuple[str, ...] = PRIVATE) -> None:
        try:
            self.nets = [ipaddress.ip_network(n) for n in internal]
        except ValueError as e:
            raise ConfigError(f"bad internal network: {e}") from e

    def inside(self, addr: str) -> bool:
        a = ipaddress.ip_address(addr)
        return any(a in n for n in self.nets)


# -- one middlebox ---------------------------------------------------------------------


async def nat_box(
    url: str, state: str, mode: str, direction: str, packets: list[Item], box: int, q: Any
) -> NatBoxResult:
    """Translate ``packets`` (all ``direction``: "out" or "in") on one middlebox."""
    async with StateProxy(url) as proxy:
        table = NatTable(proxy, state)
        out: list[tuple[int, bytes]] = []
        counters: Counter[str] = Counter()
        pending = 0
        idle = anyio.Event()

        def emit(mapping: tuple[str, int] | None, item: tuple[int, bytes]) -> None:
            nonlocal pending
            seq, data = item
            if mapping is None:
                counters["dropped: no free port" if direction == "out" else "dropped: no mapping"] += 1
            elif direction == "out":
                out.append((seq, rewrite(data, src=mapping)))
            else:
                out.append((seq, rewrite(data, dst=mapping)))
            pending -= 1
            if pending == 0:
                idle.set()

        t0, c0 = time.perf_counter(), time.process_time()
        for i, (seq, _ts, data) in enumerate(packets):
            ip = dpkt.ip.IP(data)
            sport, dport = ports(ip) or (0, 0)
            pending += 1
            if mode == "sync":
                if direction == "out":
                    emit(await table.outbound(ip.p, _addr(ip.src), sport), (seq, data))
                else:
                    emit(await table.inbound(ip.p, _addr(ip.dst), dport), (seq, data))
            elif direction == "out":
                table.asyn_outbound(ip.p, _addr(ip.src), sport, emit, (seq, data))
            else:
                table.asyn_inbound(ip.p, _addr(ip.dst), dport, emit, (seq, data))
            if i % CHUNK == CHUNK - 1:
                await patient_room(proxy, 2 * CHUNK, counters)
                await anyio.lowlevel.checkpoint()
                if q is not None:
                    q.put(("progress", box, i + 1))
        if pending:
            await idle.wait()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        s = proxy.statistics()
        refused = s.errors - table.exhausted  # an exhausted block is a drop, not a failure
        if refused:
            raise CogsError(f"the coordinator refused {refused} lookup(s); see the log")
        counters["translated"] = len(out)
        return NatBoxResult(box, len(packets), seconds, cpu, s.ops_sent, s.cache_hits, dict(counters), out)


# -- the driver ------------------------------------------------------------------------


def _split(items: list[Item], n: int) -> list[list[Item]]:
    shares: list[list[Item]] = [[] for _ in range(n)]
    for it in items:
        ip = dpkt.ip.IP(it[2])
        sp, dp = ports(ip) or (0, 0)
        shares[middlebox_of(n, ip.p, _addr(ip.src), sp, _addr(ip.dst), dp)].append(it)
    return shares


def run_nat(
    trace: str | Path,
    middleboxes: int,
    url: str,
    *,
    out: str | Path | None = None,
    state: str = "nat",
    mode: str = "async",
    internal: tuple[str, ...] = PRIVATE,
    progress: Any = None,
) -> NatRunResult:
    """Replay ``trace`` through a NAT of ``middleboxes`` processes; write the
    translated packets to ``out`` (pcap, raw IP)."""
    from cogs.nf.runner import run_boxes

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} (have: {', '.join(MODES)})")
    if middleboxes < 1:
        raise ConfigError("need at least one middlebox")
    side = Classifier(internal)
    runtime.run(_check_state, url, state)  # a bad --state fails here, not in N processes
    stats = TraceStats()
    counters: Counter[str] = Counter()
    outbound: list[Item] = []
    replies: list[Item] = []
    for seq, (ts, data) in enumerate(read_ipv4(trace, stats)):
        ip = dpkt.ip.IP(data)
        src_in, dst_in = side.inside(_addr(ip.src)), side.inside(_addr(ip.dst))
        if src_in == dst_in:
            counters["not crossing the NAT"] += 1
        elif ports(ip) is None:
            counters["not translated: fragment or not TCP/UDP"] += 1
        else:
            (outbound if src_in else replies).append((seq, ts, data))
    total = len(outbound) + len(replies)
    times = {seq: ts for seq, ts, _ in outbound + replies}

    def boxes(direction: str, items: list[Item], done: int) -> list[NatBoxResult]:
        shares = _split(items, middleboxes)
        args = [(url, state, mode, direction, shares[i]) for i in range(middleboxes)]
        report = None if progress is None else (lambda n, _t: progress(done + n, total))
        return run_boxes(nat_box, args, total, report)

    first = boxes("out", outbound, 0)
    mappings: dict[tuple[int, str, int], tuple[str, int]] = {}
    original = {seq: data for seq, _, data in outbound}
    for b in first:
        for seq, data in b.out:
            before, after = dpkt.ip.IP(original[seq]), dpkt.ip.IP(data)
            mappings[(before.p, _addr(before.src), before.data.sport)] = (_addr(after.src), after.data.sport)
    arriving: list[Item] = []
    expect: dict[int, tuple[str, int]] = {}
    for seq, ts, data in replies:  # as they arrive from outside: to the flow's external address
        ip = dpkt.ip.IP(data)
        ext = mappings.get((ip.p, _addr(ip.dst), ip.data.dport))
        if ext is None:
            counters["dropped: unsolicited (no outbound flow)"] += 1
            continue
        expect[seq] = (_addr(ip.dst), ip.data.dport)
        arriving.append((seq, ts, rewrite(data, dst=ext)))
    second = boxes("in", arriving, len(outbound))
    for b in second:
        for seq, data in b.out:
            ip = dpkt.ip.IP(data)
            ok = (_addr(ip.dst), ip.data.dport) == expect[seq]
            counters["reverse translated back" if ok else "reverse translated WRONG"] += 1
    for b in first + second:
        counters.update({k: v for k, v in b.counters.items() if k != "translated"})
    counters["translated outbound"] = sum(len(b.out) for b in first)
    counters["translated inbound"] = sum(len(b.out) for b in second)
    owners = Counter(mappings.values())
    counters["external ports shared by two flows"] = sum(n - 1 for n in owners.values() if n > 1)
    result = NatRunResult(middleboxes, mode, state, stats, first, second, counters, mappings)
    if out is not None:
        result.out_path = Path(out)
        write_pcap(result.out_path, sorted((times[seq], seq, d) for b in first + second for seq, d in b.out))
    return result


async def _check_state(url: str, state: str) -> None:
    async with Coordinator(url=url) as co:
        catalog, _ = await co.stored_catalog()
    if state not in catalog:
        portmaps = [st.name for st in catalog if st.type == "portmap"]
        raise ConfigError(f"no state {state!r} in the catalog (portmap states: {', '.join(portmaps) or 'none'})")
    if catalog.get(state).type != "portmap":
        raise ConfigError(f"state {state!r} is of type {catalog.get(state).type}, not portmap")


def write_pcap(path: Path, packets: list[tuple[float, int, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=LINKTYPE_RAW)
        for ts, _seq, data in packets:
            w.writepkt(data, ts=ts)
