"""The proxy registry: who is alive, and cleaning up after those who are not.

Each proxy keeps ``cogs:proxy:{<id>}`` alive with a TTL heartbeat carrying its
statistics (and, for indirect states, its peer address and incarnation), and is
listed by last beat in the ``cogs:proxies`` index for the monitor (in its NF's
namespace: ``cogs@<nf>:proxy:...`` for an NF other than the default one). A proxy that
closes deletes its heartbeat, its channels' exactly-once records and its replica
holder entries on every node. One that dies is cleaned up by the others: a live
proxy, at most once a minute cluster-wide, releases the holder entries of listed
proxies whose heartbeat is gone. A proxy starting with an id already used releases
that id's old holder entries first: a new process holds no replica yet.

**Run token.** Each process draws a random run token, stored in its heartbeat entry
and checked by the coordinator (lua/registry.lua): a process starting takes the id
over; a later beat is stored only while the entry is its own, and a close deletes
the entry and releases the id's holder entries only if the entry is its own. So an
older process with the same id (still running, or frozen and woken up) never
overwrites or removes the newer one: its beat is refused, it learns it was
superseded (``on_superseded``: its replicas are dropped, its indirect lease is no
longer renewed) and it beats no more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from redis import exceptions as rexc

from cogs.coordinator.client import Coordinator
from cogs.errors import CALL_ERRORS, CogsError, from_redis
from cogs.keys import slot, stream_tag, valid_proxy_id
from cogs.logs import fields

log = logging.getLogger("cogs.proxy")
JANITOR_EVERY_S = 60.0
DEAD_AFTER_S = 120.0  # a listed proxy this long without a beat, and without a heartbeat key
JANITOR_BATCH = 100  # index entries looked at per run


class Registry:
    def __init__(self, coord: Coordinator, proxy_id: str, ttl_s: float, info: Callable[[], dict[str, Any]]) -> None:
        self.coord, self.id, self.ttl = coord, proxy_id, ttl_s
        self.ns = coord.ns
        self.info = info  # what the heartbeat carries besides id, host, pid, time
        self.released_dead = 0  # holder entries of dead proxies this proxy dropped
        #: what the janitor found written outside cogs: index entries naming no proxy,
        #: janitor locks that would never expire, an index of another type (made anew)
        self.invalid_ids = self.forged_locks = self.replaced_index = 0
        self._last_janitor = time.monotonic()
        #: called with the monotonic time a successful beat was sent (leases start there)
        self.on_beat: Callable[[float], None] | None = None
        #: this process's run token: the heartbeat entry is this process's while it carries it
        self.run = secrets.token_hex(8)
        #: another process took this proxy id over: no beat is stored any more
        self.superseded = False
        self.on_superseded: Callable[[], None] | None = None

    def _node(self, key_tag: str) -> Any:
        topo = self.coord.topology
        assert topo is not None
        return self.coord.node_client(topo.node_of(slot(key_tag)))

    async def beat(self, *, take: bool = False) -> None:
        """Store the heartbeat entry; ``take``: at start, over whatever process had the id."""
        if self.superseded:
            return
        sent = time.monotonic()
        now = time.time()
        info = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "time": now, "run": self.run,
                **self.info()}  # fmt: skip
        ttl = int(self.ttl * 1000)
        key = self.ns.proxy_key(self.id)
        stored = await self._node(self.id).fcall(
            self.ns.fn_beat, 1, key, self.run, "take" if take else "renew", json.dumps(info), ttl
        )
        if not int(stored):
            self._superseded()
            return
        if self.on_beat is not None:
            self.on_beat(sent)
        now_ms = int(now * 1000)
        index = self.ns.proxy_index
        node = self._node(index)
        try:
            await self._list(node, now_ms)
        except rexc.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            # the index is ours alone (registry metadata, no state): a key of another type
            # in its place was written outside cogs, and every proxy lists itself anew
            await node.delete(index)
            self.replaced_index += 1
            log.warning("proxy %s: %s was not a sorted set (written outside cogs?): made anew", self.id, index,
                        extra=fields(proxy=self.id))  # fmt: skip
            await self._list(node, now_ms)

    async def _list(self, node: Any, now_ms: int) -> None:
        index = self.ns.proxy_index
        async with node.pipeline(transaction=False) as pipe:  # a day of history
            pipe.zadd(index, {self.id: now_ms})
            pipe.zremrangebyscore(index, "-inf", now_ms - 86_400_000)
            await pipe.execute()

    def _superseded(self) -> None:
        self.superseded = True
        log.error(
            "proxy %s: another process took this proxy id over (its heartbeat carries another run token): this "
            "one stops beating and drops its replicas; close it", self.id, extra=fields(proxy=self.id),
        )  # fmt: skip
        if self.on_superseded is not None:
            self.on_superseded()

    async def tick(self) -> None:
        """One heartbeat, and now and then the janitor."""
        if self.superseded:
            return
        try:
            await self.beat()
        except (CogsError, *CALL_ERRORS) as e:
            log.warning("proxy %s heartbeat failed: %s", self.id, e, extra=fields(proxy=self.id))
            with contextlib.suppress(CogsError):
                await self.coord.refresh()
            return
        if time.monotonic() - self._last_janitor > JANITOR_EVERY_S:
            self._last_janitor = time.monotonic()
            try:
                await self.janitor()
            except (CogsError, *CALL_ERRORS) as e:
                log.warning(
                    "proxy %s: cleaning up after dead proxies failed: %s", self.id, e, extra=fields(proxy=self.id)
                )

    async def release(self, proxy_id: str) -> int:
        """Drop every replica holder entry of ``proxy_id`` on every node; every process
        with that id but this one drops its replica cache (DROP_ALL)."""
        topo = self.coord.topology
        assert topo is not None
        n = 0
        for i, node in enumerate(topo.nodes):
            try:
                n += int(
                    await self.coord.node_client(i).fcall(
                        self.ns.fn_release, 0, self.ns.alert_stream(node.first_slot), proxy_id, self.run
                    )
                )
            except CALL_ERRORS as e:
                raise from_redis(e, node.addr) from e
        return n

    async def janitor(self) -> None:
        """Release the holder entries of listed proxies whose heartbeat is gone.

        The oldest JANITOR_BATCH entries silent for DEAD_AFTER_S go from the index each
        run: those of dead proxies once released, those with a heartbeat (a proxy whose
        index node was away: it lists itself again at its next beat), and those that
        name no proxy (written outside cogs: counted), so no entry blocks the next."""
        ns = self.ns
        index = self._node(ns.proxy_index)
        if not await self._lock(index):
            return  # another proxy did it this minute
        cutoff = int((time.time() - DEAD_AFTER_S) * 1000)
        listed = await index.zrangebyscore(ns.proxy_index, "-inf", cutoff, start=0, num=JANITOR_BATCH, withscores=True)
        for raw, score in listed:
            pid = valid_proxy_id(raw)
            if pid == self.id:
                continue
            if pid is None:
                self.invalid_ids += 1
            # a process that took the id over meanwhile beats (key and score) before it holds anything
            elif await index.zscore(ns.proxy_index, pid) != score:
                continue
            elif not await self._node(pid).exists(ns.proxy_key(pid)):
                self.released_dead += await self.release(pid)
            if await index.zscore(ns.proxy_index, raw) == score:  # else listed anew meanwhile: it stays
                await index.zrem(ns.proxy_index, raw)

    async def _lock(self, index: Any) -> bool:
        """Take the janitor's turn of this minute (False: another proxy has it). A lock
        without an expiry, or a longer one, is no janitor's: it is taken over."""
        ms = int(JANITOR_EVERY_S * 900)
        if await index.set(self.ns.janitor_lock, self.id, nx=True, px=ms):
            return True
        left = await index.pttl(self.ns.janitor_lock)
        if 0 <= left <= ms or left == -2:  # a janitor's (or gone meanwhile: next minute)
            return False
        self.forged_locks += 1
        await index.set(self.ns.janitor_lock, self.id, px=ms)
        return True

    async def unregister(self, streams: list[str], session: str) -> None:
        """A clean close: heartbeat, index entry, exactly-once records, holder entries;
        the first three only while the heartbeat entry is this process's (or gone)."""
        try:
            key = self.ns.proxy_key(self.id)
            mine = int(await self._node(self.id).fcall(self.ns.fn_beat, 1, key, self.run, "drop"))
            if mine == 1:
                await self._node(self.ns.proxy_index).zrem(self.ns.proxy_index, self.id)
            if mine != 0:  # (0: another process has this id now: its holder entries are its own)
                await self.release(self.id)
            for stream in streams:
                await self._node(stream_tag(stream)).delete(self.ns.once_key(stream, session))
        except (CogsError, *CALL_ERRORS) as e:
            log.warning("proxy %s could not unregister: %s", self.id, e, extra=fields(proxy=self.id))
