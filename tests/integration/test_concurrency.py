"""Several processes hammer shared keys on every primary: the final states must be
exactly the sums and unions of what was sent (accumulative updates, no lost update)."""

from __future__ import annotations

import multiprocessing as mp
import random

import anyio
import pytest

from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.keys import escape, slot
from cogs.protocol import Mode

PROCS, OPS_PER_PROC, KEYS = 4, 6000, 24


def _ops(proc: int) -> list[Op]:
    rng = random.Random(proc)
    out = []
    for i in range(OPS_PER_PROC):
        k = f"shared-{rng.randrange(KEYS)}"
        kind = i % 3
        if kind == 0:
            out.append(Op(Mode.UPDATE, "cnt", k, "add", rng.randrange(-5, 50)))
        elif kind == 1:
            out.append(Op(Mode.UPDATE, "ports", k, "add", f"p{proc}-{rng.randrange(2)}"))
        else:
            out.append(Op(Mode.UPDATE, "qtypes", k, "incr", {"all": 1, "odd": rng.randrange(2)}))
    return out


async def _send(url: str, proc: int) -> int:
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        ops = _ops(proc)
        for i in range(0, len(ops), 500):
            res = await table.execute(ops[i : i + 500])
            bad = [r for r in res if r is not None]
            assert not bad, bad[:3]
        return len(ops)


def _proc(url: str, proc: int, q: mp.Queue[int | str]) -> None:
    try:
        q.put(anyio.run(_send, url, proc))
    except BaseException as e:  # report, so the parent fails at once instead of waiting
        q.put(f"process {proc} failed: {e!r}")
        raise


@pytest.mark.slow
def test_exact_sums_and_sets_across_processes(cluster: LocalCluster) -> None:
    ctx = mp.get_context("spawn")
    q: mp.Queue[int | str] = ctx.Queue()
    ps = [ctx.Process(target=_proc, args=(cluster.url, p, q)) for p in range(PROCS)]
    for p in ps:
        p.start()
    sent = [q.get(timeout=120) for _ in ps]
    assert all(isinstance(x, int) for x in sent), sent
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    assert sum(x for x in sent if isinstance(x, int)) == PROCS * OPS_PER_PROC

    want_cnt: dict[str, int] = {}
    want_tags: dict[str, set[str]] = {}
    want_map: dict[str, dict[str, int]] = {}
    for proc in range(PROCS):
        for op in _ops(proc):
            if op.state == "cnt":
                want_cnt[op.key] = want_cnt.get(op.key, 0) + op.arg
            elif op.state == "ports":
                want_tags.setdefault(op.key, set()).add(op.arg)
            else:
                m = want_map.setdefault(op.key, {"all": 0, "odd": 0})
                m["all"] += 1
                m["odd"] += op.arg["odd"]

    async def read() -> None:
        async with Coordinator(url=cluster.url) as co:
            assert co.topology is not None
            assert {co.topology.node_of(slot(escape(k))) for k in want_cnt} == {0, 1, 2}
            table = await StateTable.open(co)
            keys = sorted(want_cnt)
            got = await table.execute(
                [Op(Mode.RETRIEVE, "cnt", k, "get") for k in keys]
                + [Op(Mode.RETRIEVE, "ports", k, "members") for k in keys]
                + [Op(Mode.RETRIEVE, "qtypes", k, "all") for k in keys]
            )
            n = len(keys)
            assert dict(zip(keys, got[:n], strict=True)) == want_cnt
            assert dict(zip(keys, got[n : 2 * n], strict=True)) == want_tags
            maps = {k: {f: int(v) for f, v in m.items()} for k, m in zip(keys, got[2 * n :], strict=True)}
            assert maps == want_map

    anyio.run(read)
