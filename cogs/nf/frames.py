"""Frames to packets: the L2-L4 decoder every NF input shares (capture files and live
interfaces), so both see the same packets.

Plain byte offsets, no dependency: a live middlebox decodes every frame the kernel's
pre-filter lets through, and a full decoding library costs several times more per
frame. Lenient where a receiver is (a frame cut short by the capture keeps what it
has; a zero IP length, as TCP segmentation offload leaves it, means "the rest"),
strict where the bytes cannot be read; :func:`decode` never raises: what it cannot
use it names (the reason the caller counts).
"""

from __future__ import annotations

from socket import AF_INET6, inet_ntoa, inet_ntop
from typing import NamedTuple

TCP, UDP = 6, 17
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# link types (pcap's DLT numbers)
EN10MB, LINUX_SLL, NULL, LOOP = 1, 113, 0, 108
RAW_IP = frozenset({12, 14, 101, 228, 229})  # BSD, OpenBSD and Linux numbers, IPv4-only, IPv6-only

TRUNCATED = "truncated or malformed frame"
NOT_IP = "not IP"
TRUNCATED_L4 = "truncated transport header"
FRAGMENT = "IP fragment (not the first)"

_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
_IP6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes


class Packet(NamedTuple):
    """One IP packet: what the flow splitter and the NFs look at (picklable, compact)."""

    ts: float
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    flags: int  # TCP flags, 0 otherwise
    payload: bytes


def decode(frame: bytes, ts: float, link: int = EN10MB) -> Packet | str:
    """The IP packet in ``frame`` (of link type ``link``), or why there is none."""
    if link == EN10MB:
        if len(frame) < 14:
            return TRUNCATED
        etype, off = frame[12] << 8 | frame[13], 14
        for _ in range(2):  # 802.1Q, QinQ
            if etype not in _VLAN:
                break
            if len(frame) < off + 4:
                return TRUNCATED
            etype, off = frame[off + 2] << 8 | frame[off + 3], off + 4
    elif link == LINUX_SLL:
        if len(frame) < 16:
            return TRUNCATED
        etype, off = frame[14] << 8 | frame[15], 16
    elif link in (NULL, LOOP):
        if len(frame) < 4:
            return TRUNCATED
        fam = int.from_bytes(frame[:4], "big" if link == LOOP else "little")
        if fam > 0xFFFF:  # a NULL capture from a host of the other byte order
            fam = int.from_bytes(frame[:4], "big")
        etype, off = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0, 4
    elif link in RAW_IP:
        if not frame:
            return TRUNCATED
        etype, off = 0x86DD if frame[0] >> 4 == 6 else 0x0800, 0
    else:
        return f"unknown link type {link}"
    if etype == 0x0800:
        return _ip4(frame, off, ts)
    if etype == 0x86DD:
        return _ip6(frame, off, ts)
    return NOT_IP


def l3_offset(frame: bytes) -> int:
    """Where the network header of an Ethernet frame starts (after any VLAN tags)."""
    off = 14
    for _ in range(2):
        if len(frame) < off or (frame[off - 2] << 8 | frame[off - 1]) not in _VLAN:
            break
        off += 4
    return off


def _ip4(b: bytes, off: int, ts: float) -> Packet | str:
    if len(b) < off + 20 or b[off] >> 4 != 4:
        return TRUNCATED
    ihl = (b[off] & 0x0F) * 4
    total = b[off + 2] << 8 | b[off + 3]
    if ihl < 20 or (total and total < ihl):
        return TRUNCATED
    src, dst, proto = inet_ntoa(b[off + 12 : off + 16]), inet_ntoa(b[off + 16 : off + 20]), b[off + 9]
    if (b[off + 6] & 0x1F) << 8 | b[off + 7]:
        return FRAGMENT  # no transport header here: only the first fragment has one
    end = min(off + total, len(b)) if total else len(b)
    return _l4(b, off + ihl, end, proto, src, dst, ts)


def _ip6(b: bytes, off: int, ts: float) -> Packet | str:
    if len(b) < off + 40 or b[off] >> 4 != 6:
        return TRUNCATED
    plen, nxt = b[off + 4] << 8 | b[off + 5], b[off + 6]
    src, dst = inet_ntop(AF_INET6, b[off + 8 : off + 24]), inet_ntop(AF_INET6, b[off + 24 : off + 40])
    end = min(off + 40 + plen, len(b)) if plen else len(b)  # 0: a jumbogram or offload: the rest
    off += 40
    for _ in range(8):  # extension headers, a bounded chain
        if nxt in _IP6_EXT or nxt == 51:
            if len(b) < off + 2:
                return TRUNCATED_L4
            nxt, off = b[off], off + ((b[off + 1] + 2) * 4 if nxt == 51 else (b[off + 1] + 1) * 8)
        elif nxt == 44:  # fragment header
            if len(b) < off + 8:
                return TRUNCATED_L4
            if (b[off + 2] << 8 | b[off + 3]) >> 3:
                return FRAGMENT
            nxt, off = b[off], off + 8
        else:
            break
    return _l4(b, off, end, nxt, src, dst, ts)


def _l4(b: bytes, at: int, end: int, proto: int, src: str, dst: str, ts: float) -> Packet | str:
    """The transport header at ``b[at:end]``; the payload is the one copy made."""
    if proto == TCP:
        if end - at < 20:
            return TRUNCATED_L4
        doff = (b[at + 12] >> 4) * 4
        if doff < 20 or doff > end - at:
            return TRUNCATED_L4
        flags = (b[at + 12] & 1) << 8 | b[at + 13]  # NS, then CWR ... FIN
        return Packet(ts, src, dst, TCP, b[at] << 8 | b[at + 1], b[at + 2] << 8 | b[at + 3], flags, b[at + doff : end])
    if proto == UDP:
        if end - at < 8:
            return TRUNCATED_L4
        return Packet(ts, src, dst, UDP, b[at] << 8 | b[at + 1], b[at + 2] << 8 | b[at + 3], 0, b[at + 8 : end])
    return Packet(ts, src, dst, proto, 0, 0, 0, b"")
