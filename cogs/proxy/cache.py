"""The replica cache of a proxy (replica mode of direct-retrieval states).

Correctness rests on versions (lua/replica.lua): a discard carries the version the
update created, and drops any cached value older than it. A discard may overtake the
reply of a retrieve issued before the update (they travel on different connections),
so while a retrieve of a key is in flight every discard for the key is remembered
(a tombstone) and the reply is cached only if it is at least that new. When the
discard link drops, every replica is dropped and caching stays off until the link is
back (an epoch guards replies of retrieves sent before the drop).

Staleness is bounded by a deadline, not by code that must run: the discard link
(discard.py) proves, with each PONG on a subscription, that every discard published
before its ping was handled, and moves ``fresh_until`` to that ping's send time plus
DEAD_AFTER. Past it ``get()`` serves nothing, so a loop stalled longer than that (a
CPU-bound callback, a SIGSTOP) cannot answer from a replica whose discard still sits
unread in a socket buffer: the first read after the stall goes to the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import Any, Final


class _Miss:
    """What a replica lookup returns when the proxy holds no valid replica."""

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = _Miss()
_NEWEST = 1 << 62  # a tombstone no version reaches: the fetches under way are not cached


@dataclass(frozen=True)
class CacheStatistics:
    cache_hits: int
    cache_misses: int
    cached_entries: int
    #: discard-replica entries received (or own updates that made a replica stale)
    discards: int
    #: whole-cache drops (the discard link was lost, or a discard message was garbled)
    cache_drops: int
    #: reads that found a replica but missed: its freshness was no longer proven (no
    #: PONG from every node within DEAD_AFTER, a stalled loop say)
    expired_reads: int
    #: messages on the discard channel that were not discards (anyone holding the NF's
    #: proxy credentials can publish there): each dropped every replica, as it may have
    #: been a real discard
    bad_discards: int
    #: whole-cache drops because a node dropped this id's holder entries (a process
    #: started with the same id, or the id was released as dead)
    cache_releases: int
    #: times the discard link was lost (nothing cached could be trusted from then on,
    #: whether or not anything was cached: cache_drops counts only drops of entries)
    discard_links_lost: int


class ReplicaCache:
    def __init__(self) -> None:
        # (state index, key) -> (value, version, expires at (monotonic) or 0)
        self._entries: dict[tuple[int, str], tuple[Any, int, float]] = {}
        self._inflight: dict[tuple[int, str], int] = {}
        self._tombs: dict[tuple[int, str], int] = {}
        self.epoch = 0
        self.enabled = False
        #: monotonic time up to which the entries are proven fresh (discard.py moves it)
        self.fresh_until = 0.0
        self.hits = self.misses = self.discards = self.drops = self.expired = self.bad_discards = 0
        self.released = 0
        self.links_lost = 0

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            self.hits, self.misses, len(self._entries), self.discards, self.drops, self.expired, self.bad_discards,
            self.released, self.links_lost,
        )  # fmt: skip

    def get(self, k: tuple[int, str]) -> Any:
        """The replica to serve for ``k``, or MISS: none held, expired with its state,
        or its freshness not proven now (kept: the next PONG may vouch for it again)."""
        e = self._entries.get(k)
        if e is None:
            self.misses += 1
            return MISS
        now = monotonic()
        if now > self.fresh_until:
            self.expired += 1
            self.misses += 1
            return MISS
        if e[2] and e[2] < now:
            del self._entries[k]
            self.misses += 1
            return MISS
        self.hits += 1
        return e[0]

    def peek(self, k: tuple[int, str]) -> Any:
        """The replica held for ``k`` whatever its freshness (monitors, tests), or MISS;
        counts nothing."""
        e = self._entries.get(k)
        return MISS if e is None else e[0]

    def begin_fetch(self, k: tuple[int, str]) -> int:
        self._inflight[k] = self._inflight.get(k, 0) + 1
        return self.epoch

    def end_fetch(self, k: tuple[int, str], epoch: int, value: Any, version: int, pttl: int) -> bool:
        """A replica retrieve returned: cache it unless a newer discard came meanwhile."""
        n = self._inflight.get(k, 1) - 1
        tomb = self._tombs.get(k, 0)
        if n <= 0:
            self._inflight.pop(k, None)
            self._tombs.pop(k, None)
        else:
            self._inflight[k] = n
        if not self.enabled or epoch != self.epoch or version < tomb:
            return False
        cur = self._entries.get(k)
        if cur is not None and cur[1] > version:
            return False
        expires = monotonic() + pttl / 1000 if pttl > 0 else 0.0
        self._entries[k] = (value, version, expires)
        return True

    def abort_fetch(self, k: tuple[int, str]) -> None:
        n = self._inflight.get(k, 1) - 1
        if n <= 0:
            self._inflight.pop(k, None)
            self._tombs.pop(k, None)
        else:
            self._inflight[k] = n

    def discard(self, k: tuple[int, str], version: int) -> None:
        self.discards += 1
        e = self._entries.get(k)
        if e is not None and e[1] < version:
            del self._entries[k]
        if k in self._inflight and self._tombs.get(k, 0) < version:
            self._tombs[k] = version

    def written(self, k: tuple[int, str]) -> None:
        """This proxy queued an update of ``k``: its replica is stale from now on, and a
        fetch already under way may return the state before the update (not cached)."""
        if self._entries.pop(k, None) is not None:
            self.discards += 1
        if k in self._inflight:
            self._tombs[k] = _NEWEST

    def enable(self, fresh_until: float) -> None:
        """The discard link holds again: cache what fetches begun from now on return.
        A fetch begun while it was down is not cached (a new epoch): the discard of an
        update made after it was read may have been published to nobody."""
        self.epoch += 1
        self.fresh_until = fresh_until
        self.enabled = True

    def drop_all(self) -> None:
        """The discard link is down: nothing cached can be trusted any more."""
        if self._entries:
            self.drops += 1
        self._entries.clear()
        self.epoch += 1
