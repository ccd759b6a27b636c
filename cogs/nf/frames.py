"""Frames to packets: the L2-L4 decoder every NF input shares (capture files and live
interfaces), so both see the same packets.

Plain byte offsets, no dependency: a live middlebox decodes every frame the kernel's
pre-filter lets through, and a full decoding library costs several times more per
frame. Lenient where a receiver is (a frame cut short by the capture keeps what it
has; a zero IP length, as TCP segmentation offload leaves it, means "the rest"),
strict where the bytes cannot be read; :func:`decode` never raises: what it cannot
use it names (the reason the caller counts).

Given a :class:`~cogs.nf.defrag.Defrag` table, IP fragments are held and the datagram
is decoded once whole, as the receiver's stack does (capture files; live capture
gets IPv4 whole from the kernel). IPv6 extension headers are followed as Linux does,
up to :data:`MAX_IP6_EXT` of them (Linux took 20 in a row; a scan behind 9 went
unseen when 8 were followed).
"""

from __future__ import annotations

from socket import AF_INET6, inet_ntoa, inet_ntop
from struct import Struct
from typing import NamedTuple

from cogs.nf.defrag import Defrag

TCP, UDP = 6, 17
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# link types (pcap's DLT numbers)
EN10MB, LINUX_SLL, NULL, LOOP = 1, 113, 0, 108
RAW_IP = frozenset({12, 14, 101, 228, 229})  # BSD, OpenBSD and Linux numbers, IPv4-only, IPv6-only

TRUNCATED = "truncated or malformed frame"
NOT_IP = "not IP"
TRUNCATED_L4 = "truncated transport header"
FRAGMENT = "IP fragment (not the first)"
HELD = "IP fragment (held for reassembly)"
TOO_MANY_EXT = "too many IPv6 extension headers"

#: IPv6 extension headers followed before the transport header (each costs a few
#: operations: the bound is about junk, not about what a receiver accepts)
MAX_IP6_EXT = 32

_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
# hop-by-hop, routing, destination options, mobility, HIP, shim6, experiments: (len + 1) * 8 bytes
_IP6_EXT = frozenset({0, 43, 60, 135, 139, 140, 253, 254})
_AH, _FRAG6 = 51, 44


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
    seq: int = 0  # TCP sequence number, 0 otherwise


def decode(frame: bytes, ts: float, link: int = EN10MB, defrag: Defrag | None = None) -> Packet | str:
    """The IP packet in ``frame`` (of link type ``link``), or why there is none. With
    ``defrag`` a fragment is held there (:data:`HELD`) and the datagram it completes
    returned; without, a first fragment is decoded as what it holds, the others skipped."""
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
        return _ip4(frame, off, ts, defrag)
    if etype == 0x86DD:
        return _ip6(frame, off, ts, defrag)
    return NOT_IP


def l3_offset(frame: bytes) -> int:
    """Where the network header of an Ethernet frame starts (after any VLAN tags)."""
    off = 14
    for _ in range(2):
        if len(frame) < off or (frame[off - 2] << 8 | frame[off - 1]) not in _VLAN:
            break
        off += 4
    return off


def _ip4(b: bytes, off: int, ts: float, defrag: Defrag | None) -> Packet | str:
    if len(b) < off + 20 or b[off] >> 4 != 4:
        return TRUNCATED
    ihl = (b[off] & 0x0F) * 4
    total = b[off + 2] << 8 | b[off + 3]
    if ihl < 20 or (total and total < ihl):
        return TRUNCATED
    src, dst, proto = inet_ntoa(b[off + 12 : off + 16]), inet_ntoa(b[off + 16 : off + 20]), b[off + 9]
    end = min(off + total, len(b)) if total else len(b)
    frag = (b[off + 6] & 0x3F) << 8 | b[off + 7]  # more fragments, fragment offset
    if frag:
        if defrag is None:
            if frag & 0x1FFF:
                return FRAGMENT  # no transport header here: only the first fragment has one
        else:
            key = (src, dst, proto, b[off + 4 : off + 6])
            whole = defrag.add(key, ts, (frag & 0x1FFF) * 8, bool(frag & 0x2000), b[off + ihl : end])
            if whole is None:
                return HELD
            return _l4(whole[0], 0, len(whole[0]), proto, src, dst, ts)
    return _l4(b, off + ihl, end, proto, src, dst, ts)


def _ip6(b: bytes, off: int, ts: float, defrag: Defrag | None) -> Packet | str:
    if len(b) < off + 40 or b[off] >> 4 != 6:
        return TRUNCATED
    plen, nxt = b[off + 4] << 8 | b[off + 5], b[off + 6]
    src, dst = inet_ntop(AF_INET6, b[off + 8 : off + 24]), inet_ntop(AF_INET6, b[off + 24 : off + 40])
    end = min(off + 40 + plen, len(b)) if plen else len(b)  # 0: a jumbogram or offload: the rest
    return _chain(b, off + 40, end, nxt, src, dst, ts, defrag)


def _chain(
    b: bytes, off: int, end: int, nxt: int, src: str, dst: str, ts: float, defrag: Defrag | None
) -> Packet | str:
    """The transport header behind the IPv6 extension headers at ``b[off:end]``."""
    for _ in range(MAX_IP6_EXT + 1):  # a bounded chain: MAX_IP6_EXT headers, then the transport
        if nxt in _IP6_EXT or nxt == _AH:
            if end < off + 2:
                return TRUNCATED_L4
            nxt, off = b[off], off + ((b[off + 1] + 2) * 4 if nxt == _AH else (b[off + 1] + 1) * 8)
        elif nxt == _FRAG6:
            if end < off + 8:
                return TRUNCATED_L4
            frag = b[off + 2] << 8 | b[off + 3]
            if not frag & 0xFFF9:  # offset 0, the last: an atomic fragment, the datagram itself (RFC 6946)
                nxt, off = b[off], off + 8
            elif defrag is None:
                if frag >> 3:
                    return FRAGMENT
                nxt, off = b[off], off + 8  # the first: decoded as what it holds
            else:
                whole = defrag.add(
                    (src, dst, b[off + 4 : off + 8]), ts, frag & 0xFFF8, bool(frag & 1), b[off + 8 : end], b[off]
                )
                if whole is None:
                    return HELD
                data, first = whole  # the chain goes on in the first fragment's fragmentable part
                return _chain(data, 0, len(data), first if isinstance(first, int) else 59, src, dst, ts, None)
        else:
            return _l4(b, off, end, nxt, src, dst, ts)
    return TOO_MANY_EXT


_TCP_HEAD = Struct("!HHI4xH").unpack_from  # ports, sequence number, data offset and flags
_PORTS = Struct("!HH").unpack_from


def _l4(b: bytes, at: int, end: int, proto: int, src: str, dst: str, ts: float) -> Packet | str:
    """The transport header at ``b[at:end]``; the payload is the one copy made."""
    if proto == TCP:
        if end - at < 20:
            return TRUNCATED_L4
        sport, dport, seq, off_flags = _TCP_HEAD(b, at)
        doff = off_flags >> 10 & 0x3C
        if doff < 20 or doff > end - at:
            return TRUNCATED_L4
        # NS, then CWR ... FIN
        return Packet(ts, src, dst, TCP, sport, dport, off_flags & 0x1FF, b[at + doff : end], seq)
    if proto == UDP:
        if end - at < 8:
            return TRUNCATED_L4
        sport, dport = _PORTS(b, at)
        return Packet(ts, src, dst, UDP, sport, dport, 0, b[at + 8 : end])
    return Packet(ts, src, dst, proto, 0, 0, 0, b"")
