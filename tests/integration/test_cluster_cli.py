"""`cogs cluster up/status/down` for real: 3 primaries + 3 replicas on loopback; the
library survives a primary's crash (failover) and a full restart (AOF)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
import redis
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import LocalCluster, _alive
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.deployment import CONFIG_PATH
from cogs.errors import ClusterError
from cogs.keys import escape, slot
from cogs.ports import free_port_base
from cogs.protocol import Mode
from tests.conftest import Standalone


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


def _wait(test: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_cluster_lifecycle_failover_and_restart(tmp_path: Path) -> None:
    port = free_port_base(6)
    opts = ["--port", str(port), "--dir", str(tmp_path)]
    code, out = _cli("cluster", "up", *opts, "--replicas", "1")
    assert code == 0, out
    url = out.strip().splitlines()[-1]
    assert url == f"redis://127.0.0.1:{port}"
    lc = LocalCluster.from_dir(port, tmp_path)
    try:
        assert lc.replicas == 1
        keeper = lc.keeper_pid()  # `cluster up` started the keeper (usage limits), running on this dir
        assert keeper is not None
        code, out = _cli("cluster", "status", *opts)
        assert code == 0, out
        assert out.count("master") == 3
        assert out.count("slave") == 3
        for p in lc.ports:  # every node runs the shared config file
            with redis.Redis(port=p) as r:
                assert r.info("server")["config_file"] == str(CONFIG_PATH)
                assert r.config_get("appendonly") == {"appendonly": "yes"}
                _wait(lambda r=r: r.function_list(library="cogs") != [])

        keys = [f"k{i}" for i in range(30)]

        async def write() -> dict[str, int]:
            async with Coordinator(url=url) as co:
                table = await StateTable.open(co)
                await table.execute([Op(Mode.UPDATE, "scan_ports", k, "add", "22") for k in keys])
                return {k: co.topology.node_of(slot(escape(k))) for k in keys} if co.topology else {}

        anyio.run(write)
        for p in lc.ports[:3]:
            with redis.Redis(port=p) as r:
                assert r.execute_command("WAIT", 1, 5000) == 1

        # kill -9 the first primary: its replica takes over, with the library
        victim = lc.ports[0]
        os.kill(int((lc.node_dir(victim) / "redis.pid").read_text()), signal.SIGKILL)
        t0 = time.monotonic()

        def promoted() -> bool:
            # every surviving node must serve the victim's slots from its promoted replica
            for p in lc.ports[1:]:
                with redis.Redis(port=p) as r:
                    ports = {int(e[2][1]) for e in r.execute_command("CLUSTER", "SLOTS")}
                    if victim in ports or "cluster_state:ok" not in r.execute_command("CLUSTER", "INFO").decode():
                        return False
            return True

        _wait(promoted, 30)
        pause = time.monotonic() - t0

        async def read_back() -> list[object]:
            async with Coordinator(url=f"redis://127.0.0.1:{lc.ports[1]}") as co:
                assert co.topology is not None
                assert victim not in {n.port for n in co.topology.nodes}
                table = await StateTable.open(co)
                return await table.execute([Op(Mode.RETRIEVE, "scan_ports", k, "members") for k in keys])

        assert anyio.run(read_back) == [{"22"}] * len(keys), f"after a {pause:.1f}s failover"

        # full restart: AOF brings back states and the library
        code, out = _cli("cluster", "down", *opts)
        assert code == 0, out
        assert lc.keeper_pid() is None
        assert not _alive(keeper)
        code, out = _cli("cluster", "status", *opts)
        assert code == 1
        lc.start_node(victim)  # the old primary rejoins as a replica
        code, out = _cli("cluster", "up", *opts, "--replicas", "1")
        assert code == 0, out
        assert anyio.run(read_back) == [{"22"}] * len(keys)
    finally:
        lc.down(purge=True)


def test_persistence_none_runs_without_aof_and_is_kept_across_restarts(tmp_path: Path) -> None:
    port = free_port_base(3)
    opts = ["--port", str(port), "--dir", str(tmp_path)]
    code, out = _cli("cluster", "up", *opts, "--persistence", "none")
    assert code == 0, out
    lc = LocalCluster.from_dir(port, tmp_path)
    try:
        assert lc.persistence == "none"
        for p in lc.ports:
            with redis.Redis(port=p) as r:
                assert r.config_get("appendonly") == {"appendonly": "no"}
        assert "started 3 redis-server node(s)" in out
        lc.stop_node(lc.ports[1], hard=True)  # one node crashed: `up` starts that one only, and says so
        code, out = _cli("cluster", "up", *opts)
        assert code == 0, out
        assert f"started 1 redis-server node(s) on ports {port}-{port + 2} (2 already running)" in out
        code, out = _cli("cluster", "down", *opts)
        assert code == 0, out
        code, out = _cli("cluster", "up", *opts)  # no flag: the cluster keeps what it was started with
        assert code == 0, out
        for p in lc.ports:
            with redis.Redis(port=p) as r:
                assert r.config_get("appendonly") == {"appendonly": "no"}
        # --dir alone finds the cluster's ports (it stopped nothing at 7000-7002 and said it
        # had); a --port other than the recorded one is refused, naming both
        code, out = _cli("cluster", "down", "--dir", str(tmp_path), "--port", str(port + 100))
        assert code == 2, out
        assert f"started with --port {port}, not {port + 100}" in out
        code, out = _cli("cluster", "down", "--dir", str(tmp_path))
        assert code == 0, out
        assert f"stopped nodes on ports {port}-{port + 2}" in out
        for p in lc.ports:
            with pytest.raises(redis.ConnectionError), redis.Redis(port=p, socket_connect_timeout=1) as r:
                r.ping()
    finally:
        lc.down(purge=True)
    with pytest.raises(ClusterError, match="unknown persistence 'rdb'"):
        LocalCluster(port=port, dir=tmp_path, persistence="rdb")


def test_up_refuses_a_busy_port(standalone: Standalone, tmp_path: Path) -> None:
    code, out = _cli("cluster", "up", "--port", str(standalone.port), "--dir", str(tmp_path), "--masters", "1")
    assert code == 1
    assert "already in use" in out


def test_standalone_redis_works_as_coordinator(standalone: Standalone) -> None:
    from tests.helpers import make_catalog

    catalog = make_catalog()

    async def go() -> None:
        async with Coordinator(url=standalone.url) as co:
            assert co.topology is not None
            assert not co.topology.cluster
            await co.load_library(catalog)
            table = await StateTable.open(co, catalog)
            await table.update("hits", "solo", "add", 20)
            assert await table.retrieve("hits", "solo") == 20
            from cogs.alerts import read_alerts

            assert [a.key for a in await read_alerts(co, state="hits")][-1:] == ["solo"]

    standalone.client().flushall()
    anyio.run(go)


def test_a_coordinator_without_the_library_says_how_to_load_it(tmp_path: Path) -> None:
    from cogs.paths import DEFAULT_CATALOG

    fresh = Standalone(free_port_base(1), tmp_path)
    try:
        code, out = _cli("catalog", "show", "--url", fresh.url)
    finally:
        fresh.stop()
    assert code == 1, out
    flat = " ".join(out.split())
    assert "cogs catalog load PATH" in flat
    assert str(DEFAULT_CATALOG) in flat.replace(" ", "") or str(DEFAULT_CATALOG) in flat


def test_down_stops_every_node_of_its_dir(tmp_path: Path) -> None:
    """An object made before the cluster grew (a fixture, say) stops the nodes the
    growth added too: before, a locked test cluster scaled to 4+1 left 2 nodes running."""
    port = free_port_base(4)
    lc = LocalCluster(port=port, masters=3, dir=tmp_path)
    lc.up()
    grown = LocalCluster(port=port, masters=4, dir=tmp_path)
    try:
        assert grown.start_node(port + 3)  # a node the 3-primary object does not list
        assert grown._pid(port + 3) is not None
        lc.down()
        assert all(grown._pid(p) is None for p in grown.ports)
    finally:
        grown.down()
