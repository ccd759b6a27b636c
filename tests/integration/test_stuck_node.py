"""One stuck coordinator node holds up only its own keys (issue 15, attack pass).

A primary frozen with SIGSTOP accepts connections and answers nothing. Its channel
stops confirming; ops for keys of the other nodes must still be sent and answered
(room and in-flight limits are per node channel, not global), and updates of the
frozen node's keys wait on its channel (bounded: past their share they are refused
with Backpressure naming the node) and apply exactly once when it is back.
Before the fix every op of every node waited for the frozen node's channel: a
sync op on a healthy node ended in DeliveryTimeout.

Also here: ``wait_room()`` and ``aupdate()`` end within the delivery bound with a
clear error when the coordinator is gone, instead of waiting forever.
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.errors import CogsError, DeliveryTimeout
from cogs.keys import escape, slot
from cogs.proxy import Backpressure, StateProxy
from cogs.settings import load_settings

BOUND = 4.0

def _keys_by_node(p: StateProxy, prefix: str, n: int) -> dict[int, list[str]]:
    topo = p.coord.topology
    assert topo is not None
    out: dict[int, list[str]] = {}
    i = 0
    while min((len(v) for v in out.values()), default=0) < n or len(out) < len(topo.nodes):
        k = f"{prefix}{i}"
        out.setdefault(topo.node_of(slot(escape(k))), []).append(k)
        i += 1
    return {node: keys[:n] for node, keys in out.items()}


@pytest.mark.slow
def test_a_frozen_node_holds_up_only_its_own_keys(freezable: tuple[LocalCluster, list[int]]) -> None:
    lc, pids = freezable
    settings = load_settings(url=lc.url, delivery_timeout_s=BOUND)
    errors: list[CogsError] = []

    async def go() -> dict[str, float]:
        async with StateProxy(
            settings=settings, max_pending=3000, batch_max_ops=500, on_error=lambda e, _p: errors.append(e)
        ) as p:
            keys = _keys_by_node(p, "stuck", 400)
            topo = p.coord.topology
            assert topo is not None
            frozen = 0
            healthy = [n for n in keys if n != frozen]
            for n in keys:
                await p.syn_up("cnt", keys[n][0], "add", 1)  # every channel connected
            os.kill(pids[lc.ports.index(topo.nodes[frozen].port)], signal.SIGSTOP)
            issued: dict[str, int] = {k: (1 if i == 0 else 0) for ks in keys.values() for i, k in enumerate(ks)}
            refused_frozen = refused_healthy = 0
            slowest = 0.0
            stuck_answered: list[str] = []

            async def stuck_sync() -> None:  # a sync op of the frozen node: its own bound, not others'
                try:
                    await p.syn_up("cnt", keys[frozen][1], "add", 1)
                    stuck_answered.append("ok")
                except DeliveryTimeout:
                    stuck_answered.append("timeout")

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stuck_sync)
                    t_end = time.monotonic() + 2.5
                    i = 0
                    while time.monotonic() < t_end:
                        # updates of every node's keys: the frozen node's pile up on its channel
                        for n, ks in keys.items():
                            for _ in range(40):
                                k = ks[i % len(ks)]
                                i += 1
                                try:
                                    p.update("cnt", k, "add", 1)
                                    issued[k] += 1
                                except Backpressure:
                                    if n == frozen:
                                        refused_frozen += 1
                                    else:
                                        refused_healthy += 1
                        # sync ops of the healthy nodes are sent and answered meanwhile
                        for n in healthy:
                            t0 = time.monotonic()
                            k = keys[n][0]
                            got = await p.syn_up("cnt", k, "add", 1)
                            issued[k] += 1
                            slowest = max(slowest, time.monotonic() - t0)
                            assert got == issued[k]  # in order after the updates issued before it
                        await anyio.sleep(0.01)
                    # back before the frozen node's own ops reach their bound: they apply, once
                    os.kill(pids[lc.ports.index(topo.nodes[frozen].port)], signal.SIGCONT)
                await p.flush()
                got = {k: int(await p.syn_retrieve("cnt", k) or 0) for k in issued}
            assert stuck_answered == ["ok"]  # its own bound had not passed: answered
            issued[keys[frozen][1]] += 1
            assert got == issued  # exactly once: nothing lost, nothing doubled, on every node
            return {
                "slowest": slowest, "refused_frozen": refused_frozen, "refused_healthy": refused_healthy,
                "applied": sum(issued.values()),
            }  # fmt: skip

    r = anyio.run(go)
    print(f"\n[frozen node] {r}")
    assert not errors, errors[:3]
    assert r["slowest"] < 1.5, r  # a healthy node's sync op did not wait for the frozen one
    assert r["refused_healthy"] == 0, r  # room is per node channel: healthy keys are never refused
    assert r["refused_frozen"] > 0, r  # the frozen node's share is bounded


def test_wait_room_ends_within_the_bound_when_the_coordinator_is_gone(
    freezable: tuple[LocalCluster, list[int]],
) -> None:
    """Every node frozen: aupdate() keeps filling the channels, each up to its bound,
    then ends with Backpressure within the delivery bound; wait_room() and a sync op
    too (they used to wait forever). Resumed, what was accepted applies once."""
    lc, pids = freezable
    bound = 1.5
    settings = load_settings(url=lc.url, delivery_timeout_s=bound)

    async def go() -> tuple[list[tuple[str, float]], int]:
        async with StateProxy(settings=settings, max_pending=2000, batch_max_ops=500) as p:
            await p.syn_up("cnt", "gone-warm", "add", 1)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            ended: list[tuple[str, float]] = []
            accepted = 0
            with anyio.fail_after(60):
                while accepted < 50_000:
                    t0 = time.monotonic()
                    try:
                        await p.aupdate("cnt", f"gone{accepted}", "add", 1)
                    except Backpressure:
                        ended.append(("aupdate: Backpressure", time.monotonic() - t0))
                        break
                    accepted += 1
                    ended.append(("aupdate", time.monotonic() - t0))
                for name in ("wait_room", "syn_up"):
                    t0 = time.monotonic()
                    try:
                        if name == "wait_room":
                            await p.wait_room(100)
                        else:
                            await p.syn_up("cnt", "gone-sync", "add", 1)
                        ended.append((f"{name}: no error", time.monotonic() - t0))
                    except (Backpressure, DeliveryTimeout) as e:
                        ended.append((f"{name}: {type(e).__name__}", time.monotonic() - t0))
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            with anyio.fail_after(60):
                await p.flush()
                sample = [await p.syn_retrieve("cnt", f"gone{i}") for i in range(0, accepted, max(1, accepted // 50))]
                assert sample == [1] * len(sample)  # what was accepted applies once
                assert await p.syn_retrieve("cnt", f"gone{accepted}") is None  # what was refused: not at all
            return ended, accepted

    ended, accepted = anyio.run(go)
    longest = max(ended, key=lambda e: e[1])
    print(f"\n[coordinator gone] accepted {accepted} updates; then {ended[-3:]}; longest call {longest}")
    assert ended[-3][0] == "aupdate: Backpressure"
    assert ended[-2][0] == "wait_room: Backpressure"
    assert ended[-1][0] in ("syn_up: Backpressure", "syn_up: DeliveryTimeout")
    assert longest[1] <= bound + 1.0, longest  # every call ended within the bound (plus slack)
    assert accepted <= 4 * 2000 + 500  # bounded: each node's channel, plus the buffer
