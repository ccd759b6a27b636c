"""Delivery under ordinary faults, on a real 3+3 cluster: nothing lost, nothing applied
twice, every waiter answered (the README's "Delivery guarantees").

* connections killed a couple of dozen times under steady update() and syn_up() load,
  in default and durable mode: exact final sums, and every syn_up of a counter that
  only its caller changes returns exactly the previous value + 1 (a double apply
  would skip, a loss would repeat);
* a proxy killed -9 and restarted with the same proxy id: its new session is not
  mistaken for the old one;
* the whole cluster stopped and started again (AOF) under load;
* poison input (lone surrogates, oversize members) refused where it enters, its
  batch-mates applied;
* read-your-writes in replica mode.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.errors import BadDelta, BadKey, CogsError, DeliveryTimeout, Oversize
from cogs.ports import free_port_base
from cogs.proxy import StateProxy
from cogs.settings import load_settings
from tests.conftest import _load, serving
from tests.helpers import make_catalog

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with serving(LocalCluster(port=free_port_base(6), masters=3, replicas=1, dir=tmp_path_factory.mktemp("delivery"))) as lc:
        yield lc


def _kill_connections(lc: LocalCluster) -> int:
    """CLIENT KILL TYPE normal on every node: every proxy connection drops at once."""
    n = 0
    for port in lc.ports:
        try:
            with redis.Redis(port=port, socket_timeout=2) as r:
                n += int(r.client_kill_filter(_type="normal", skipme=True))
        except redis.RedisError:
            pass
    return n


async def _read_counts(url: str, keys: list[str]) -> dict[str, int]:
    async with StateProxy(url) as p:
        return {k: int(await p.syn_retrieve("cnt", k) or 0) for k in keys}


@pytest.mark.slow
@pytest.mark.parametrize("durable", [False, True], ids=["default", "durable"])
def test_connection_kills_under_load_lose_and_double_nothing(ha: LocalCluster, durable: bool) -> None:
    tag = f"kill{int(durable)}{random.randrange(10**6)}:"
    trigger_keys = [f"{tag}t{i}" for i in range(50)]
    sync_keys = [f"{tag}s{i}" for i in range(6)]
    issued: dict[str, int] = dict.fromkeys(trigger_keys, 0)
    answers: dict[str, list[int]] = {k: [] for k in sync_keys}
    errors: list[CogsError] = []
    kills = 0

    async def go() -> dict[str, Any]:
        nonlocal kills
        async with StateProxy(ha.url, durable=durable, on_error=lambda e, _p: errors.append(e)) as p:
            stop = anyio.Event()

            async def updates() -> None:
                i = 0
                while not stop.is_set():
                    for _ in range(200):
                        k = trigger_keys[i % len(trigger_keys)]
                        p.update("cnt", k, "add", 1)
                        issued[k] += 1
                        i += 1
                    await p.wait_room(400)
                    await anyio.sleep(0.001)

            async def syn(k: str) -> None:
                while not stop.is_set():
                    answers[k].append(int(await p.syn_up("cnt", k, "add", 1)))

            async def killer() -> None:
                nonlocal kills
                await anyio.sleep(0.5)
                for _ in range(24):
                    kills += await anyio.to_thread.run_sync(_kill_connections, ha)
                    await anyio.sleep(random.uniform(0.05, 0.4))
                stop.set()

            with anyio.fail_after(120):  # every waiter answers: nothing hangs
                async with anyio.create_task_group() as tg:
                    tg.start_soon(updates)
                    for k in sync_keys:
                        tg.start_soon(syn, k)
                    tg.start_soon(killer)
                await p.flush()
            s = p.statistics()
            return {"outages": s.outages, "resent": s.resent_batches, "errors": s.errors}

    stats = anyio.run(go)
    assert not errors, errors[:3]
    assert kills >= 24
    assert stats["outages"] >= 5, stats  # the kills did cut the proxy's connections
    final = anyio.run(_read_counts, ha.url, trigger_keys + sync_keys)
    n_issued, n_applied = sum(issued.values()), sum(final[k] for k in trigger_keys)
    n_sync = sum(len(a) for a in answers.values())
    print(
        f"\n[{'durable' if durable else 'default'}] {kills} connections killed in 24 rounds; updates issued "
        f"{n_issued} applied {n_applied} (lost {max(0, n_issued - n_applied)}, doubled {max(0, n_applied - n_issued)}); "
        f"syn_up answered {n_sync}, all previous+1: {all(a == list(range(1, len(a) + 1)) for a in answers.values())}; "
        f"outages {stats['outages']}, batches re-sent {stats['resent']}"
    )
    assert {k: final[k] for k in trigger_keys} == issued  # exactly once: no loss, no double
    for k in sync_keys:
        got = answers[k]
        assert got == list(range(1, len(got) + 1)), f"{k}: syn_up answers {got[:20]}..."  # each exactly +1
        assert final[k] == len(got)


def _restarted(url: str, pid: str, q: Any, stage: str) -> None:
    async def run() -> None:
        async with StateProxy(url, proxy_id=pid, peer_secret="s" * 16) as p:
            if stage == "first":
                for i in range(5000):
                    p.update("cnt", f"{pid}:k{i % 10}", "add", 1)
                await p.flush()
                q.put("flushed")
                while True:  # killed -9 while busy
                    for _ in range(200):
                        p.update("cnt", f"{pid}:busy", "add", 1)
                    await anyio.sleep(0.001)
            for _ in range(10):
                p.update("cnt", f"{pid}:after", "add", 1)
            v = await p.syn_up("cnt", f"{pid}:sync", "add", 1)
            await p.syn_up("objects", f"{pid}:obj", "set", b"v2")
            await p.flush()
            q.put(
                ("done", v, await p.syn_retrieve("cnt", f"{pid}:after"), await p.syn_retrieve("objects", f"{pid}:obj"))
            )

    anyio.run(run)


@pytest.mark.slow
def test_restart_with_the_same_proxy_id_applies_everything(ha: LocalCluster) -> None:
    pid = f"same-{os.getpid()}"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    first = ctx.Process(target=_restarted, args=(ha.url, pid, q, "first"))
    first.start()
    assert q.get(timeout=60) == "flushed"
    time.sleep(0.3)
    os.kill(first.pid or 0, signal.SIGKILL)
    first.join(10)
    second = ctx.Process(target=_restarted, args=(ha.url, pid, q, "second"))
    second.start()
    got = q.get(timeout=60)
    second.join(30)
    assert got == ("done", 1, 10, b"v2")  # 10 of 10 updates, the sync op and the owner's set


@pytest.mark.slow
def test_whole_cluster_restart_under_load(tmp_path: Path) -> None:
    """`cogs cluster down` + `up` (AOF) while a proxy keeps updating: what it issued is
    what the cluster holds, once it is back; CLUSTERDOWN, LOADING and "the cluster is
    down" inside the script are waited out, not reported as errors."""
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "c")
    lc.up()
    errors: list[CogsError] = []
    issued = 0
    try:
        anyio.run(_load, lc.url, make_catalog())

        async def go() -> None:
            nonlocal issued
            async with StateProxy(lc.url, on_error=lambda e, _p: errors.append(e)) as p:
                stop = anyio.Event()

                async def load() -> None:
                    nonlocal issued
                    while not stop.is_set():
                        for i in range(100):
                            p.update("cnt", f"restart{i % 20}", "add", 1)
                            issued += 1
                        await p.wait_room(200)
                        await anyio.sleep(0.002)

                async def restart() -> None:
                    await anyio.sleep(1.0)
                    await anyio.to_thread.run_sync(lc.down)
                    await anyio.sleep(1.0)
                    await anyio.to_thread.run_sync(lc.up)
                    await anyio.sleep(2.0)
                    stop.set()

                with anyio.fail_after(120):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(load)
                        tg.start_soon(restart)
                    await p.flush()

        anyio.run(go)
        final = anyio.run(_read_counts, lc.url, [f"restart{i}" for i in range(20)])
    finally:
        lc.down(purge=True)
    print(f"\n[whole restart] issued {issued} applied {sum(final.values())}, errors {len(errors)}")
    assert not errors, errors[:3]
    assert sum(final.values()) == issued


