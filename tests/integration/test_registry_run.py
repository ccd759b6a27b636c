"""Two processes with one proxy id: the older never undoes the newer (issue 15, attack pass).

A proxy restarted with the same proxy id while the old process still runs (or its
heartbeat key is still there) takes the id over. Before the run token:

* the old process's close deleted the new one's heartbeat key and released the id's
  replica holder entries, which the new process had just registered: the
  coordinator stopped sending it discards and it served a stale replica for good;
* the old process's late heartbeat overwrote the new one's entry (its peer address
  and incarnation): readers took the new owner of an indirect value for dead,
  dropped its locator and lost the value.
"""

from __future__ import annotations

import json

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.keys import DEFAULT
from cogs.proxy import StateProxy
from tests.helpers import eventually

pytestmark = pytest.mark.anyio
SECRET = "s" * 16


def _entry(lc: LocalCluster, pid: str) -> dict[str, object] | None:
    with redis.RedisCluster(host="127.0.0.1", port=lc.port) as r:
        raw = r.get(DEFAULT.proxy_key(pid))
    return json.loads(raw) if raw else None


async def test_an_old_process_closing_leaves_the_new_one_registered(cluster: LocalCluster) -> None:
    pid = "dup-close"
    async with StateProxy(cluster.url) as writer:
        old = StateProxy(cluster.url, proxy_id=pid)
        await old.__aenter__()
        try:
            async with StateProxy(cluster.url, proxy_id=pid) as new:
                new_run = new._registry.run
                await writer.syn_up("nat", "dup-k", "set", 1)
                assert await new.syn_retrieve("nat", "dup-k") == 1  # new holds a replica
                await old.aclose()  # the old process closes late
                entry = _entry(cluster, pid)
                assert entry is not None  # still registered,
                assert entry["run"] == new_run  # as itself
                await writer.syn_up("nat", "dup-k", "set", 2)  # the coordinator must discard new's replica
                with anyio.fail_after(5):
                    while await new.syn_retrieve("nat", "dup-k") != 2:  # (was 1 forever)  # noqa: ASYNC110
                        await anyio.sleep(0.05)
            assert _entry(cluster, pid) is None  # the new one's own close removes it
        finally:
            await old.aclose()


async def test_a_late_heartbeat_of_an_old_process_is_refused(cluster: LocalCluster) -> None:
    pid = "dup-beat"
    async with StateProxy(cluster.url, peer_secret=SECRET) as reader:
        old = StateProxy(cluster.url, proxy_id=pid, peer_secret=SECRET)
        await old.__aenter__()
        try:
            async with StateProxy(cluster.url, proxy_id=pid, peer_secret=SECRET) as new:
                await new.syn_up("objects", "dup-obj", "create", b"new's value")
                await old._registry.tick()  # the old process's late beat
                assert old._registry.superseded  # refused: it knows it was replaced
                entry = _entry(cluster, pid)
                assert entry is not None
                assert entry["run"] == new._registry.run
                assert new._indirect is not None
                assert entry["inc"] == new._indirect.inc
                assert await reader.syn_retrieve("objects", "dup-obj") == b"new's value"  # (was None: lost)
                await old._registry.tick()  # no beat after that
                assert _entry(cluster, pid)["run"] == new._registry.run  # type: ignore[index]
                await eventually(lambda: old.cache.statistics().cached_entries == 0)
        finally:
            await old.aclose()
