"""A proxy killed mid-batch: its heartbeat expires, its replica entries go with the
next update, and the other proxies carry on without waiting for it."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.keys import escape, proxy_key, slot, state_key
from cogs.proxy import StateProxy

KEYS = [f"pf{i}" for i in range(12)]


async def _victim(url: str, q: Any) -> None:
    async with StateProxy(url, heartbeat_ttl_s=1.5) as p:
        for k in KEYS:
            await p.syn_retrieve("nat", k)  # holds a replica of each: in every replica table
        q.put(p.id)
        while True:  # busy mid-batch when the kill comes
            for i in range(500):
                p.update("cnt", f"pf-busy{i % 40}", "add", 1)
            await anyio.sleep(0.001)


def _proc(url: str, q: Any) -> None:
    anyio.run(_victim, url, q)


def _node_port(cluster: LocalCluster, tag: str) -> int:
    with redis.Redis(port=cluster.port) as r:
        for start, end, node, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot(tag) <= int(end):
                return int(node[1])
    raise AssertionError(tag)


@pytest.mark.slow
def test_killed_proxy_is_cleaned_up_and_nobody_hangs(cluster: LocalCluster) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    victim = ctx.Process(target=_proc, args=(cluster.url, q))
    victim.start()
    vid = q.get(timeout=60)
    time.sleep(0.3)
    for k in KEYS:
        with redis.Redis(port=_node_port(cluster, escape(k))) as r:
            assert vid.encode() in r.smembers(state_key("nat", escape(k)) + ":r")
    os.kill(victim.pid or 0, signal.SIGKILL)
    victim.join(10)
    killed = time.monotonic()

    async def survivor() -> float:
        async with StateProxy(cluster.url) as p:
            t0 = time.monotonic()
            with anyio.fail_after(10):  # discards to the dead proxy must not hold anyone up
                for k in KEYS:
                    await p.syn_up("nat", k, "add", 1)
                for i in range(2000):
                    p.update("cnt", f"pf-after{i % 10}", "add", 1)
                await p.flush()
            assert p.statistics().errors == 0
            return time.monotonic() - t0

    took = anyio.run(survivor)
    assert took < 5
    for k in KEYS:  # the update took the dead holder (and every holder) off the table
        with redis.Redis(port=_node_port(cluster, escape(k))) as r:
            assert r.exists(state_key("nat", escape(k)) + ":r") == 0
    hb_port = _node_port(cluster, vid)
    while time.monotonic() - killed < 5:
        with redis.Redis(port=hb_port) as r:
            if not r.exists(proxy_key(vid)):
                break
        time.sleep(0.1)
    with redis.Redis(port=hb_port) as r:
        assert not r.exists(proxy_key(vid)), "the dead proxy's heartbeat must expire"
