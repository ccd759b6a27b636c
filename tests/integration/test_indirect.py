"""Indirect-retrieval states with proxies in separate processes on a real cluster:
local, remote and absent cases, concurrent create, remote update, replica discard,
owner crash and restart, and a peer channel that refuses bad frames and strangers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import struct
import time
from typing import Any

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.errors import ConfigError, Oversize
from cogs.proxy import MISS, StateProxy
from cogs.settings import load_settings
from tests.helpers import eventually

SECRET = "cluster-shared-secret"


def _proxy(url: str, **kw: Any) -> StateProxy:
    """A proxy with the peer secret; a short heartbeat needs a shorter peer timeout
    (an owner's lease is the heartbeat TTL less the peer timeout)."""
    ttl = kw.get("heartbeat_ttl_s", 10.0)
    return StateProxy(settings=load_settings(url=url, peer_timeout_s=min(5.0, ttl / 3)), peer_secret=SECRET, **kw)


# -- helpers running proxies in other processes -------------------------------------------


async def _owner(url: str, keys: dict[str, bytes], q: Any, pid: str | None, hold: float) -> None:
    async with _proxy(url, proxy_id=pid, heartbeat_ttl_s=1.5) as p:
        for k, v in keys.items():
            assert await p.syn_up("objects", k, "create", v) == v
        q.put(("ready", p.id, p.statistics().owned))
        await anyio.sleep(hold)  # serving peers meanwhile
        q.put(("done", p.id, p.statistics().peer_served))


def _owner_proc(url: str, keys: dict[str, bytes], q: Any, pid: str | None = None, hold: float = 30) -> None:
    anyio.run(_owner, url, keys, q, pid, hold)


async def _creator(url: str, key: str, mine: bytes, start: Any, q: Any) -> None:
    async with _proxy(url) as p:
        start.wait()
        got = await p.syn_up("objects", key, "create", mine)
        q.put((got, p.statistics().owned))
        await anyio.sleep(1.0)  # stay up: a loser may still fetch from the winner


def _creator_proc(url: str, key: str, mine: bytes, start: Any, q: Any) -> None:
    anyio.run(_creator, url, key, mine, start, q)


def _spawn(target: Any, *args: Any) -> Any:
    p = mp.get_context("spawn").Process(target=target, args=args)
    p.start()
    return p


# -- the three cases ---------------------------------------------------------------------


def test_local_remote_absent_and_remote_update(cluster: LocalCluster) -> None:
    q = mp.get_context("spawn").Queue()
    owner = _spawn(_owner_proc, cluster.url, {"http://o/a": b"A" * 1000}, q)
    try:
        kind, _owner_id, owned = q.get(timeout=60)
        assert (kind, owned) == ("ready", 1)

        async def reader() -> None:
            async with _proxy(cluster.url) as p:
                assert await p.syn_retrieve("objects", "http://o/none") is None  # absent
                s0 = p.statistics()
                assert await p.syn_retrieve("objects", "http://o/a") == b"A" * 1000  # remote
                s1 = p.statistics()
                assert s1.locator_lookups - s0.locator_lookups == 1  # one coordinator lookup
                assert s1.remote_ops - s0.remote_ops == 1
                assert await p.syn_retrieve("objects", "http://o/a") == b"A" * 1000  # replica hit
                assert p.statistics().locator_lookups == s1.locator_lookups  # ... with no lookup
                # a remote update is executed by the owner; our replica is discarded
                assert await p.syn_up("objects", "http://o/a", "set", b"B" * 10) == b"B" * 10
                await eventually(lambda: p.cached("objects", "http://o/a") is MISS)
                assert await p.syn_retrieve("objects", "http://o/a") == b"B" * 10
                assert p.statistics().owned == 0  # it stayed the owner's
                # absent -> created here, then served locally with no network at all
                assert await p.syn_up("objects", "http://o/mine", "create", b"M") == b"M"
                lookups = p.statistics().locator_lookups
                assert await p.syn_retrieve("objects", "http://o/mine") == b"M"
                assert p.statistics().locator_lookups == lookups
                assert p.statistics().indirect_local_hits >= 1

        anyio.run(reader)
    finally:
        owner.kill()
        owner.join(10)


def test_concurrent_create_has_exactly_one_owner(cluster: LocalCluster) -> None:
    ctx = mp.get_context("spawn")
    start, q = ctx.Event(), ctx.Queue()
    procs = [_spawn(_creator_proc, cluster.url, "http://race/x", f"value-{i}".encode(), start, q) for i in range(4)]
    time.sleep(3)  # all connected
    start.set()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    values = {v for v, _ in results}
    assert len(values) == 1  # everyone ended up with the winner's value
    assert sorted(owned for _, owned in results) == [0, 0, 0, 1]


def test_owner_crash_readers_fall_back_then_restart_does_not_resurrect(cluster: LocalCluster) -> None:
    q = mp.get_context("spawn").Queue()
    owner = _spawn(_owner_proc, cluster.url, {"http://crash/a": b"orig"}, q, "owner-fixed-id")
    _, _owner_id, _ = q.get(timeout=60)

    async def before() -> None:
        async with _proxy(cluster.url) as p:
            assert await p.syn_retrieve("objects", "http://crash/a") == b"orig"

    anyio.run(before)
    os.kill(owner.pid or 0, signal.SIGKILL)
    owner.join(10)

    async def after_crash() -> None:
        async with _proxy(cluster.url) as p:
            t0 = time.monotonic()
            got: Any = b"x"
            while got is not None:  # until the dead owner's heartbeat expires (1.5 s)
                try:
                    got = await p.syn_retrieve("objects", "http://crash/a")
                except Exception as e:  # unreachable but not yet known dead: an error, never a hang
                    assert "peer" in str(e)
                assert time.monotonic() - t0 < 10
                await anyio.sleep(0.2)
            # fallback: fetch from the origin and create anew; this proxy owns it now
            assert await p.syn_up("objects", "http://crash/a", "create", b"from-origin") == b"from-origin"
            assert p.statistics().owned == 1

    anyio.run(after_crash)

    # the same proxy id starting again does not bring its old locators back
    q2 = mp.get_context("spawn").Queue()
    again = _spawn(_owner_proc, cluster.url, {"http://crash/b": b"new"}, q2, "owner-fixed-id", 30)
    try:
        q2.get(timeout=60)

        async def restarted() -> None:
            async with _proxy(cluster.url) as p:
                assert await p.syn_retrieve("objects", "http://crash/b") == b"new"

        anyio.run(restarted)
    finally:
        again.kill()
        again.join(10)


def test_owned_values_stay_within_the_byte_budget(cluster: LocalCluster) -> None:
    """Past COGS_MAX_OWNED_BYTES the least recently used value goes, with its locator:
    other proxies no longer find it there, and may load and own it themselves."""

    async def fresh() -> bytes:
        return b"fresh"

    async def go() -> None:
        small = load_settings(url=cluster.url, max_owned_bytes=3500)
        async with StateProxy(settings=small, peer_secret=SECRET) as a, _proxy(cluster.url) as b:
            for i in range(3):
                await a.syn_up("objects", f"lru{i}", "create", bytes([i]) * 1000)
            assert await a.syn_retrieve("objects", "lru0") == b"\x00" * 1000  # used: lru1 is now the oldest
            await a.syn_up("objects", "lru3", "create", b"\x03" * 1000)  # 4000 bytes: one has to go
            s = a.statistics()
            assert (s.owned, s.owned_bytes, s.evicted) == (3, 3000, 1)
            assert a.cached("objects", "lru1") is MISS
            assert await b.syn_retrieve("objects", "lru0") == b"\x00" * 1000  # the others are still served
            assert await b.syn_retrieve("objects", "lru1") is None
            assert await b.syn_retrieve("objects", "lru1", load=fresh) == b"fresh"  # free: b takes it
            assert b.statistics().owned == 1
            assert await a.syn_retrieve("objects", "lru1") == b"fresh"  # from its new owner
            # a value over the whole budget is served, then not kept
            assert await a.syn_up("objects", "huge", "create", b"h" * 4000) == b"h" * 4000
            s = a.statistics()
            assert (s.owned, s.owned_bytes, s.evicted) == (3, 3000, 2)  # it alone went
            assert await b.syn_retrieve("objects", "huge") is None

    anyio.run(go)


def test_read_through_takes_a_key_over_from_an_owner_without_its_value(cluster: LocalCluster) -> None:
    """A locator that points at a live proxy holding nothing (its give-up never reached
    the coordinator) heals at the next read-through: the reader takes the key over."""

    async def fresh() -> bytes:
        return b"reloaded"

    async def go() -> None:
        async with _proxy(cluster.url) as a, _proxy(cluster.url) as b, _proxy(cluster.url) as c:
            await a.syn_up("objects", "stale", "create", b"old")
            assert a._indirect is not None
            del a._indirect.owned[(a.catalog.index("objects"), "stale")]  # lost here, not at the coordinator
            assert await c.syn_retrieve("objects", "stale") is None  # a plain read finds nothing
            assert await b.syn_retrieve("objects", "stale", load=fresh) == b"reloaded"
            sb = b.statistics()
            assert (sb.stale_locators, sb.owned) == (1, 1)
            assert await c.syn_retrieve("objects", "stale") == b"reloaded"  # from b, its owner now
            assert await a.syn_retrieve("objects", "stale", load=fresh) == b"reloaded"
            assert a.statistics().owned == 0

    anyio.run(go)


def test_bad_values_and_missing_secret(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with _proxy(cluster.url) as p:
            with pytest.raises(Oversize):
                await p.syn_up("objects", "big", "create", b"x" * (4 * 2**20 + 1))
            with pytest.raises(Exception, match="bytes"):
                await p.syn_up("objects", "str", "create", "not bytes")
        async with StateProxy(cluster.url) as plain:  # no secret: a clear error, not a hang
            with pytest.raises(ConfigError, match="COGS_PEER_SECRET"):
                await plain.syn_retrieve("objects", "http://o/a")

    anyio.run(go)


# -- read-through ------------------------------------------------------------------------


def test_read_through_loads_once_for_concurrent_readers_everywhere(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with _proxy(cluster.url) as a, _proxy(cluster.url) as b, _proxy(cluster.url) as c:
            release, calls = anyio.Event(), []

            async def slow_load() -> bytes:
                calls.append(1)
                await release.wait()  # an origin taking its time
                return b"loaded once"

            got: dict[str, Any] = {}

            async def read(name: str, p: StateProxy) -> None:
                got[name] = await p.syn_retrieve("objects", "http://rt/x", load=slow_load)

            s0 = a.statistics()
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, "a", a)
                await eventually(lambda: calls == [1])  # a took the key and is loading it
                for name, p in (("b", b), ("c", c), ("a2", a), ("b2", b), ("c2", c)):  # readers elsewhere, here
                    tg.start_soon(read, name, p)
                await anyio.sleep(0.3)
                assert calls == [1]  # they wait: nobody loads it a second time
                assert not got
                release.set()
            assert got == dict.fromkeys(("a", "a2", "b", "b2", "c", "c2"), b"loaded once")
            assert len(calls) == 1
            s1 = a.statistics()
            assert s1.locator_lookups - s0.locator_lookups == 1  # find + take in one call
            assert s1.owned == 1
            assert s1.collapsed_reads >= 3  # b and c waited at a, a2 here
            assert a.cached("objects", "http://rt/x") == b"loaded once"
            assert b.cached("objects", "http://rt/x") == b"loaded once"  # replica mode: kept
            # an owned key: read-through reads it and loads nothing
            assert await c.syn_retrieve("objects", "http://rt/x", load=slow_load) == b"loaded once"
            assert len(calls) == 1

    anyio.run(go)


def test_read_through_that_keeps_nothing_or_fails_gives_the_key_up(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with _proxy(cluster.url) as a, _proxy(cluster.url) as b:

            async def nothing() -> None:
                return None

            async def broken() -> bytes:
                raise RuntimeError("origin down")

            async def big() -> bytes:
                return b"x" * (4 * 2**20 + 1)

            async def fine() -> bytes:
                return b"second try"

            assert await a.syn_retrieve("objects", "http://rt/n", load=nothing) is None
            assert a.statistics().owned == 0
            assert await b.syn_retrieve("objects", "http://rt/n") is None  # no locator left behind
            with pytest.raises(RuntimeError, match="origin down"):
                await a.syn_retrieve("objects", "http://rt/e", load=broken)
            with pytest.raises(Oversize):
                await a.syn_retrieve("objects", "http://rt/big", load=big)
            assert a.statistics().owned == 0
            for key in ("http://rt/e", "http://rt/big"):  # given up: the next reader loads it
                assert await b.syn_retrieve("objects", key, load=fine) == b"second try"
            assert b.statistics().owned == 2
            with pytest.raises(Exception, match=r"state=cnt: load= \(read-through\) is for indirect states"):
                await a.syn_retrieve("cnt", "k", load=fine)

    anyio.run(go)


def test_read_through_takes_over_a_dead_owners_key(cluster: LocalCluster) -> None:
    q = mp.get_context("spawn").Queue()
    owner = _spawn(_owner_proc, cluster.url, {"http://rt/dead": b"old"}, q)
    q.get(timeout=60)
    os.kill(owner.pid or 0, signal.SIGKILL)
    owner.join(10)

    async def go() -> None:
        async with _proxy(cluster.url) as p:

            async def load() -> bytes:
                return b"reloaded"

            t0 = time.monotonic()
            while True:  # an error while the dead owner's heartbeat lives (1.5 s), never a hang
                try:
                    got = await p.syn_retrieve("objects", "http://rt/dead", load=load)
                    break
                except Exception as e:
                    assert "peer" in str(e)
                    assert time.monotonic() - t0 < 10
                    await anyio.sleep(0.2)
            assert got == b"reloaded"
            assert p.statistics().owned == 1

    anyio.run(go)


# -- the peer channel --------------------------------------------------------------------


def _raw(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _read_frame(s: socket.socket) -> dict[str, Any]:
    head = s.recv(5, socket.MSG_WAITALL)
    n, kind = struct.unpack(">IB", head)
    body = s.recv(n - 1, socket.MSG_WAITALL)
    assert kind == ord("J")
    result: dict[str, Any] = json.loads(body)
    return result


def _send(s: socket.socket, obj: Any, kind: bytes = b"J") -> None:
    body = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(body) + 1) + kind + body)


@pytest.mark.parametrize(
    "attack",
    ["no-auth-request", "wrong-secret", "huge-length", "zero-length", "not-json", "chunk-first"],
)
def test_peer_server_refuses_strangers_and_garbage(cluster: LocalCluster, attack: str) -> None:
    async def go() -> None:
        async with _proxy(cluster.url) as owner, _proxy(cluster.url) as friend:
            await owner.syn_up("objects", "http://p/secret", "create", b"classified")
            ind = owner._indirect
            assert ind is not None
            assert ind.server is not None
            addr = ind.server.address

            def attack_it() -> dict[str, Any]:
                with _raw(addr) as s:
                    hello = _read_frame(s)
                    assert hello["t"] == "hello"
                    if attack == "no-auth-request":
                        _send(
                            s,
                            {"t": "req", "n": 1, "op": "get", "state": "objects", "key": "http://p/secret", "size": 0},
                        )
                    elif attack == "wrong-secret":
                        _send(s, {"t": "auth", "id": "intruder", "mac": "0" * 64})
                    elif attack == "huge-length":
                        s.sendall(struct.pack(">IB", 2**31, ord("J")))
                    elif attack == "zero-length":
                        s.sendall(struct.pack(">I", 0))
                    elif attack == "not-json":
                        s.sendall(struct.pack(">I", 5) + b"J{{{{")
                    else:
                        s.sendall(struct.pack(">I", 4) + b"Babc")
                    reply = _read_frame(s)
                    assert s.recv(1) == b""  # and the connection is closed
                    return reply

            reply = await anyio.to_thread.run_sync(attack_it)
            assert reply["t"] == "error"
            assert reply["code"] in ("AUTH", "BAD_FRAME")
            assert "classified" not in json.dumps(reply)
            assert ind.server.refused >= 1
            # the server is fine: a peer with the secret is still served
            assert await friend.syn_retrieve("objects", "http://p/secret") == b"classified"

    anyio.run(go)


def test_stalled_peer_does_not_block_others(cluster: LocalCluster) -> None:
    async def go() -> None:
        async with _proxy(cluster.url) as owner, _proxy(cluster.url) as friend:
            await owner.syn_up("objects", "http://p/s", "create", b"v")
            assert owner._indirect is not None
            assert owner._indirect.server is not None
            addr = owner._indirect.server.address
            stalled = _raw(addr)
            stalled.sendall(b"\x00\x00")  # half a length, then nothing
            try:
                with anyio.fail_after(5):
                    assert await friend.syn_retrieve("objects", "http://p/s") == b"v"
            finally:
                stalled.close()

    anyio.run(go)
