"""The flow-inspection NFs of the paper, on cogs trigger states.

Each detector keeps its per-flow state locally (both directions of a flow reach the
same middlebox) and sends accumulative updates of multi-flow state to the
coordinator, where the catalog's checkers raise the alerts. The thresholds and
windows live in the catalog (cogs/catalogs/default.toml); the knobs here only decide
what an NF counts.

* ``portscan`` — like Zeek's scan policy: *failed* connection attempts (a SYN that got
  no SYN-ACK in time, or got a RST) add the port to ``scan_ports[src>dst]`` and the
  host to ``scan_hosts[src>port]``.
* ``dnstunnel`` — per query: the name into ``dns_subdomains[domain]`` (distinct names),
  the query type into ``dns_qtypes[client]`` (share of tunnel-friendly types), and
  long or high-entropy names into ``dns_longnames[domain]``.
* ``sidejack`` — session cookies of HTTP requests: the client IP into
  ``sidejack_clients[name=value]``; two clients presenting one session is an alert.
  Names and values are taken as the server takes them (PHP url-decodes both), so an
  encoded ``PHPSESS%49D=%35f2b...`` is the same session as ``PHPSESSID=5f2b...``.

What servers accept, the detectors read: a request after empty lines, with any
method, pipelined behind another; DNS messages over TCP split across segments or
several in one (:mod:`cogs.nf.streams`); IP fragments and IPv6 extension headers are
handled by the frame decoder (:mod:`cogs.nf.frames`). A ``Cookie`` header in a later
segment than its request line is not read (the live pre-filter admits segments that
start a request; following them would need per-flow reassembly of every request).

No packet can blind a detector: names and cookies become keys through
:mod:`cogs.nf.ident` (printable ASCII, bounded, the same on every box), payloads are
read by the lenient, bounded parsers of :mod:`cogs.nf.payloads`, the per-flow tables
are capped, and :mod:`cogs.nf.feed` counts and skips a packet whose handling fails.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cogs.nf.frames import ACK, RST, SYN, TCP, UDP, Packet
from cogs.nf.ident import bound, ident, safe_text
from cogs.nf.payloads import MAX_SESSION_COOKIES, dns_questions, http_requests, url_decoded
from cogs.nf.streams import Messages

Update = Callable[[str, str, str, Any], None]  # (state, key, op, delta)


@dataclass
class Detector:
    """Per-flow logic of one NF. ``update`` is the proxy's (namespaced) Update."""

    update: Update
    counters: Counter[str] = field(default_factory=Counter)
    name: ClassVar[str] = ""
    states: ClassVar[tuple[str, ...]] = ()

    def packet(self, p: Packet) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """End of the traffic: settle what per-flow state still holds."""

    def tick(self, now: float) -> None:
        """The clock moved to ``now`` (live capture: once a second, packets or not)."""

    @staticmethod
    def key_of(state: str, key: str) -> str:
        """The alert's subject (scanner IP, tunnel domain, cookie) from a state key."""
        return key


@dataclass
class PortScan(Detector):
    #: a SYN without SYN-ACK for this long (trace time) is a failed attempt
    attempt_timeout: float = 5.0
    #: open attempts kept (a SYN flood must not exhaust memory): past it the oldest
    #: count as failed at once
    max_attempts: int = 200_000
    name: ClassVar[str] = "portscan"
    states: ClassVar[tuple[str, ...]] = ("scan_ports", "scan_hosts")

    def __post_init__(self) -> None:
        self._attempts: dict[tuple[str, int, str, int], float] = {}  # (src, sport, dst, dport) -> first SYN
        self._last_sweep = 0.0

    def packet(self, p: Packet) -> None:
        if p.proto != TCP:
            return
        f = p.flags
        if f & SYN and not f & ACK:
            self._attempts.setdefault((p.src, p.sport, p.dst, p.dport), p.ts)
            if len(self._attempts) > self.max_attempts:
                self.counters["attempts over the table limit"] += 1
                oldest = next(iter(self._attempts))
                del self._attempts[oldest]
                self._failed(*oldest)
        elif f & SYN and f & ACK:  # the responder accepted: not a failed attempt
            self._attempts.pop((p.dst, p.dport, p.src, p.sport), None)
        elif f & RST:  # rejected by the responder: a failed attempt now
            attempt = (p.dst, p.dport, p.src, p.sport)
            if attempt in self._attempts:
                del self._attempts[attempt]
                self._failed(*attempt)
        if p.ts - self._last_sweep > 1.0:
            self._sweep(p.ts)

    def _sweep(self, now: float) -> None:
        """Attempts unanswered for ``attempt_timeout`` failed. The table is in order of
        first SYN, so the sweep stops at the first fresh one (a capture's few
        out-of-order stamps only delay an entry to a later sweep)."""
        self._last_sweep = now
        old = []
        for a, t in self._attempts.items():
            if now - t <= self.attempt_timeout:
                break
            old.append(a)
        for a in old:
            del self._attempts[a]
            self._failed(*a)

    def _failed(self, src: str, sport: int, dst: str, dport: int) -> None:
        self.counters["failed attempts"] += 1
        self.update("scan_ports", f"{src}>{dst}", "add", str(dport))
        self.update("scan_hosts", f"{src}>{dport}", "add", dst)

    def finish(self) -> None:
        self._sweep(float("inf"))

    def tick(self, now: float) -> None:
        if now - self._last_sweep > 1.0:
            self._sweep(now)

    @staticmethod
    def key_of(state: str, key: str) -> str:
        return key.split(">", 1)[0]  # the scanner


