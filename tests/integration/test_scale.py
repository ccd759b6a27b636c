"""An elastic coordinator: `cogs cluster scale` grows a running cluster from 3 to 6
primaries and shrinks it back while proxies in other processes keep sending trigger
updates and replica-mode syn_ups (tests/scale_load.py); every update is applied
exactly once (final sums equal what was issued; every syn_up answers the previous
value + 1). The same on the lab: test_scale_lab.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.frames import runs
from cogs.coordinator.ops import Op, StateTable
from cogs.keys import alert_stream, slot
from cogs.ports import free_port_base
from cogs.protocol import Mode
from tests.conftest import serving
from tests.helpers import LuaHarness, make_catalog

PROXIES = 3
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def elastic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with serving(LocalCluster(port=free_port_base(6), masters=3, dir=tmp_path_factory.mktemp("elastic"))) as lc:
        yield lc


def _myid(r: redis.Redis) -> str:
    return str(r.execute_command("CLUSTER", "MYID").decode())


def test_an_op_refused_mid_migration_writes_nothing(elastic: LocalCluster) -> None:
    """While a key's slot is being migrated its node refuses commands on keys of the
    slot it lacks; a replica-mode update (whose holder table does not exist) used to
    write the value first and fail after: reported MOVED, re-sent, applied twice."""
    lc = elastic
    key = "mid-migration"
    s = slot(key)
    with redis.Redis(port=lc.port) as r:
        entry = next(e for e in r.execute_command("CLUSTER", "SLOTS") if e[0] <= s <= e[1])
    port = int(entry[2][1])
    owner, other = redis.Redis(port=port), redis.Redis(port=next(p for p in lc.ports if p != port))
    h = LuaHarness(owner, make_catalog())
    stream = alert_stream(entry[0] if entry[0] != s else entry[1])  # another slot of the key's node

    def syn_up() -> list[Any]:
        return list(h.raw(json.dumps(runs([h.op(Mode.UPDATE_GET, "nat", key, "add", 5)])), stream=stream))

    assert syn_up()[0] == 1
    other.execute_command("CLUSTER", "SETSLOT", s, "IMPORTING", _myid(owner))
    owner.execute_command("CLUSTER", "SETSLOT", s, "MIGRATING", _myid(other))
    try:
        reply = syn_up()
        assert reply[0] == 0, reply
        assert b"MOVED" in reply[1][1], reply
        assert owner.get(f"cogs:nat:{{{key}}}") == b"5"  # refused, and nothing written
    finally:
        for c in (owner, other):
            c.execute_command("CLUSTER", "SETSLOT", s, "STABLE")
        other.close()
    assert syn_up()[0] == 1
    owner.close()


def _start_load(argv_prefix: list[str], url: str, n: int, stop: Path) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [*argv_prefix, sys.executable, "-m", "tests.scale_load", url, f"p{i}:", str(stop)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(n)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    return procs


def _results(procs: list[subprocess.Popen[str]], stop: Path) -> list[dict[str, Any]]:
    stop.touch()
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=120)
        assert p.returncode == 0, stdout
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


async def _read(url: str, ops: list[Op]) -> list[Any]:
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        return list(await table.execute(ops))


def _ops(results: list[dict[str, Any]]) -> list[Op]:
    ops = [Op(Mode.RETRIEVE, k.split("/")[0], k, None) for res in results for k in res["issued"]]
    return ops + [Op(Mode.RETRIEVE, "nat", k, None) for res in results for k in res["syn"]]


def _check(results: list[dict[str, Any]], values: list[Any]) -> str:
    """Every update applied exactly once; returns a one-line report."""
    want = [v for res in results for v in res["issued"].values()] + [v for res in results for v in res["syn"].values()]
    keys = [k for res in results for k in res["issued"]] + [k for res in results for k in res["syn"]]
    wrong = {k: (got, w) for k, got, w in zip(keys, values, want, strict=True) if int(got or 0) != w}
    rerouted = sum(res["rerouted"] for res in results)
    report = (
        f"{sum(sum(res['issued'].values()) for res in results)} updates and "
        f"{sum(sum(res['syn'].values()) for res in results)} syn_ups from {len(results)} proxies; re-routed {rerouted}"
    )
    print(report)
    assert not wrong, (wrong, report)  # nothing lost, nothing applied twice
    assert all(not res["jumps"] for res in results), results  # every syn_up answered previous + 1
    assert all(res["errors"] == 0 for res in results), [res["errors"] for res in results]
    assert rerouted > 0, report  # ops did meet moving slots
    assert all(sum(res["syn"].values()) > 20 for res in results), report  # the load ran throughout
    return report


@pytest.mark.slow
def test_grow_3_to_6_and_back_under_load(elastic: LocalCluster, tmp_path: Path) -> None:
    lc = elastic
    stop = tmp_path / "stop"
    procs = _start_load([], lc.url, PROXIES, stop)
    try:
        time.sleep(1.0)
        lines: list[str] = []
        grow = lc.scale(6, progress=lines.append)
        assert grow.after == (6, 6), grow
        assert grow.added == ("node4", "node5", "node6"), grow
        assert grow.slots_moved == 16384 // 2 - 1, grow
        assert grow.keys_moved > 0, grow
        assert any("before any slot" in line for line in lines), lines  # the library went first
        time.sleep(1.0)
        # shrink through the command line, as an operator would
        r = subprocess.run(
            [sys.executable, "-m", "cogs.cli", "cluster", "scale", "--masters", "3", "--port", str(lc.port),
             "--dir", str(lc.dir)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "moving slots" in r.stderr, r.stderr
        assert "removed node4, node5, node6" in r.stderr, r.stderr
        assert r.stdout.strip() == lc.url
        time.sleep(1.0)
    finally:
        results = _results(procs, stop)
    _check(results, anyio.run(_read, lc.url, _ops(results)))

    final = LocalCluster.from_dir(lc.port, lc.dir)
    assert (final.masters, final.size) == (3, 3)
    status = final.status()
    assert [s.role for s in status] == ["master"] * 3
    assert sum(s.slots for s in status) == 16384
    for port in (lc.port + 3, lc.port + 4, lc.port + 5):  # the nodes that left are gone
        assert not lc.node_dir(port).exists()
