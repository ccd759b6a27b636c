"""The discard link: the proxy's subscription to ``cogs:discard:<proxy id>``.

Discards are published with classic PUBLISH, which a Redis Cluster forwards to every
node, so one subscription on any node hears the discards of all keys; after a node
failure the link moves to another node. Pub/sub is fire-and-forget: while the link is
down (or silent past a ping), every replica is dropped and caching stays off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as rexc

from cogs.coordinator.client import Coordinator
from cogs.errors import CoordinatorUnavailable
from cogs.keys import discard_channel, unescape
from cogs.proxy.cache import ReplicaCache

log = logging.getLogger("cogs.proxy")
DiscardHook = Callable[[int, str, int], None]
PING_EVERY = 1.0
DEAD_AFTER = 3.0


class DiscardLink:
    def __init__(self, coord: Coordinator, proxy_id: str, cache: ReplicaCache) -> None:
        self.coord = coord
        self.channel = discard_channel(proxy_id)
        self.cache = cache
        self.hooks: list[DiscardHook] = []
        self.node = ""
        self.resubscribed = 0

    def _handle(self, data: bytes) -> None:
        flat = json.loads(data)
        for i in range(0, len(flat), 3):
            sidx, key, version = int(flat[i]), unescape(flat[i + 1]), int(flat[i + 2])
            self.cache.discard((sidx, key), version)
            for hook in self.hooks:
                hook(sidx, key, version)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        attempt = 0
        while True:
            topo = self.coord.topology
            assert topo is not None
            i = attempt % len(topo.nodes)
            attempt += 1
            pubsub = self.coord.node_client(i).pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while (m := await pubsub.get_message(timeout=2.0)) is None or m["type"] != "subscribe":
                    if m is None:
                        raise CoordinatorUnavailable("no subscribe confirmation")
                self.cache.enabled = True
                self.node = topo.nodes[i].addr
                if not started:
                    started = True
                    task_status.started()
                else:
                    self.resubscribed += 1
                    log.warning("discard link back on %s; replica caching resumes", self.node)
                await self._listen(pubsub)
            except (rexc.ConnectionError, rexc.TimeoutError, OSError, CoordinatorUnavailable) as e:
                was = self.cache.enabled
                self.cache.enabled = False
                self.cache.drop_all()
                if was:
                    log.warning("discard link to %s lost (%s): replicas dropped", self.node, e)
                if not started and attempt >= 3 * len(topo.nodes):
                    raise CoordinatorUnavailable(f"cannot subscribe to {self.channel} on any node: {e}") from e
                await anyio.sleep(min(0.05 * attempt, 1.0))
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.coord.refresh()
            finally:
                self.cache.enabled = False
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()

    async def _listen(self, pubsub: object) -> None:
        last = time.monotonic()
        pinged = False
        while True:
            m = await pubsub.get_message(timeout=PING_EVERY)  # type: ignore[attr-defined]
            now = time.monotonic()
            if m is not None:
                last, pinged = now, False
                if m["type"] == "message":
                    self._handle(m["data"])
                continue
            if now - last > DEAD_AFTER:
                raise CoordinatorUnavailable(f"discard link to {self.node} silent for {now - last:.1f}s")
            if not pinged:
                await pubsub.ping()  # type: ignore[attr-defined]
                pinged = True
