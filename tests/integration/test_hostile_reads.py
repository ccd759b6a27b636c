"""What a proxy reads stays within the state's bounds, and a restart with the same
proxy id leaves no old process serving stale replicas (attack pass, findings A and B).

A: anyone with the NF's proxy credentials can SET any of its keys, 300 MB at a
replica-mode state's key say; another proxy's read then took the whole value and kept
it in its replica cache. Now the op fails alone (OVERSIZE naming the bound), nothing
of the value reaches the proxy, and no replica of it is cached or registered.

B: a process started with a proxy id still in use releases the id's holder entries;
the old process (still running) learnt it only at its next heartbeat (up to
heartbeat_ttl_s / 3, 10 s with 30 s), serving stale replicas meanwhile. Now the
release tells every process subscribed with the id at once (DROP_ALL on its discard
channel), whatever the heartbeat period.
"""

from __future__ import annotations

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.errors import Oversize
from cogs.keys import escape, state_key
from cogs.proxy import StateProxy
from cogs.proxy.cache import MISS
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


async def test_an_oversize_stored_value_fails_alone_and_is_never_cached(cluster: LocalCluster) -> None:
    key, mate = "blowup", "blowup-mate"
    rk = state_key("natttl", escape(key))
    with redis.RedisCluster(host="127.0.0.1", port=cluster.port) as r:
        async with StateProxy(cluster.url) as reader, StateProxy(cluster.url) as writer:
            await writer.syn_up("natttl", mate, "set", "fine")
            r.set(rk, b"A" * (2 << 20))  # 2 MiB, the state's max_bytes is 1 MiB: a plain SET
            bad, good = await _both(reader.syn_retrieve("natttl", key), reader.syn_retrieve("natttl", mate))
            assert isinstance(bad, Oversize), bad
            assert "max_bytes 1048576" in str(bad)
            assert "written outside cogs" in str(bad)
            assert len(str(bad)) < 500  # bounded: none of the value is in it
            assert good == "fine"  # its batch-mate is unaffected
            k = (reader.catalog.index("natttl"), key)
            assert reader.cache.peek(k) is MISS  # nothing entered the replica cache,
            assert not r.exists(rk + ":r")  # and nobody is registered as holding it
            with pytest.raises(Oversize):  # a second read fails the same way (no cache hit)
                await reader.syn_retrieve("natttl", key)
            # a value back within bounds is served and cached as any other
            await writer.syn_up("natttl", key, "set", "small")
            assert await reader.syn_retrieve("natttl", key) == "small"
            assert reader.cache.peek(k) == "small"
            r.delete(rk, rk + ":v", rk + ":r")


async def test_an_update_returning_an_oversize_value_fails_alone(cluster: LocalCluster) -> None:
    rk = state_key("nat", escape("digits"))
    with redis.RedisCluster(host="127.0.0.1", port=cluster.port) as r:
        r.set(rk, b"9" * 5000)  # no integer cogs writes is longer than 20 characters
        async with StateProxy(cluster.url) as p:
            with pytest.raises(Oversize, match="no 64-bit integer is longer"):
                await p.syn_up("nat", "digits", "max", 1)
            with pytest.raises(Oversize, match="no 64-bit integer is longer"):
                await p.syn_retrieve("nat", "digits")
            assert r.get(rk) == b"9" * 5000  # refused, not rewritten
        r.delete(rk, rk + ":v", rk + ":r")


async def _both(a: object, b: object) -> tuple[object, object]:
    """Two ops issued together (one batch): each one's result or error."""
    out: list[object] = [None, None]

    async def run(i: int, aw: object) -> None:
        try:
            out[i] = await aw  # type: ignore[misc]
        except Oversize as e:
            out[i] = e

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, a)
        tg.start_soon(run, 1, b)
    return out[0], out[1]


async def test_a_restart_with_the_same_id_drops_the_old_processs_replicas_at_once(cluster: LocalCluster) -> None:
    key, pid = "restart-stale", "mb-restart"
    # a heartbeat every 10 s: the old process must not wait for it to learn it was superseded
    async with StateProxy(cluster.url, proxy_id=pid, heartbeat_ttl_s=30.0) as old, StateProxy(cluster.url) as w:
        await w.syn_up("natttl", key, "set", "v0")
        assert await old.syn_retrieve("natttl", key) == "v0"
        k = (old.catalog.index("natttl"), key)
        assert old.cache.peek(k) == "v0"  # the old process holds a replica
        async with StateProxy(cluster.url, proxy_id=pid, heartbeat_ttl_s=30.0):  # the restart
            await eventually(lambda: old.statistics().cache_releases > 0)
            assert old.cache.peek(k) is MISS  # dropped on the release itself,
            assert not old._registry.superseded  # not by a heartbeat (the next is seconds away)
            await w.syn_up("natttl", key, "set", "v1")  # acknowledged: no holder is left to discard
            assert await old.syn_retrieve("natttl", key) == "v1"  # its first read after it is fresh
