"""A reader of an indirect value takes no answer older than it already knows of
(issue 15, attack pass).

The locator (state reference table) names the key's current version, and a discard
that comes while the read is under way names a newer one. An owner's answer below
either is stale: the reader neither returns nor caches it (it tries again, then
fails with a clear PeerError). Before the fix it returned the owner's answer
whatever its version, and cached it.

The coordinator's version is bumped by hand here (what an announce the owner's value
does not carry looks like: a lost reply, a failover); the discard is published by
hand while the owner is still loading the value it will answer with.
"""

from __future__ import annotations

import json
import time

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.errors import PeerError
from cogs.keys import DEFAULT, escape
from cogs.proxy import MISS, StateProxy

pytestmark = pytest.mark.anyio
SECRET = "s" * 16


def _client(lc: LocalCluster) -> redis.RedisCluster:
    return redis.RedisCluster(host="127.0.0.1", port=lc.port)


async def test_an_answer_older_than_the_locator_names_is_refused(cluster: LocalCluster) -> None:
    async with (
        StateProxy(cluster.url, peer_secret=SECRET) as owner,
        StateProxy(cluster.url, peer_secret=SECRET) as honest,
        StateProxy(cluster.url, peer_secret=SECRET) as r,
    ):
        await owner.syn_up("objects", "ver-loc", "create", b"v1")
        assert await honest.syn_retrieve("objects", "ver-loc") == b"v1"  # an honest owner: taken, cached
        assert honest.cached("objects", "ver-loc") == b"v1"
        with _client(cluster) as c:  # the coordinator now names a newer version than the owner holds
            c.set(DEFAULT.state_key("objects", escape("ver-loc")) + ":v", str(int(time.time() * 1e6) + 10**9))
        with anyio.fail_after(10), pytest.raises(PeerError, match="older than version"):
            await r.syn_retrieve("objects", "ver-loc")  # (was: b"v1", and cached)
        assert r.cached("objects", "ver-loc") is MISS


async def test_an_answer_older_than_a_discard_seen_meanwhile_is_refused(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url, peer_secret=SECRET) as owner, StateProxy(cluster.url, peer_secret=SECRET) as r:
        loaded = anyio.Event()

        async def slow_load() -> bytes:
            await loaded.wait()
            return b"loaded"

        got: list[object] = []
        async with anyio.create_task_group() as tg:

            async def own() -> None:
                got.append(await owner.syn_retrieve("objects", "ver-disc", load=slow_load))

            async def read() -> None:
                try:
                    got.append(await r.syn_retrieve("objects", "ver-disc"))
                except PeerError as e:
                    got.append(e)

            tg.start_soon(own)
            await anyio.sleep(0.3)  # the owner claimed the key and is loading it
            tg.start_soon(read)
            await anyio.sleep(0.3)  # the reader waits at the owner for the value
            sidx = r.catalog.index("objects")
            with _client(cluster) as c:  # a newer version is announced while the answer is on its way
                c.publish(DEFAULT.discard_channel(r.id), json.dumps([sidx, escape("ver-disc"), str(10**17)]))
            await anyio.sleep(0.3)
            loaded.set()
        assert got[0] == b"loaded"
        assert isinstance(got[1], PeerError), got  # (was: b"loaded", older than the discard it saw)
        assert "older than version" in str(got[1])
        assert r.cached("objects", "ver-disc") is MISS