# query types tunnels favour: they carry more bytes per answer than A/AAAA
TUNNEL_QTYPES = frozenset({5, 10, 15, 16, 33, 65399})  # CNAME NULL MX TXT SRV PRIVATE


_GENERIC_SLD = frozenset({b"co", b"com", b"net", b"org", b"gov", b"ac", b"edu"})


def domain_labels(labels: tuple[bytes, ...]) -> int:
    """How many trailing labels make the registered domain: two, or three under a
    two-letter country code with a generic second level (``example.co.uk``): close
    enough without a public-suffix list."""
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _GENERIC_SLD:
        return 3
    return 2


def registered_domain(name: str) -> str:
    """The registered domain of a dotted name (see :func:`domain_labels`)."""
    parts = name.split(".")
    return ".".join(parts[-domain_labels(tuple(p.encode() for p in parts)) :])


def name_text(labels: tuple[bytes, ...]) -> str:
    """A DNS name as an identifier: labels in :func:`~cogs.nf.ident.safe_text` (a dot
    inside a label as ``\\x2e``), joined with dots, bounded."""
    text = safe_text(b".".join(labels))
    if text.count(".") != len(labels) - 1:  # a label holds a dot: escape it there
        text = ".".join([safe_text(lb).replace(".", "\\x2e") for lb in labels])
    return bound(text)


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


@dataclass
class DnsTunnel(Detector):
    long_label: int = 40
    high_entropy: float = 4.0
    name: ClassVar[str] = "dnstunnel"
    states: ClassVar[tuple[str, ...]] = ("dns_subdomains", "dns_qtypes", "dns_longnames")

    def __post_init__(self) -> None:
        self._tcp = Messages(self.counters, "dns tcp")  # length-prefixed queries, per flow

    def packet(self, p: Packet) -> None:
        if p.dport != 53:
            return
        if p.proto == UDP:
            self._query(p.payload, p.src)
        elif p.proto == TCP:
            for message in self._tcp.segment(p):
                self._query(message, p.src)

    def _query(self, payload: bytes, client: str) -> None:
        for labels, qtype in dns_questions(payload, self.counters):
            k = domain_labels(labels)
            if len(labels) <= k:
                continue  # a bare domain: nothing tunnelled in subdomains
            self.counters["queries"] += 1
            domain = name_text(labels[-k:])
            self.update("dns_subdomains", domain, "add", name_text(labels))
            self.update("dns_qtypes", client, "incr", {"all": 1, "odd": int(qtype in TUNNEL_QTYPES)})
            sub = labels[:-k]
            if max(map(len, sub)) >= self.long_label:
                self.update("dns_longnames", domain, "add", 1)
                continue
            text = b".".join(sub).decode("latin-1")  # one char per byte: entropy of the bytes
            if len(text) >= 20 and entropy(text) >= self.high_entropy:
                self.update("dns_longnames", domain, "add", 1)

    def tick(self, now: float) -> None:
        self._tcp.expire(now)

    def finish(self) -> None:
        self._tcp.finish()


SESSION_COOKIES = ("phpsessid", "jsessionid", "asp.net_sessionid", "sessionid", "session", "sid", "connect.sid")


@dataclass
class SideJack(Detector):
    cookie_names: tuple[str, ...] = SESSION_COOKIES
    name: ClassVar[str] = "sidejack"
    states: ClassVar[tuple[str, ...]] = ("sidejack_clients",)

    def __post_init__(self) -> None:
        self._wanted = frozenset(n.lower().encode() for n in self.cookie_names)

    def packet(self, p: Packet) -> None:
        if p.proto != TCP or not p.payload:
            return
        requests = http_requests(p.payload, self.counters)
        if requests is None:
            return
        self.counters["http requests"] += len(requests)
        wanted = self._wanted
        for cookies in requests:
            for name, value in cookies:  # most requests carry no session cookie: a quick look first
                if value and (name.lower() in wanted or b"%" in name or b"+" in name):
                    self._sessions(cookies, p.src)
                    break

    def _sessions(self, cookies: list[tuple[bytes, bytes]], client: str) -> None:
        found: list[tuple[bytes, bytes]] = []  # (name lower-cased, name=value), as the server decodes them
        wanted = self._wanted
        for name, value in cookies:
            if not value:
                continue
            low = name.lower()
            if low not in wanted:
                if b"%" not in name and b"+" not in name:
                    continue
                name = url_decoded(name)  # noqa: PLW2901 (the name the server sees)
                low = name.lower()
                if low not in wanted:
                    continue
            if b"%" in value or b"+" in value:
                value = url_decoded(value)  # noqa: PLW2901
            found.append((low, name + b"=" + value))
        if len(found) < 2:
            if found:
                self.counters["session cookies"] += 1
                self.update("sidejack_clients", ident(found[0][1]), "add", client)
            return
        # A server reads one value of a name: PHP, Express and Go the first, Django the
        # last; decoys before or after it cannot push those out. Others fill the rest.
        first: dict[bytes, bytes] = {}
        last: dict[bytes, bytes] = {}
        for low, cookie in found:
            first.setdefault(low, cookie)
            last[low] = cookie
        chosen = dict.fromkeys([*first.values(), *last.values(), *(c for _, c in found)])
        for i, cookie in enumerate(chosen):
            if i == MAX_SESSION_COOKIES:
                self.counters["session cookies over the limit"] += len(chosen) - i
                break
            self.counters["session cookies"] += 1
            self.update("sidejack_clients", ident(cookie), "add", client)


DETECTORS: dict[str, type[Detector]] = {d.name: d for d in (PortScan, DnsTunnel, SideJack)}
