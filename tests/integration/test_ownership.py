"""Indirect ownership as a lease, and replica holder tables that shrink again.

* an owner whose event loop stalls right after its set reached the coordinator:
  a reader gets the new value or an error, never the old one;
* an owner frozen (SIGSTOP) past its heartbeat TTL loses the key to another proxy;
  resumed, it never serves its old value again, to its own NF or to peers;
* holder entries of replica tables (direct, portmap, indirect) go when proxies
  close, when a proxy restarts with the same id, and, for proxies that died, when a
  live proxy's janitor finds their heartbeat gone.
"""

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
from cogs.errors import PeerError
from cogs.keys import escape, slot, state_key
from cogs.nf.nat_table import NatTable, flow_id
from cogs.proxy import StateProxy
from cogs.proxy import indirect as indirect_mod
from cogs.proxy import registry as registry_mod
from cogs.proxy.peer import PeerClient, PeerRefusal
from cogs.settings import load_settings

pytestmark = pytest.mark.anyio
SECRET = "ownership-test-secret"


def _proxy(url: str, ttl: float = 10.0, **kw: Any) -> StateProxy:
    settings = load_settings(url=url, peer_timeout_s=min(2.0, ttl / 3))
    return StateProxy(settings=settings, peer_secret=SECRET, heartbeat_ttl_s=ttl, **kw)


def _spawn(target: Any, *args: Any) -> Any:
    p = mp.get_context("spawn").Process(target=target, args=args)
    p.start()
    return p


def _node_of(cluster: LocalCluster, tag: str) -> int:
    with redis.Redis(port=cluster.port) as r:
        for start, end, node, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot(tag) <= int(end):
                return int(node[1])
    raise AssertionError(tag)


def _holders(cluster: LocalCluster, state: str, key: str) -> set[str]:
    with redis.Redis(port=_node_of(cluster, escape(key))) as r:
        return {m.decode() for m in r.smembers(state_key(state, escape(key)) + ":r")}


# -- an owner that stalls after announcing a set ---------------------------------------------


def _stalling_owner(url: str, key: str, q: Any, go: Any) -> None:
    async def run() -> None:
        async with _proxy(url) as p:
            await p.syn_up("objects", key, "create", b"old")
            q.put(("ready", p.id))
            await anyio.to_thread.run_sync(go.wait)
            real = indirect_mod.Indirect._publish

            async def stall_after(self: Any, state: str, k: str, op: str) -> int:
                v = await real(self, state, k, op)
                q.put(("published", v))
                time.sleep(3)  # noqa: ASYNC251 - the owner's event loop stalls: no peer is served meanwhile
                return v

            indirect_mod.Indirect._publish = stall_after  # type: ignore[method-assign,assignment]
            await p.syn_up("objects", key, "set", b"new")
            q.put(("set", None))
            await anyio.sleep(5)

    anyio.run(run)


def test_an_owner_stalled_after_announcing_a_set_never_gives_the_old_value(cluster: LocalCluster) -> None:
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    key = f"stall-{os.getpid()}"
    owner = _spawn(_stalling_owner, cluster.url, key, q, go)
    try:
        assert q.get(timeout=60)[0] == "ready"

        async def reader() -> list[bytes | str]:
            seen: list[bytes | str] = []
            async with _proxy(cluster.url) as b:
                assert await b.syn_retrieve("objects", key) == b"old"  # b holds a replica of the old value
                go.set()
                assert (await anyio.to_thread.run_sync(q.get, True, 30))[0] == "published"
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    try:
                        seen.append(await b.syn_retrieve("objects", key))
                    except PeerError as e:
                        seen.append(f"error: {e}"[:60])
                    await anyio.sleep(0.05)
            return seen

        seen = anyio.run(reader)
        values = [v for v in seen if isinstance(v, bytes)]
        assert b"old" not in values, seen[:10]  # never the old value once the new version is out
        assert values
        assert values[-1] == b"new"
    finally:
        owner.kill()
        owner.join(10)


# -- an owner frozen past its heartbeat ------------------------------------------------------


def _frozen_owner(url: str, key: str, q: Any) -> None:
    async def run() -> None:
        async with _proxy(url, ttl=1.5) as p:
            await p.syn_up("objects", key, "create", b"v1")
            assert p._indirect is not None
            q.put(("ready", p.id, p.peer_address, p._indirect.inc))
            last = time.monotonic()
            resumed = False
            while True:
                now = time.monotonic()
                resumed = resumed or now - last > 2.0  # a jump: the process was frozen
                last = now
                try:
                    v = await p.syn_retrieve("objects", key)
                except Exception as e:  # reported, not hidden
                    v = f"error {type(e).__name__}"
                if resumed:
                    q.put(("after", v))
                await anyio.sleep(0.05)

    anyio.run(run)


