"""The discard link: the proxy's subscriptions to ``cogs:discard:<proxy id>``.

Discards are published with classic PUBLISH on the node owning the key. A Redis
Cluster delivers such a message to that node's subscribers at once and forwards it
over the cluster bus to every other node. The proxy subscribes on every primary:
the copy from the key's own node arrives without a bus hop (the bus batches small
messages: a burst of discards for several holders could otherwise wait for a
delayed ACK, ~40 ms), and the other copies are harmless repeats (a discard is
idempotent). Pub/sub is fire-and-forget: when any subscription drops, goes silent
past a ping, or the set of primaries changes, every replica is dropped and caching
stays off until all subscriptions hold again.

A node that drops every holder entry of the proxy id (cogs_release: a process
starting with the same id, a clean close, the janitor) publishes ``DROP_ALL`` on the
channel: every process subscribed with the id drops its whole cache, since updates
after that send it no discard; the releasing process itself (``DROP_ALL:<its run
token>``) does not: at its start it held nothing yet, at its close nothing matters.
It comes before any PONG that would vouch for a read after the release, so even a
process superseded by a restart with its id serves no replica past the bound below,
whatever its heartbeat period.

Freshness is proven, not assumed: every PING_EVERY s each subscription connection
carries a PING whose payload is its send time. Redis answers it in order with the
messages, so its PONG proves that every discard the node published before the ping
arrived has been handled; the cache is then vouched for until that send time plus
DEAD_AFTER (``ReplicaCache.fresh_until``, the minimum over the primaries). Should the
event loop stall, nothing has to run for replicas to stop being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from cogs.coordinator.client import Coordinator
from cogs.errors import NETWORK_ERRORS, CoordinatorUnavailable, show
from cogs.keys import unescape
from cogs.logs import fields
from cogs.protocol import DROP_ALL
from cogs.proxy.cache import ReplicaCache

log = logging.getLogger("cogs.proxy")
DiscardHook = Callable[[int, str, int], None]
PING_EVERY = 1.0
DEAD_AFTER = 3.0
SEEN_MAX = 200_000
#: a discard message larger than this is none (a batch of 2000 ops makes ~1 MB at most)
MAX_DISCARD_BYTES = 64 << 20
_LINK_ERRORS = (*NETWORK_ERRORS, CoordinatorUnavailable)
_DROP_ALL = DROP_ALL.encode()


class NotADiscard(ValueError):
    """A message on a discard channel that is not a discard (says why, bounded)."""


def parse_discards(data: bytes | str) -> list[tuple[tuple[int, str], int]]:
    """The discards of one message, ``[state index, escaped key, "version", ...]`` as
    lua/replica.lua publishes them: ((state index, key), version) each. Anything else
    raises :class:`NotADiscard`."""
    if len(data) > MAX_DISCARD_BYTES:
        raise NotADiscard(f"{len(data)} bytes, over {MAX_DISCARD_BYTES}")
    try:
        flat = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested beyond reason
        raise NotADiscard(f"not JSON: {show(data)}") from None
    if not isinstance(flat, list) or len(flat) % 3:
        raise NotADiscard(f"not a flat array of (state, key, version) triples: {show(data)}")
    out = []
    for i in range(0, len(flat), 3):
        sidx, key, version = flat[i : i + 3]
        if type(sidx) is not int or not 0 < sidx < 1 << 16 or type(key) is not str or not key:
            raise NotADiscard(f"entry {i // 3}: no state index and key: {show(data)}")
        if type(version) is str and 0 < len(version) <= 19 and version.isdigit() and version.isascii():
            version = int(version)
        if type(version) is not int or not 0 <= version < 1 << 63:
            raise NotADiscard(f"entry {i // 3}: version {show(str(version))} is not a 64-bit count")
        out.append(((sidx, unescape(key)), version))
    return out


class DiscardLink:
    def __init__(self, coord: Coordinator, proxy_id: str, cache: ReplicaCache) -> None:
        self.coord = coord
        self.channel = coord.ns.discard_channel(proxy_id)
        self.proxy_id = proxy_id
        self.cache = cache
        #: this process's run token (the registry's): a DROP_ALL naming it is its own release
        self.own_run = b""
        self.hooks: list[DiscardHook] = []
        self.nodes: tuple[str, ...] = ()
        self.resubscribed = 0
        self._proven: list[float] = []  # per primary: send time of the newest ping answered
        self._unanswered: list[int] = []  # per primary: pings sent since
        self._seen: dict[tuple[int, str], int] = {}  # newest version handled per key

    def _handle(self, data: bytes) -> None:
        """One message of the discard channel. Anyone holding the NF's proxy credentials
        can publish there: a message that is not a discard is counted and skipped, and
        since it may have been a real one (garbled), every replica is dropped."""
        if data == _DROP_ALL or data[: len(_DROP_ALL) + 1] == _DROP_ALL + b":":
            # this id's holder entries were dropped on a node (a process starting with
            # this id, say, while this one still runs): no update will tell us any more.
            # Our own release (at our start: we held nothing yet) names our run.
            if data[len(_DROP_ALL) + 1 :] != self.own_run:
                self.cache.drop_all()
                self.cache.released += 1
            return
        try:
            discards = parse_discards(data)
        except NotADiscard as e:
            self.cache.drop_all()
            self.cache.bad_discards += 1
            n = self.cache.bad_discards
            if n <= 10 or n % 1000 == 0:  # one publisher must not flood the log
                why = f"skipped a message that is not a discard ({e}); replicas dropped ({n} so far)"
                log.warning("proxy %s: %s", self.proxy_id, why, extra=fields(proxy=self.proxy_id, count=n))
            return
        seen = self._seen
        for k, version in discards:
            # the copy of a discard already handled (one arrives per primary); only an
            # exact repeat is skipped: a forged version, however high, hides no real one
            if seen.get(k) == version:
                continue
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen[k] = version
            self.cache.discard(k, version)
            for hook in self.hooks:
                hook(k[0], k[1], version)

    async def run(self, ready: asyncio.Event) -> None:
        """Listen until cancelled; ``ready`` is set once the first subscriptions hold."""
        failures = 0
        while True:
            topo = self.coord.topology
            assert topo is not None
            pubsubs: list[Any] = []
            try:
                # a confirmed SUBSCRIBE proves like a PONG: from its send time on, nothing is missed
                self._proven, self._unanswered = [], [0] * len(topo.nodes)
                for i in range(len(topo.nodes)):
                    ps = self.coord.node_client(i).pubsub()
                    pubsubs.append(ps)
                    self._proven.append(time.monotonic())
                    with anyio.fail_after(DEAD_AFTER):  # a frozen node: try again, never hang here
                        await ps.subscribe(self.channel)
                        while (m := await ps.get_message(timeout=2.0)) is None or m["type"] != "subscribe":
                            if m is None:
                                raise CoordinatorUnavailable(f"no subscribe confirmation from {topo.nodes[i].addr}")
                self.nodes = tuple(n.addr for n in topo.nodes)
                self.cache.enable(fresh_until=min(self._proven) + DEAD_AFTER)
                if ready.is_set():
                    self.resubscribed += 1
                    log.warning("discard link back on %s; replica caching resumes", ", ".join(self.nodes),
                                extra=fields(proxy=self.proxy_id))  # fmt: skip
                ready.set()
                failures = 0
                async with anyio.create_task_group() as tg:
                    for i, ps in enumerate(pubsubs):
                        tg.start_soon(self._listen, ps, i)
            except* _LINK_ERRORS as eg:
                failures += 1
                self._lost(eg.exceptions[0])
                if not ready.is_set() and failures >= 3:
                    raise CoordinatorUnavailable(f"cannot subscribe to {self.channel}: {eg.exceptions[0]}") from eg
                await anyio.sleep(min(0.05 * failures, 1.0))
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.coord.refresh()
            finally:
                self.cache.enabled = False
                with anyio.CancelScope(shield=True):
                    for ps in pubsubs:
                        await ps.aclose()

    def _lost(self, cause: BaseException) -> None:
        was = self.cache.enabled
        self.cache.enabled = False
        self.cache.fresh_until = 0.0
        self.cache.drop_all()
        if was:
            self.cache.links_lost += 1
            log.warning("discard link lost (%s): replicas dropped", cause, extra=fields(proxy=self.proxy_id))

    async def _listen(self, pubsub: Any, i: int) -> None:
        """Handle discards from primary ``i``; ping it every PING_EVERY s on this very
        connection, whatever else arrives (a PONG is the only proof of freshness)."""
        addr = self.nodes[i]
        next_ping = 0.0
        self._unanswered[i] = 0
        while True:
            now = time.monotonic()
            if now >= next_ping:
                topo = self.coord.topology
                if topo is not None and tuple(n.addr for n in topo.nodes) != self.nodes:
                    raise CoordinatorUnavailable("the set of primaries changed: subscribing anew")
                with anyio.fail_after(PING_EVERY):  # never hang the link on a full socket
                    await pubsub.ping(repr(now))
                self._unanswered[i] += 1
                next_ping = now + PING_EVERY
            m = await pubsub.get_message(timeout=next_ping - now)
            if m is None:
                # silent: pings sent a second apart unanswered (so never merely because
                # the loop stalled: the first read after a stall may time out at once)
                silent = time.monotonic() - self._proven[i]
                if silent > DEAD_AFTER and self._unanswered[i] >= DEAD_AFTER / PING_EVERY:
                    raise CoordinatorUnavailable(f"discard link to {addr} silent for {silent:.1f}s")
            elif m["type"] == "message":
                self._handle(m["data"])
            elif m["type"] == "pong":
                self._pong(i, m["data"])

    def _pong(self, i: int, data: bytes | str) -> None:
        try:
            sent = float(data)
        except ValueError:
            return  # not one of ours (a bare PING, a client's health check)
        if self._proven[i] < sent <= time.monotonic():
            self._unanswered[i] = 0
            self._proven[i] = sent
            self.cache.fresh_until = min(self._proven) + DEAD_AFTER
