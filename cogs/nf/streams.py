"""Length-prefixed messages of TCP flows (DNS over TCP, RFC 7766), bounded.

Over TCP each DNS message carries a 2-byte length, and TCP keeps no message
boundaries: a client may send the length and the message in two segments, split a
message anywhere, or pipeline several in one segment. A detector that read one
message at the start of each segment was blind to all three. :class:`Messages`
reassembles them per flow, as the resolver's TCP stack would (in sequence order,
retransmitted bytes read once): a flow keeps its next sequence number and the part
of a message whose end has not arrived, until its FIN or RST.

Bounded: at most :data:`MAX_FLOWS` flows and :data:`MAX_BYTES` bytes of partial
messages held, the least recently active dropped first; a flow silent for
:data:`IDLE_S` (capture time) is dropped; at most :data:`MAX_MESSAGES` messages a
segment. Everything dropped is counted by reason in ``counters``.
"""

from __future__ import annotations

from collections import Counter

from cogs.nf.frames import FIN, RST, SYN, Packet

MAX_FLOWS = 4096
MAX_BYTES = 8 << 20
IDLE_S = 60.0
MAX_MESSAGES = 64
_SEQ = 1 << 32

Flow = tuple[str, int, str, int]


class Messages:
    """The messages of the TCP flows a detector is given, in order, per flow."""

    def __init__(
        self,
        counters: Counter[str],
        label: str = "tcp",
        *,
        max_flows: int = MAX_FLOWS,
        max_bytes: int = MAX_BYTES,
        idle_s: float = IDLE_S,
    ) -> None:
        self.counters, self.label = counters, label
        self.max_flows, self.max_bytes, self.idle_s = max_flows, max_bytes, idle_s
        self.bytes = 0
        # flow -> (next sequence number, bytes of the message not complete yet, last seen);
        # in order of last activity: the head is the first to drop
        self._flows: dict[Flow, tuple[int, bytes, float]] = {}
        self._swept = 0.0

    def __len__(self) -> int:
        return len(self._flows)

    def segment(self, p: Packet) -> list[bytes]:
        """The messages ``p`` completes (TCP, client to server)."""
        key = (p.src, p.sport, p.dst, p.dport)
        data, seq = p.payload, p.seq
        held = self._flows.pop(key, None)
        if held is not None:
            self.bytes -= len(held[1])
        if p.flags & SYN:  # a new connection (what a flow of the same ports held is gone)
            seq = (seq + 1) % _SEQ  # the SYN takes a number; data (TCP Fast Open) follows it
            held = (seq, b"", p.ts)
        end = (seq + len(data)) % _SEQ  # the next number this flow sends
        if held is not None:
            expected, pending, _ = held
            ahead = (seq - expected) % _SEQ
            if ahead >= _SEQ // 2:  # starts before what was read: a retransmission
                data = data[_SEQ - ahead :]
                if not data:
                    end = expected
            elif ahead:  # bytes missing (lost before the capture): the message held is lost
                self.counters[f"{self.label} gaps (partial message dropped)"] += 1
                pending = b""
            if pending:
                data = pending + data
        if p.ts - self._swept > 1.0:
            self.expire(p.ts)
        out, off = self._split(data)
        rest = data[off:]
        if p.flags & (FIN | RST):
            if rest:
                self.counters[f"{self.label} partial messages at the end of a flow"] += 1
        else:  # kept while the flow lives: its sequence numbers frame what comes next
            self._flows[key] = (end, rest, p.ts)
            self.bytes += len(rest)
            self._bound()
        return out

    def _split(self, data: bytes) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        off, n = 0, len(data)
        while n - off >= 2:
            end = off + 2 + (data[off] << 8 | data[off + 1])
            if end > n:
                break
            if len(out) == MAX_MESSAGES:
                self.counters[f"{self.label} messages over the limit"] += 1
                return out, n  # the rest of the segment is not read
            out.append(data[off + 2 : end])
            off = end
        return out, off

    def _bound(self) -> None:
        while self._flows and (len(self._flows) > self.max_flows or self.bytes > self.max_bytes):
            key = next(iter(self._flows))
            self.bytes -= len(self._flows.pop(key)[1])
            self.counters[f"{self.label} flows evicted (table full)"] += 1  # its framing is lost

    def expire(self, now: float) -> None:
        """Drop the flows silent for ``idle_s`` (the oldest activity first)."""
        self._swept = now
        while self._flows:
            key = next(iter(self._flows))
            if now - self._flows[key][2] <= self.idle_s:
                return
            pending = self._flows.pop(key)[1]
            if pending:
                self.bytes -= len(pending)
                self.counters[f"{self.label} partial messages expired"] += 1

    def finish(self) -> None:
        """The end of the traffic: partial messages will not complete."""
        partial = sum(1 for _, pending, _ in self._flows.values() if pending)
        if partial:
            self.counters[f"{self.label} partial messages at the end of a flow"] += partial
        self._flows.clear()
        self.bytes = 0