def test_an_owner_frozen_past_its_lease_never_serves_its_old_value(cluster: LocalCluster) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    key = f"frozen-{os.getpid()}"
    owner = _spawn(_frozen_owner, cluster.url, key, q)
    try:
        _, owner_id, owner_addr, owner_inc = q.get(timeout=60)
        os.kill(owner.pid, signal.SIGSTOP)

        async def take_over() -> tuple[Any, Any]:
            async with _proxy(cluster.url) as b:
                with anyio.fail_after(30):
                    while True:  # the frozen owner's heartbeat expires: its locator is dropped
                        try:
                            if await b.syn_retrieve("objects", key) is None:
                                break
                        except PeerError:
                            pass
                        await anyio.sleep(0.2)
                await b.syn_up("objects", key, "create", b"v2")  # b owns it now
                os.kill(owner.pid, signal.SIGCONT)
                # a reader that still talks to the old owner directly gets nothing old from it
                client = PeerClient("prober", SECRET.encode(), timeout=3)
                direct: Any
                try:
                    direct = await client.request(owner_addr, "get", "objects", key, owner=(owner_id, owner_inc))
                except (PeerRefusal, PeerError) as e:
                    direct = type(e).__name__
                await client.aclose()
                after = [await anyio.to_thread.run_sync(q.get, True, 30) for _ in range(10)]
                return direct, after

        direct, after = anyio.run(take_over)
        assert direct in ("PeerRefusal", "PeerError"), direct
        values = [v for _, v in after]
        assert b"v1" not in values, values  # its NF reads the new owner's value (or an error), never v1
        assert b"v2" in values, values
    finally:
        os.kill(owner.pid, signal.SIGCONT)
        owner.kill()
        owner.join(10)


# -- holder tables ------------------------------------------------------------------------------


async def test_closed_proxies_leave_no_holder_entries(cluster: LocalCluster) -> None:
    keys = [f"hold{i}" for i in range(3)]
    async with _proxy(cluster.url) as owner:
        await owner.syn_up("objects", "held-object", "create", b"x")
        proxies = [_proxy(cluster.url) for _ in range(30)]
        for p in proxies:
            await p.__aenter__()
        ids = {p.id for p in proxies}
        for p in proxies:
            for k in keys:
                await p.syn_retrieve("nat", k)
            await NatTable(p, "pmap").outbound(6, "10.0.0.1", 4000)
            await p.syn_retrieve("objects", "held-object")
        block = NatTable(proxies[0], "pmap").block_of_flow(flow_id(6, "10.0.0.1", 4000))
        assert ids <= _holders(cluster, "nat", keys[0])
        assert ids <= _holders(cluster, "pmap", block)
        assert ids <= _holders(cluster, "objects", "held-object")
        for p in proxies:
            await p.aclose()
        for k in keys:
            assert not ids & _holders(cluster, "nat", k)
        assert not ids & _holders(cluster, "pmap", block)
        assert not ids & _holders(cluster, "objects", "held-object")


def _holder_proc(url: str, pid: str, keys: list[str], q: Any) -> None:
    async def run() -> None:
        async with _proxy(url, ttl=1.5, proxy_id=pid) as p:
            for k in keys:
                await p.syn_retrieve("nat", k)
            q.put("holding")
            await anyio.sleep(60)

    anyio.run(run)


def test_a_restart_with_the_same_id_and_the_janitor_drop_dead_holders(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    keys = [f"dead{i}-{os.getpid()}" for i in range(4)]
    same, dead = f"again-{os.getpid()}", f"dead-{os.getpid()}"
    procs = [_spawn(_holder_proc, cluster.url, pid, keys, q) for pid in (same, dead)]
    try:
        assert [q.get(timeout=60), q.get(timeout=60)] == ["holding", "holding"]
        for p in procs:
            p.kill()
            p.join(10)
        assert {same, dead} <= _holders(cluster, "nat", keys[0])

        async def after() -> None:
            async with _proxy(cluster.url, proxy_id=same):  # a new process with the old id holds nothing yet
                assert same not in _holders(cluster, "nat", keys[0])
                assert dead in _holders(cluster, "nat", keys[0])
            async with _proxy(cluster.url) as live:
                await anyio.sleep(2.0)  # the dead one's heartbeat (1.5 s) expires
                monkeypatch.setattr(registry_mod, "DEAD_AFTER_S", 0.0)
                await live._registry.janitor()
                assert live._registry.released_dead >= len(keys)

        anyio.run(after)
        for k in keys:
            assert not {same, dead} & _holders(cluster, "nat", k)
    finally:
        for p in procs:
            p.kill()
