"""Per-key order of non-commutative ops, across paths and slot moves (issue 15, attack pass).

Ops of one key issued one after the other must apply in that order, whichever path
each takes (``update()``'s lanes, ``asyn_up``'s request queue) and however often the
key's slot moves between nodes meanwhile (ops refused ``MOVED``/``ASK`` are re-queued
and must keep their place before newer ops of the key, including ops already sent
straight to the new owner). Ops are chosen so that any reordering shows: ``set`` and
``add`` on counters, ``add`` and ``remove`` of one member on sets. The final state
must equal the sequential result.

Before the fix: a lane op issued after a queued request of the same key was sent
before it (lanes went first in every frame), and re-queued ops went behind newer
ops of their key.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.errors import ClusterError, CogsError
from cogs.keys import escape, slot
from cogs.ports import free_port_base
from cogs.proxy import StateProxy
from cogs.reshard import Admin, Member, Mover
from tests.conftest import serving


@pytest.fixture
def movable(tmp_path: Path) -> Iterator[LocalCluster]:
    with serving(LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "c"), purge=True) as lc:
        yield lc


def _sequential(ops: list[tuple[str, str, str]]) -> dict[str, str]:
    """What the ops give applied one by one in issue order."""
    out: dict[str, str] = {}
    for key, op, arg in ops:
        out[key] = arg if op == "set" else out.get(key, "") + arg
    return out


def _mover(lc: LocalCluster, slots: list[int], stop: threading.Event, moves: list[int]) -> None:
    """Move each of ``slots`` to another primary, again and again, until ``stop``."""
    admin = Admin()
    try:
        members = {m.id: m for m in admin.members(("127.0.0.1", lc.port)) if m.primary}
        owner: dict[int, str] = {}
        for entry in admin(("127.0.0.1", lc.port)).execute_command("CLUSTER", "SLOTS"):
            nid = entry[2][2]
            for s in slots:
                if int(entry[0]) <= s <= int(entry[1]):
                    owner[s] = nid.decode() if isinstance(nid, bytes) else nid
        while not stop.is_set():
            for s in slots:
                src = members[owner[s]]
                dst = next(m for m in members.values() if m.id != src.id)
                try:
                    Mover(admin).move(src, dst, [s], [m for m in members.values() if m.id not in (src.id, dst.id)])
                except ClusterError:
                    owner[s] = _settle(admin, members, s)
                    continue
                owner[s] = dst.id
                moves[0] += 1
            time.sleep(0.05)
    finally:
        admin.close()


def _owner_seen(admin: Admin, m: Member, s: int) -> str | None:
    for entry in admin(m.addr).execute_command("CLUSTER", "SLOTS"):
        if int(entry[0]) <= s <= int(entry[1]):
            nid = entry[2][2]
            return nid.decode() if isinstance(nid, bytes) else str(nid)
    return None


def _settle(admin: Admin, members: dict[str, Member], s: int) -> str:
    """A move that failed half done: on a busy box a node can lose a slot just moved to it
    to a stale claim that gossip brings late (Redis Cluster's config epochs), and then
    refuses to migrate it ("I'm not the owner"), leaving the slot importing elsewhere. The
    slot goes to the primary holding its keys, told to that one first (it bumps its
    epoch), then to the others, until every primary agrees. The owner's id."""
    holders = [m for m in members.values() if int(admin(m.addr).execute_command("CLUSTER", "COUNTKEYSINSLOT", s))]
    assert len(holders) <= 1, f"slot {s}: keys on {[m.name for m in holders]} (a MIGRATE cut off mid-way)"
    owner = holders[0].id if holders else Counter(_owner_seen(admin, m, s) for m in members.values()).most_common(1)[0][0]
    assert owner is not None
    deadline = time.monotonic() + 20
    while any(_owner_seen(admin, m, s) != owner for m in members.values()):
        assert time.monotonic() < deadline, f"slot {s}: the primaries do not agree on its owner"
        for m in sorted(members.values(), key=lambda m: m.id != owner):  # the owner first
            admin(m.addr).execute_command("CLUSTER", "SETSLOT", s, "STABLE")
            admin(m.addr).execute_command("CLUSTER", "SETSLOT", s, "NODE", owner)
        time.sleep(0.2)
    for m in members.values():  # no importing/migrating mark left behind
        admin(m.addr).execute_command("CLUSTER", "SETSLOT", s, "STABLE")
    return owner


async def _issue(p: StateProxy, rng: random.Random, keys: list[str], n: int, log: list[tuple[str, str, str]]) -> None:
    """``n`` rounds of ops on ``keys``, in one task, in issue order: appends (and now
    and then a set) of a string, so the final value spells the whole order. Keys named
    ``lane...`` get ``update()`` only (what MOVED re-queues must keep in order by
    itself), the others ``update()`` and ``asyn_up`` (the request path) interleaved."""
    for i in range(n):
        for k in keys:
            op = "set" if rng.random() < 0.02 else "append"
            tok = f"{len(log) % 1000}."
            if k.startswith("lane") or rng.random() < 0.6:
                p.update("mapping", k, op, tok)
            else:
                p.asyn_up("mapping", k, op, tok, _ignore)
            log.append((k, op, tok))
        if i % 5 == 4:
            await anyio.sleep(0.002)


def _ignore(_v: Any, _p: Any) -> None:
    pass


@pytest.mark.anyio
async def test_lane_and_request_ops_of_a_key_keep_issue_order(movable: LocalCluster) -> None:
    """No slot moves: ``update()`` and ``asyn_up`` interleaved on the same keys."""
    rng = random.Random(7)
    log: list[tuple[str, str, str]] = []
    errors: list[CogsError] = []
    keys = [f"mixed-order{i}" for i in range(12)]
    async with StateProxy(movable.url, on_error=lambda e, _p: errors.append(e)) as p:
        await _issue(p, rng, keys, 300, log)
        await p.flush()
        got = {k: await p.syn_retrieve("mapping", k) for k in keys}
    assert not errors, errors[:3]
    want = _sequential(log)
    wrong = [k for k in keys if got[k] != want[k]]
    assert not wrong, (
        f"{len(wrong)} of {len(keys)} keys differ from the sequential result, e.g. {_diff(got, want, wrong)}"
    )


@pytest.mark.slow
def test_ops_keep_issue_order_while_their_slots_move(movable: LocalCluster) -> None:
    """The keys' slots move to another node and back over and over while ops flow:
    MOVED/ASK re-queues keep each key's ops in issue order."""
    rng = random.Random(11)
    log: list[tuple[str, str, str]] = []
    errors: list[CogsError] = []
    keys = [f"mixed-move{i}" for i in range(5)] + [f"lane-move{i}" for i in range(5)]
    slots = sorted({slot(escape(k)) for k in keys})
    stop = threading.Event()
    moves = [0]

    async def go() -> dict[str, str]:
        async with StateProxy(movable.url, on_error=lambda e, _p: errors.append(e)) as p:
            mover = threading.Thread(target=_mover, args=(movable, slots, stop, moves), daemon=True)
            mover.start()
            try:
                t_end = time.monotonic() + 6
                while time.monotonic() < t_end and mover.is_alive():
                    await _issue(p, rng, keys, 20, log)
                    await anyio.sleep(0.005)
            finally:
                stop.set()
                await anyio.to_thread.run_sync(mover.join, 60)
            with anyio.fail_after(60):
                await p.flush()
                got = {k: await p.syn_retrieve("mapping", k) for k in keys}
            stats = p.statistics()
            print(f"\n[slot moves] {moves[0]} moves, {len(log)} ops, re-routed {stats.rerouted}")
            assert stats.rerouted > 0  # ops did come back MOVED/ASK
            return got

    got = anyio.run(go)
    want = _sequential(log)
    assert moves[0] >= 10
    assert not errors, errors[:3]
    wrong = [k for k in keys if got[k] != want[k]]
    assert not wrong, (
        f"{len(wrong)} of {len(keys)} keys differ from the sequential result, e.g. {_diff(got, want, wrong)}"
    )


def _diff(got: dict[str, str], want: dict[str, str], wrong: list[str]) -> str:
    k = wrong[0]
    g, w = got[k] or "", want[k]
    i = next((j for j in range(min(len(g), len(w))) if g[j] != w[j]), min(len(g), len(w)))
    return f"{k}: from char {i} got {g[max(0, i - 20) : i + 20]!r}, want {w[max(0, i - 20) : i + 20]!r}"
