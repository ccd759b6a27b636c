"""Garbage on a proxy's discard channel (``cogs:discard:<proxy id>``), which anyone
holding the NF's proxy credentials may PUBLISH on, on a real cluster.

The link survives, the message is counted and skipped, and as it may have been a real
discard, garbled, every replica is dropped; a forged version, however high, hides no
later real discard.
"""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from cogs.cluster import LocalCluster
from cogs.keys import discard_channel, escape
from cogs.proxy import MISS, StateProxy
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

GARBAGE = {
    "not JSON": b"not json",
    "not UTF-8": b"\xff\xfe",
    "an object": b'{"a": 1}',
    "wrong arity": b'[1, "k"]',
    "a number beyond doubles": b'[1e400, "k", "1"]',
    "a state index beyond reason": b'[99999999999999999999999, "k", "1"]',
    "a version that is no number": b'[1, "k", "abc"]',
    "a fractional version": b'[1, "k", 1.5]',
    "a negative version": b'[1, "k", "-1"]',
    "a version of 5000 digits": b'[1, "k", "' + b"9" * 5000 + b'"]',
    "no key": b'[1, null, "1"]',
    "nested beyond reason": b"[" * 100_000 + b"]" * 100_000,
    "10 MB": b'[1, "' + b"x" * 10_000_000 + b'", "1"]x',
}


async def _cached(reader: StateProxy, key: str, value: int) -> None:
    """``reader`` holds a replica of nat[key] = value."""
    assert await reader.syn_retrieve("nat", key) == value
    await eventually(lambda: reader.cached("nat", key) == value)  # the reply is cached as it comes


async def test_garbage_on_the_discard_channel_is_skipped_and_drops_replicas(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: json.loads (or int(), or the indexing) raised out of the listener, the
    task group ended the discard link for good without dropping the replicas, and the
    proxy served its cached value after every later update: a stale read forever."""
    caplog.set_level(logging.WARNING, logger="cogs.proxy")
    async with (
        aioredis.RedisCluster(host="127.0.0.1", port=cluster.port) as r,
        StateProxy(cluster.url) as writer,
        StateProxy(cluster.url) as reader,
    ):
        await writer.syn_up("nat", "hd1", "set", 1)
        assert reader.coord.topology is not None
        copies = len(reader.coord.topology.nodes)  # the link listens on every primary
        for n, (what, data) in enumerate(GARBAGE.items()):
            await _cached(reader, "hd1", 1)
            await r.publish(discard_channel(reader.id), data)
            await eventually(lambda n=n: reader.statistics().bad_discards == (n + 1) * copies)  # type: ignore[misc]
            assert reader.cached("nat", "hd1") is MISS, what  # dropped: it may have been a real discard
        await _cached(reader, "hd1", 1)
        await writer.syn_up("nat", "hd1", "set", 2)  # the link still works: a real discard arrives
        await eventually(lambda: reader.cached("nat", "hd1") is MISS)
        assert await reader.syn_retrieve("nat", "hd1") == 2
        stats = reader.statistics()
    assert stats.bad_discards == len(GARBAGE) * copies
    lines = [rec.getMessage() for rec in caplog.records if "not a discard" in rec.getMessage()]
    assert 0 < len(lines) <= 10  # the first ten, then one in a thousand
    assert max(len(line) for line in lines) < 300  # the 10 MB message quoted bounded


async def test_a_forged_high_version_hides_no_later_discard(cluster: LocalCluster) -> None:
    """Before: the version of a forged discard was taken as the newest handled for its
    key, so every real discard of the key (with a lower version) was skipped as a
    repeat: the reader served its replica after each later update."""
    async with (
        aioredis.RedisCluster(host="127.0.0.1", port=cluster.port) as r,
        StateProxy(cluster.url) as writer,
        StateProxy(cluster.url) as reader,
    ):
        sidx = reader.catalog.index("nat")
        await writer.syn_up("nat", "hd2", "set", 1)
        await _cached(reader, "hd2", 1)
        forged = f'[{sidx}, "{escape("hd2")}", "9223372036854775806"]'
        await r.publish(discard_channel(reader.id), forged)
        await eventually(lambda: reader.cached("nat", "hd2") is MISS)  # a well-formed discard drops it
        for v in (2, 3):
            await _cached(reader, "hd2", v - 1)
            await writer.syn_up("nat", "hd2", "set", v)
            await eventually(lambda: reader.cached("nat", "hd2") is MISS)
            assert await reader.syn_retrieve("nat", "hd2") == v
        assert reader.statistics().bad_discards == 0
