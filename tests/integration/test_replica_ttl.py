"""A replica never outlives the coordinator's record of its holder (issue 15, attack pass).

A replica-mode state with a ttl: the replica reference table entry (``<rk>:r``)
expires with the state, and an update after that finds no holder to discard. The
cached replica must be gone by then:

* a read of an absent key cached "absent" for good (PTTL -2: no expiry) while its
  holder record expired after the ttl: once someone created the key, the proxy kept
  reading None;
* the proxy counted a replica's lifetime from when it handled the reply, the
  coordinator from when it ran the read: a reply handled late (a busy event loop)
  left a replica alive past its holder record.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.proxy import StateProxy

pytestmark = pytest.mark.anyio


async def test_an_absent_key_is_not_cached_past_its_holder_record(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as p, StateProxy(cluster.url) as w:
        assert await p.syn_retrieve("brief", "ttl-absent") is None  # cached: absent
        await anyio.sleep(1.3)  # the holder record (ttl 1 s) expired
        await w.syn_up("brief", "ttl-absent", "set", "created")  # no holder left to discard
        assert await p.syn_retrieve("brief", "ttl-absent") == "created"  # (was None for good)


async def test_a_reply_handled_late_is_cached_no_longer_than_its_holder_record(cluster: LocalCluster) -> None:
    async with StateProxy(cluster.url) as p, StateProxy(cluster.url) as w:
        await w.syn_up("brief", "ttl-late", "set", "old")
        t0 = time.monotonic()
        read = asyncio.ensure_future(p.syn_retrieve("brief", "ttl-late"))
        await asyncio.sleep(0)  # sent
        time.sleep(0.6)  # the event loop is busy while the reply arrives  # noqa: ASYNC251
        assert await read == "old"  # cached now, with the PTTL the coordinator gave 0.6 s ago
        await anyio.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))  # the holder record expired
        await w.syn_up("brief", "ttl-late", "set", "new")  # no holder: no discard
        assert time.monotonic() - t0 < 1.55  # (a slow box would not prove anything below)
        assert await p.syn_retrieve("brief", "ttl-late") == "new"  # (was "old" until 1.6 s)
