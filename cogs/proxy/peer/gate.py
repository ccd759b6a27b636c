"""Who may open a peer connection now: token buckets checked as a connection is accepted.

A stranger's connection costs the server an accept, a transport, a hello and a timer;
churned at ~10,000 per second from one address it saturated the owner's event loop and
starved real peers and the proxy's own work. So every source address (an IPv6 source
by its /64: one host's range) has a bucket of connections per second, and all strangers
together share one more. A connection over a bucket is closed before any of that work
(server.py); a source that proved the secret once is known from then on: it passes the
strangers' bucket and has a larger one of its own, so a flood of strangers, from one
address or many, never turns a real peer away.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

SOURCE = "source"  # the reasons admit() gives
STRANGERS = "strangers"


def source_key(address: str) -> str:
    """The unit a bucket counts: an IPv4 address, or an IPv6 address's /64."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at

    def take(self, rate: float, burst: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class AcceptGate:
    """Connections per second a source, and all strangers together, may open."""

    rate_per_source: float = 32.0
    burst_per_source: float = 64.0
    #: a source that proved the secret before (many proxies on one host, a restart)
    known_rate_per_source: float = 512.0
    known_burst_per_source: float = 1024.0
    rate: float = 256.0  # every stranger together
    burst: float = 256.0
    max_sources: int = 4096  # buckets kept (least recently seen forgotten: a full one)
    max_known: int = 1024
    refused_source: int = field(default=0, init=False)  # connections over their source's rate
    refused_strangers: int = field(default=0, init=False)  # over the rate of all strangers
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, init=False, repr=False)
    _known: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False, repr=False)
    _strangers: _Bucket | None = field(default=None, init=False, repr=False)

    def admit(self, address: str, now: float) -> str | None:
        """None if a connection from ``address`` may be served now (its tokens taken),
        else which bucket is empty (SOURCE or STRANGERS). ``now``: monotonic seconds."""
        key = source_key(address)
        known = key in self._known
        rate, burst = (
            (self.known_rate_per_source, self.known_burst_per_source)
            if known
            else (self.rate_per_source, self.burst_per_source)
        )
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        # the source's own bucket first: one loud source must not drain the shared one
        if not bucket.take(rate, burst, now):
            self.refused_source += 1
            return SOURCE
        if known:
            return None
        if self._strangers is None:
            self._strangers = _Bucket(self.burst, now)
        if not self._strangers.take(self.rate, self.burst, now):
            bucket.tokens += 1.0  # not served: its own token back
            self.refused_strangers += 1
            return STRANGERS
        return None

    def known(self, address: str) -> None:
        """``address`` proved the secret: prefer it from now on."""
        key = source_key(address)
        self._known[key] = None
        self._known.move_to_end(key)
        if len(self._known) > self.max_known:
            self._known.popitem(last=False)
