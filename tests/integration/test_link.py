"""The pipelined node link (cogs/proxy/link.py) against a real node that stops answering."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import redis
from redis.asyncio.connection import Connection

from cogs.cluster import LocalCluster
from cogs.errors import CoordinatorUnavailable
from cogs.proxy.link import NodeLink


def test_a_silent_node_fails_calls_at_their_deadline_and_the_link_recovers(cluster: LocalCluster) -> None:
    port = cluster.ports[0]

    async def go() -> None:
        link = NodeLink(f"127.0.0.1:{port}", Connection, {"host": "127.0.0.1", "port": port})
        try:
            await exercise(link)
        finally:
            await link.aclose()

    async def exercise(link: NodeLink) -> None:
        assert await link.call("PING") == b"PONG"
        with redis.Redis(port=port) as admin:
            admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # the node answers nobody for 1.5 s
        t0 = anyio.current_time()
        with pytest.raises(CoordinatorUnavailable, match=r"no reply in 0.3s"):
            await link.call("PING", timeout=0.3)
        assert anyio.current_time() - t0 < 1.2  # at the deadline, not when the node wakes
        # a caller that gives up (cancelled) does not shift the replies of later calls
        with anyio.move_on_after(0.05):
            await link.call("ECHO", "given up", timeout=5)
        got = await asyncio.gather(*(link.call("ECHO", f"m{i}", timeout=5) for i in range(5)))
        assert got == [f"m{i}".encode() for i in range(5)]  # after the pause, each its own reply
        assert link.inflight == 0

    anyio.run(go)
