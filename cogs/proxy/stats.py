"""What a state proxy reports about itself (read by the monitor and the benches)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProxyStatistics:
    proxy_id: str
    #: update() calls by the NF (trigger path)
    updates: int
    #: updates merged into an op already pending for the same key
    coalesced: int
    #: ops sent to the coordinator, and those it applied
    ops_sent: int
    ops_applied: int
    batches: int
    sync_ops: int
    async_ops: int
    cache_hits: int
    cache_misses: int
    cached_entries: int
    #: discard-replica entries received, and whole-cache drops (discard link lost)
    discards: int
    cache_drops: int
    #: ops buffered (not yet sent) and in flight (sent, no reply yet)
    pending_ops: int
    inflight_ops: int
    #: packets waiting in the packet buffer table for their state
    pending_packets: int
    #: ops the coordinator refused (each also went to on_error and the log)
    errors: int
    #: update() calls refused because the buffer was full
    backpressure: int
    #: ops re-sent after a topology change (MOVED); batches re-sent after a lost
    #: connection (exactly once: the coordinator drops duplicates)
    rerouted: int
    retried_batches: int
    #: coordinator outages this proxy rode out (failovers), and the longest pause
    outages: int = 0
    longest_pause_s: float = 0.0
    #: indirect states: values this proxy owns; reads served without network; values
    #: fetched from (or ops run at) owner peers; locator lookups at the coordinator;
    #: requests this proxy served to peers; reads (here or by peers) that waited for a
    #: value this proxy was loading (read-through) instead of loading it too
    owned: int = 0
    #: bytes of the values owned, and values dropped to stay within COGS_MAX_OWNED_BYTES
    owned_bytes: int = 0
    evicted: int = 0
    #: read-throughs that found their owner without the value and took the key over
    stale_locators: int = 0
    indirect_local_hits: int = 0
    remote_ops: int = 0
    locator_lookups: int = 0
    peer_served: int = 0
    collapsed_reads: int = 0

    @property
    def coalescing_ratio(self) -> float:
        """NF-issued updates per op actually sent for them (1.0 = no coalescing)."""
        sent = self.updates - self.coalesced
        return self.updates / sent if sent > 0 else 1.0

    @property
    def cache_hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0
