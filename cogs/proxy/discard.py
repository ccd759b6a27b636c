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
from cogs.errors import NETWORK_ERRORS, CoordinatorUnavailable
from cogs.keys import unescape
from cogs.logs import fields
from cogs.proxy.cache import ReplicaCache

log = logging.getLogger("cogs.proxy")
DiscardHook = Callable[[int, str, int], None]
PING_EVERY = 1.0
DEAD_AFTER = 3.0
SEEN_MAX = 200_000
_LINK_ERRORS = (*NETWORK_ERRORS, CoordinatorUnavailable)


class DiscardLink:
    def __init__(self, coord: Coordinator, proxy_id: str, cache: ReplicaCache) -> None:
        self.coord = coord
        self.channel = coord.ns.discard_channel(proxy_id)
        self.proxy_id = proxy_id
        self.cache = cache
        self.hooks: list[DiscardHook] = []
        self.nodes: tuple[str, ...] = ()
        self.resubscribed = 0
        self._seen: dict[tuple[int, str], int] = {}  # newest version handled per key

    def _handle(self, data: bytes) -> None:
        flat = json.loads(data)
        seen = self._seen
        for i in range(0, len(flat), 3):
            k, version = (int(flat[i]), unescape(flat[i + 1])), int(flat[i + 2])
            if seen.get(k, 0) >= version:
                continue  # the copy of a discard already handled (one arrives per primary)
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
                for i in range(len(topo.nodes)):
                    ps = self.coord.node_client(i).pubsub()
                    pubsubs.append(ps)
                    await ps.subscribe(self.channel)
                    while (m := await ps.get_message(timeout=2.0)) is None or m["type"] != "subscribe":
                        if m is None:
                            raise CoordinatorUnavailable(f"no subscribe confirmation from {topo.nodes[i].addr}")
                self.nodes = tuple(n.addr for n in topo.nodes)
                self.cache.enabled = True
                if ready.is_set():
                    self.resubscribed += 1
                    log.warning("discard link back on %s; replica caching resumes", ", ".join(self.nodes),
                                extra=fields(proxy=self.proxy_id))  # fmt: skip
                ready.set()
                failures = 0
                async with anyio.create_task_group() as tg:
                    for ps, addr in zip(pubsubs, self.nodes, strict=True):
                        tg.start_soon(self._listen, ps, addr)
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
        self.cache.drop_all()
        if was:
            log.warning("discard link lost (%s): replicas dropped", cause, extra=fields(proxy=self.proxy_id))

    async def _listen(self, pubsub: Any, addr: str) -> None:
        last = time.monotonic()
        pinged = False
        while True:
            m = await pubsub.get_message(timeout=PING_EVERY)
            now = time.monotonic()
            if m is not None:
                last, pinged = now, False
                if m["type"] == "message":
                    self._handle(m["data"])
                continue
            topo = self.coord.topology
            if topo is not None and tuple(n.addr for n in topo.nodes) != self.nodes:
                raise CoordinatorUnavailable("the set of primaries changed: subscribing anew")
            if now - last > DEAD_AFTER:
                raise CoordinatorUnavailable(f"discard link to {addr} silent for {now - last:.1f}s")
            if not pinged:
                await pubsub.ping()
                pinged = True
