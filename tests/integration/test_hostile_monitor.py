"""What the monitor and the exporter read, written outside cogs, on a real cluster.

``cogs monitor --once --json`` must answer with everything it can show: a replica
reference table of another type, junk in ``cogs:nfs``, tens of thousands of index
entries. What cannot be read is counted, never the monitor's end, and never a healthy
node shown as down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.keys import NF_INDEX, PROXY_INDEX, escape, state_key
from cogs.monitor.collect import MAX_PROXIES


@pytest.fixture
def r(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        yield client
    finally:
        client.close()


def _once(url: str) -> dict[str, Any]:
    out = CliRunner().invoke(main, ["monitor", "--once", "--json", "--url", url])
    assert out.exit_code == 0, out.output
    snap: dict[str, Any] = json.loads(out.stdout)
    return snap


def test_a_holder_set_of_another_type_shows_no_node_down(cluster: LocalCluster, r: redis.RedisCluster) -> None:
    """Before: the holders of each replica reference table entry are counted with one
    pipelined SCARD; a ``<state>:{key}:r`` SET to a string failed the pipeline, and the
    node serving it was shown (and exported) as down at every refresh."""
    bad = state_key("nat", escape("hm1")) + ":r"
    r.set(bad, "not a set")
    try:
        snap = _once(cluster.url)
        assert snap["problem"] == ""
        assert [(n["addr"], n["problem"]) for n in snap["nodes"] if n["role"] == "down"] == []
        assert len(snap["nodes"]) == 3
    finally:
        r.delete(bad)


def test_junk_in_the_nf_index_is_left_out(cluster: LocalCluster, r: redis.RedisCluster) -> None:
    """``cogs!nfs`` (written by ``cogs catalog load --nf``; junk only an admin can write
    now, but the monitor survives it all the same). Before: a member that is not UTF-8 ended the monitor with a
    traceback (exit 1); one that is no NF name ("Bad Name") blanked every panel with
    'bad NF name'."""
    r.sadd(NF_INDEX, b"\xff\xfe", "Bad Name", "x" * 5000)
    try:
        snap = _once(cluster.url)
        assert snap["problem"] == ""
        assert [n["nf"] for n in snap["nfs"]] == ["default"]
        assert len(snap["nodes"]) == 3
    finally:
        r.delete(NF_INDEX)


def test_a_flood_of_index_entries_is_capped_and_counted(cluster: LocalCluster, r: redis.RedisCluster) -> None:
    """20,000 entries of the last minute in ``cogs:proxies`` (ids only: no heartbeat),
    and 500 that name no proxy. Before: every refresh read each heartbeat with one GET
    after the other (one round trip each) and listed them all; the bad ids were shown
    as proxies."""
    now = int(time.time() * 1000)
    flood = {f"hm-flood-{i}": now - i for i in range(20_000)}
    junk = {f"hm junk {i}": now for i in range(500)}
    for i in range(0, len(flood), 5000):
        r.zadd(PROXY_INDEX, dict(list(flood.items())[i : i + 5000]))
    r.zadd(PROXY_INDEX, junk)
    try:
        snap = _once(cluster.url)
        flooded = [p for p in snap["proxies"] if p["id"].startswith("hm-flood-")]
        assert len(snap["proxies"]) <= MAX_PROXIES
        assert len(flooded) >= MAX_PROXIES - 500  # the latest ones (and the junk left out, not shown)
        assert snap["proxies_not_shown"] >= len(flood) - MAX_PROXIES
        assert not any(p["id"].startswith("hm junk") for p in snap["proxies"])
        assert snap["proxies_unreadable"] == len(junk)
        assert all(not p["alive"] for p in flooded)  # no heartbeat: lost
    finally:
        for i in range(0, len(flood), 5000):
            r.zrem(PROXY_INDEX, *list(flood)[i : i + 5000])
        r.zrem(PROXY_INDEX, *junk)
