"""IP fragment reassembly for the frame decoder, bounded, with the rules Linux applies.

A receiver reassembles fragments before its transport layer sees them, so a SYN or
a DNS query split into IP fragments reaches the server whole; a detector that
skipped fragments was blind to it (a scan in 8-byte first fragments, a tunnel's
queries in two pieces). Live capture asks the kernel to reassemble IPv4
(``PACKET_FANOUT_FLAG_DEFRAG``); capture files, and IPv6 everywhere, are reassembled
here, so both modes see the same datagrams.

As Linux does (``net/ipv4/ip_fragment.c``, ``net/ipv6/reassembly.c``): fragments are
grouped by source, destination, protocol (IPv4) and identification; a fragment that
overlaps another one, except an exact repeat, drops the whole datagram (RFC 5722,
applied to IPv4 too); data past the end the last fragment set, or a second end,
drops it; a datagram over 65,535 bytes is dropped; an incomplete one expires after
:data:`TIMEOUT_S` (of capture time). The table is bounded: at most
:data:`MAX_DATAGRAMS` datagrams and :data:`MAX_BYTES` bytes (fragment overhead
counted) in progress, the oldest dropped first when full. Every drop is counted by
reason in ``counters``; nothing here raises on any input.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable

MAX_DATAGRAMS = 4096
MAX_BYTES = 4 << 20  # Linux's ipfrag_high_thresh
TIMEOUT_S = 30.0  # Linux's ipfrag_time
MAX_DATAGRAM = 65_535
OVERHEAD = 64  # bytes charged per fragment on top of its data (a tuple and a bytes object)

OVERLAP = "IP fragments overlapping (datagram dropped, as Linux does)"
INCONSISTENT = "IP fragments past the datagram's end (datagram dropped)"
TOO_BIG = "IP fragments over 65,535 bytes (datagram dropped)"
EXPIRED = "IP fragments never completed (datagram expired)"
EVICTED = "IP fragments evicted (reassembly table full)"


class _Datagram:
    __slots__ = ("bytes", "end", "first_ts", "have", "info", "offsets", "pieces")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.offsets: list[int] = []  # of the pieces, ascending (they never overlap)
        self.pieces: list[bytes] = []
        self.have = 0  # data bytes held (pieces never overlap)
        self.bytes = 0  # charged to the table
        self.end: int | None = None  # set by the last fragment
        self.info: object = None  # what the first fragment said (IPv6: the next header)


class Defrag:
    """One reassembly table (a process's, or a capture file's)."""

    def __init__(
        self,
        counters: Counter[str] | None = None,
        *,
        max_datagrams: int = MAX_DATAGRAMS,
        max_bytes: int = MAX_BYTES,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.max_datagrams, self.max_bytes, self.timeout_s = max_datagrams, max_bytes, timeout_s
        self.reassembled = 0
        self.bytes = 0
        self._q: dict[Hashable, _Datagram] = {}  # in order of first fragment: the oldest first

    def __len__(self) -> int:
        return len(self._q)

    def add(
        self, key: Hashable, ts: float, offset: int, more: bool, data: bytes, info: object = None
    ) -> tuple[bytes, object] | None:
        """Take one fragment (``offset`` in bytes, ``more``: not the last one); the whole
        datagram's payload and the ``info`` its first fragment gave once complete, else None."""
        self._expire(ts)
        if more:
            data = data[: len(data) & ~7]  # a middle fragment ends on 8 bytes (Linux trims it)
        end = offset + len(data)
        d = self._q.get(key)
        if d is None:
            d = self._q[key] = _Datagram(ts)
        if end > MAX_DATAGRAM:
            self._drop(key, TOO_BIG)
            return None
        if not more:
            last = d.offsets[-1] + len(d.pieces[-1]) if d.pieces else 0
            if (d.end is not None and d.end != end) or last > end:
                self._drop(key, INCONSISTENT)
                return None
            d.end = end
        elif d.end is not None and end > d.end:
            self._drop(key, INCONSISTENT)
            return None
        # pieces never overlap: only the neighbours can (bounded work per fragment)
        i = bisect_right(d.offsets, offset)
        if i and d.offsets[i - 1] + len(d.pieces[i - 1]) > offset:
            if d.offsets[i - 1] == offset and len(d.pieces[i - 1]) == len(data):
                return None  # an exact repeat (a retransmission): ignored
            self._drop(key, OVERLAP)
            return None
        if i < len(d.offsets) and d.offsets[i] < end:
            self._drop(key, OVERLAP)
            return None
        if offset == 0:
            d.info = info
        d.offsets.insert(i, offset)
        d.pieces.insert(i, data)
        d.have += len(data)
        charge = len(data) + OVERHEAD
        d.bytes += charge
        self.bytes += charge
        if d.end is not None and d.have == d.end:
            del self._q[key]
            self.bytes -= d.bytes
            self.reassembled += 1
            return b"".join(d.pieces), d.info
        self._bound(key)
        return None

    def _drop(self, key: Hashable, why: str) -> None:
        d = self._q.pop(key)
        self.bytes -= d.bytes
        self.counters[why] += 1

    def _bound(self, keep: Hashable) -> None:
        """Evict the oldest datagrams (not ``keep``) while the table is over its limits."""
        while (len(self._q) > self.max_datagrams or self.bytes > self.max_bytes) and len(self._q) > 1:
            oldest = next(iter(self._q))
            if oldest == keep:  # the newest is the only one left to blame: it goes
                self._drop(keep, EVICTED)
                return
            self._drop(oldest, EVICTED)
        if self.bytes > self.max_bytes:
            self._drop(keep, EVICTED)

    def _expire(self, now: float) -> None:
        q = self._q
        while q:
            key = next(iter(q))
            if now - q[key].first_ts <= self.timeout_s:
                return
            self._drop(key, EXPIRED)

    def finish(self) -> None:
        """The end of the traffic: what is still incomplete never will be."""
        for key in list(self._q):
            self._drop(key, EXPIRED)
