"""What a state proxy reports about itself (read by the monitor, the exporter, benches).

Each component keeps its own typed statistics (the batcher, delivery, the replica
cache, the request table, indirect states); :class:`ProxyStatistics` is their
fields side by side, composed by name: a field renamed in a component and not here
fails loudly (``compose`` passes every field by keyword), never reads 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from cogs.proxy.cache import CacheStatistics
from cogs.proxy.delivery import DeliveryStatistics
from cogs.proxy.requests import RequestStatistics


@dataclass(frozen=True)
class BatchStatistics:
    #: update() calls by the NF (trigger path)
    updates: int
    #: updates merged into an op already pending for the same key
    coalesced: int
    #: ops sent to the coordinator, and those it applied
    ops_sent: int
    ops_applied: int
    batches: int
    #: ops buffered (not yet sent) and unconfirmed (sent, no reply yet)
    pending_ops: int
    inflight_ops: int
    #: ops the coordinator refused (each also went to on_error and the log)
    errors: int
    #: update() calls refused because the buffer was full
    backpressure: int
    #: ops re-routed after a topology change (MOVED / ASK)
    rerouted: int


@dataclass(frozen=True)
class IndirectStatistics:
    #: values this proxy owns, their bytes, and values dropped to stay within COGS_MAX_OWNED_BYTES
    owned: int
    owned_bytes: int
    evicted: int
    #: read-throughs that found their owner without the value and took the key over
    stale_locators: int
    #: reads served without network; values fetched from (or ops run at) owner peers;
    #: locator lookups at the coordinator; requests served to peers; reads (here or by
    #: peers) that waited for a value this proxy was loading instead of loading it too
    indirect_local_hits: int
    remote_ops: int
    locator_lookups: int
    peer_served: int
    collapsed_reads: int
    #: owned values re-checked at the coordinator after this proxy's lease lapsed
    #: (a frozen loop, a lost heartbeat), and those found taken over meanwhile
    lease_checks: int
    lease_lost: int


NO_INDIRECT = IndirectStatistics(*([0] * len(fields(IndirectStatistics))))


@dataclass(frozen=True)
class ProxyStatistics:
    #: the components whose fields these are (and whose ``#:`` docs describe them)
    PARTS: ClassVar[tuple[type, ...]] = (
        BatchStatistics, DeliveryStatistics, CacheStatistics, RequestStatistics, IndirectStatistics,
    )  # fmt: skip

    proxy_id: str
    #: sync ops (syn_up, syn_retrieve, syn_check) and async ops (asyn_up, asyn_retrieve, entry ops) issued
    sync_ops: int
    async_ops: int
    # -- batching (BatchStatistics)
    updates: int
    coalesced: int
    ops_sent: int
    ops_applied: int
    batches: int
    pending_ops: int
    inflight_ops: int
    errors: int
    backpressure: int
    rerouted: int
    # -- delivery (DeliveryStatistics)
    resent_batches: int
    outages: int
    longest_pause_s: float
    gaps: int
    lost_batches: int
    lost_ops: int
    overdue_batches: int
    unconfirmed_batches: int
    stalled_channels: int
    # -- replica cache (CacheStatistics)
    cache_hits: int
    cache_misses: int
    cached_entries: int
    discards: int
    cache_drops: int
    expired_reads: int
    bad_discards: int
    cache_releases: int
    discard_links_lost: int
    # -- request table (RequestStatistics)
    pending_packets: int
    callback_errors: int
    # -- indirect states (IndirectStatistics)
    owned: int
    owned_bytes: int
    evicted: int
    stale_locators: int
    indirect_local_hits: int
    remote_ops: int
    locator_lookups: int
    peer_served: int
    collapsed_reads: int
    lease_checks: int
    lease_lost: int

    @classmethod
    def compose(
        cls,
        proxy_id: str,
        sync_ops: int,
        async_ops: int,
        *parts: BatchStatistics | DeliveryStatistics | CacheStatistics | RequestStatistics | IndirectStatistics,
    ) -> ProxyStatistics:
        merged: dict[str, Any] = {}
        for p in parts:
            merged.update(asdict(p))
        return cls(proxy_id=proxy_id, sync_ops=sync_ops, async_ops=async_ops, **merged)

    @property
    def coalescing_ratio(self) -> float:
        """NF-issued updates per op actually sent for them (1.0 = no coalescing)."""
        sent = self.updates - self.coalesced
        return self.updates / sent if sent > 0 else 1.0

    @property
    def cache_hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0