async def test_poison_input_is_refused_where_it_enters_and_sinks_nothing(ha: LocalCluster) -> None:
    errors: list[CogsError] = []
    async with StateProxy(ha.url, on_error=lambda e, _p: errors.append(e)) as p:
        bad_key = b"\xff\xfe".decode(errors="surrogateescape")  # what packet bytes decode to
        for i in range(100):
            p.update("cnt", f"poison-ok{i % 5}", "add", 1)
            if i % 10 == 0:
                with pytest.raises(BadKey, match="lone surrogate"):
                    p.update("cnt", bad_key, "add", 1)
                with pytest.raises(BadDelta, match="lone surrogate"):
                    p.update("ports", f"poison-set{i}", "add", "\udcff")
                with pytest.raises(BadDelta, match="lone surrogate"):
                    p.update("ports", f"poison-set{i}", "add", ["fine", "\udcff"])
                with pytest.raises(Oversize):
                    p.update("ports", f"poison-set{i}", "add", "m" * 5000)
                with pytest.raises(BadKey):
                    p.update("cnt", "k" * 10**6, "add", 1)
            p.update("ports", f"poison-set{i % 3}", "add", f"m{i}")
        with pytest.raises(BadKey):
            await p.syn_up("cnt", bad_key, "add", 1)
        with pytest.raises(BadDelta):
            await p.syn_up("mapping", "poison-str", "set", "\udcff")
        with anyio.fail_after(10):
            await p.flush()  # the send loop is alive: nothing hangs
        assert [await p.syn_retrieve("cnt", f"poison-ok{i}") for i in range(5)] == [20] * 5
        assert len(await p.syn_retrieve("ports", "poison-set0")) == 34
        assert p.statistics().errors == 0
    assert not errors


