"""Packet input: pcap and pcapng files read with dpkt, decoded to the transport layer
by :mod:`cogs.nf.frames` (the decoder live capture uses too).

What cannot be parsed (a truncated frame, a link type we do not know, a non-IP
frame) is skipped and counted by reason; a broken capture never raises past
``read_trace``. IP fragments are reassembled (:mod:`cogs.nf.defrag`), as the
receiving host would: the datagram is one packet, at the time its last piece came.
Application payloads (DNS, HTTP) are parsed by the NFs that need them
(:mod:`cogs.nf.payloads`), and their failures are counted there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error  # dpkt surfaces some short reads as struct.error
from typing import Any

import dpkt

from cogs.errors import CogsError
from cogs.nf.defrag import Defrag
from cogs.nf.frames import ACK, FIN, RST, SYN, TCP, UDP, Packet, decode

__all__ = ["ACK", "FIN", "RST", "SYN", "TCP", "UDP", "Packet", "TraceError", "TraceStats", "read_ipv4", "read_trace"]


@dataclass
class TraceStats:
    frames: int = 0
    packets: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    #: IP datagrams made whole from their fragments (each counts as one packet)
    reassembled: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "packets": self.packets, "skipped": dict(self.skipped),
                "reassembled": self.reassembled}  # fmt: skip


class TraceError(CogsError):
    """The file is not a capture at all (not a partly broken one: those are read)."""


def _reader(fh: Any, path: Path) -> Any:
    try:
        return dpkt.pcap.Reader(fh)
    except (ValueError, dpkt.dpkt.NeedData):
        fh.seek(0)
    try:
        return dpkt.pcapng.Reader(fh)
    except (ValueError, dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError) as e:
        raise TraceError(f"{path}: not a pcap or pcapng capture ({e})") from e


def _ip_layer(linktype: int, buf: bytes) -> Any:
    if linktype == dpkt.pcap.DLT_EN10MB:
        return dpkt.ethernet.Ethernet(buf).data
    if linktype == dpkt.pcap.DLT_LINUX_SLL:
        return dpkt.sll.SLL(buf).data
    if linktype in (dpkt.pcap.DLT_RAW, 101, 228, 229):  # raw IP (BSD and Linux numbers), IPv4, IPv6
        return dpkt.ip6.IP6(buf) if buf[:1] and buf[0] >> 4 == 6 else dpkt.ip.IP(buf)
    if linktype in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        return dpkt.loopback.Loopback(buf).data
    raise ValueError(f"link type {linktype}")


def parse_frame(linktype: int, ts: float, buf: bytes, stats: TraceStats, defrag: Defrag | None = None) -> Packet | None:
    """One captured frame as a Packet, or None (and the reason counted); with
    ``defrag``, a fragment is held there and the datagram it completes returned."""
    p = decode(buf, ts, linktype, defrag)
    if isinstance(p, str):
        stats.skipped[p] += 1
        return None
    return p


def read_frames(path: str | Path, stats: TraceStats) -> Iterator[tuple[int, float, bytes]]:
    """(link type, time, frame) of every readable frame of a pcap/pcapng file."""
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as e:
        raise TraceError(f"{p}: {e.strerror}") from e
    with fh:
        reader = _reader(fh, p)
        linktype = reader.datalink()
        it = iter(reader)
        while True:
            try:
                ts, buf = next(it)
            except StopIteration:
                return
            except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError, struct_error):
                stats.skipped["truncated capture"] += 1  # the rest of the file is unreadable
                return
            stats.frames += 1
            yield linktype, float(ts), buf


def read_trace(path: str | Path, stats: TraceStats | None = None) -> Iterator[Packet]:
    """The IP packets of a pcap/pcapng file, in file order (a fragmented datagram
    where its last fragment is)."""
    stats = stats if stats is not None else TraceStats()
    defrag = Defrag(stats.skipped)  # drops counted by reason with the frames skipped
    for linktype, ts, buf in read_frames(path, stats):
        pkt = parse_frame(linktype, ts, buf, stats, defrag)
        if pkt is not None:
            stats.packets += 1
            yield pkt
    defrag.finish()
    stats.reassembled = defrag.reassembled


def read_ipv4(path: str | Path, stats: TraceStats | None = None) -> Iterator[tuple[float, bytes]]:
    """(time, raw IPv4 packet) of a pcap/pcapng file, for NFs that rewrite packets;
    other frames are counted in ``stats.skipped``."""
    stats = stats if stats is not None else TraceStats()
    for linktype, ts, buf in read_frames(path, stats):
        try:
            ip = _ip_layer(linktype, buf)
        except ValueError as e:
            stats.skipped[f"unknown {e}"] += 1
            continue
        except (dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, IndexError):
            stats.skipped["truncated or malformed frame"] += 1
            continue
        if not isinstance(ip, dpkt.ip.IP):
            stats.skipped["not IPv4" if isinstance(ip, dpkt.ip6.IP6) else "not IP"] += 1
            continue
        stats.packets += 1
        yield ts, bytes(ip)