async def test_updates_whose_sum_leaves_64_bits_do_not_sink_each_other(ha: LocalCluster) -> None:
    """Coalescing merged pending adds into one sum: a delta past 64 bits, or two fine
    deltas whose sum is past it, made the library refuse the merged op whole, taking the
    key's valid updates with it (attack pass: 5 + 10**30 + 7 left 0, not 12)."""
    errors: list[CogsError] = []
    big = 2**62
    async with StateProxy(ha.url, on_error=lambda e, _p: errors.append(e)) as p:
        p.update("cnt", "wide-a", "add", 5)
        with pytest.raises(BadDelta, match="64 bits"):
            p.update("cnt", "wide-a", "add", 10**30)  # refused where it enters, alone
        p.update("cnt", "wide-a", "add", 7)
        p.update("cnt", "wide-b", "add", -big)
        await p.flush()
        p.update("cnt", "wide-b", "add", big)
        p.update("cnt", "wide-b", "add", big + big // 2)  # fine alone; merged, past 64 bits
        p.update("cnt", "wide-b", "add", -1)
        p.update("qtypes", "wide-m", "incr", {"odd": big, "all": 1})
        p.update("qtypes", "wide-m", "incr", {"odd": big + big // 2, "all": 1})
        with pytest.raises(BadDelta, match="64-bit ints"):
            p.update("qtypes", "wide-m", "incr", {"odd": 2**64})
        nested: Any = "x"
        for _ in range(5000):
            nested = [nested]
        with pytest.raises(BadDelta, match="nested too deeply"):
            p.update("note", "wide-s", "set", nested)
        await p.flush()
        assert await p.syn_retrieve("cnt", "wide-a") == 12
        assert await p.syn_retrieve("cnt", "wide-b") == big + big // 2 - 1
        # the map's second increment takes a field past 64 bits at the coordinator: refused
        # there, alone and whole (its other field undone; the first increment applies), reported
        assert await p.syn_retrieve("qtypes", "wide-m") == {"odd": str(big), "all": "1"}  # none of it
    assert len(errors) == 1, errors
    assert "wide-m" in str(errors[0])


async def test_a_huge_key_makes_a_short_error(ha: LocalCluster) -> None:
    async with StateProxy(ha.url) as p:
        with pytest.raises(BadKey) as e:
            p.update("cnt", "k" * 10**6, "add", 1)
        assert len(str(e.value)) < 400


async def test_read_your_writes_in_replica_mode(ha: LocalCluster) -> None:
    """After its own syn_up (or update + flush), a proxy never reads its older replica,
    even while another proxy keeps the key's replica table busy."""
    async with StateProxy(ha.url) as p, StateProxy(ha.url) as other:
        for i in range(150):
            key = f"ryw{i % 3}"
            await other.syn_retrieve("nat", key)  # another holder: discards travel for every update
            await p.syn_retrieve("nat", key)  # p holds a replica of the old value
            v = await p.syn_up("nat", key, "add", 1)
            assert await p.syn_retrieve("nat", key) == v
            p.update("nat", key, "add", 1)
            await p.flush()
            assert await p.syn_retrieve("nat", key) == v + 1
        assert p.statistics().cache_hits > 0  # replicas were cached (and still never stale)


def test_every_waiter_is_answered_while_the_coordinator_is_frozen(tmp_path: Path) -> None:
    """Every node stopped (SIGSTOP): sync ops, async ops and flush() end with
    DeliveryTimeout within the bound, whether their batch was sent or still waits for
    room; resumed, every op they carried applies exactly once (outcome unknown, never
    lost, never doubled)."""
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "c")
    lc.up()
    pids = [int((lc.node_dir(p) / "redis.pid").read_text()) for p in lc.ports]
    try:
        anyio.run(_load, lc.url, make_catalog())
        settings = load_settings(url=lc.url, delivery_timeout_s=1.5)
        failed: list[CogsError] = []

        async def go() -> tuple[list[str], float]:
            async with StateProxy(settings=settings, on_error=lambda e, _p: failed.append(e)) as p:
                await p.syn_up("cnt", "frozen-sync", "add", 1)  # connected, warm
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                t0 = time.monotonic()
                outcomes: list[str] = []

                async def sync(i: int) -> None:
                    try:
                        await p.syn_up("cnt", "frozen-sync", "add", 1)
                        outcomes.append("ok")
                    except DeliveryTimeout:
                        outcomes.append("timeout")

                with anyio.fail_after(20):
                    async with anyio.create_task_group() as tg:
                        for i in range(5):
                            tg.start_soon(sync, i)
                        for _ in range(100):
                            p.update("cnt", "frozen-trigger", "add", 1)
                        p.asyn_up("cnt", "frozen-async", "add", 1, lambda v, pkt: outcomes.append("async ok"), "pkt")
                    with pytest.raises(DeliveryTimeout):
                        await p.flush()
                took = time.monotonic() - t0
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                with anyio.fail_after(60):
                    await p.flush()  # back: everything queued goes out, once
                    got = [await p.syn_retrieve("cnt", k) for k in ("frozen-sync", "frozen-trigger", "frozen-async")]
                assert got == [6, 100, 1]
                return outcomes, took

        outcomes, took = anyio.run(go)
        assert outcomes.count("timeout") == 5
        assert took < 15  # bounded: the waiters did not wait for the coordinator
        assert any(isinstance(e, DeliveryTimeout) for e in failed)  # the async op and the updates were told
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        lc.down(purge=True)
