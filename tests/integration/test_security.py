"""Access control and TLS: proxies run as a Redis ACL user allowed only what they
need; the monitor user only reads; TLS URLs work end to end on a local cluster."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from click.testing import CliRunner

from cogs.alerts import read_alerts
from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import StateTable
from cogs.errors import CogsError
from cogs.nf.nat_table import NatTable
from cogs.ports import free_port_base
from cogs.proxy import MISS, StateProxy
from cogs.settings import load_settings
from tests.conftest import Standalone, load_default_catalog
from tests.helpers import eventually

PROXY_PW, MONITOR_PW = "proxy-secret-123", "monitor-secret-456"


@pytest.fixture(scope="module")
def acl_cluster(cluster: LocalCluster) -> LocalCluster:
    r = CliRunner().invoke(
        main, ["acl", "apply", "--url", cluster.url, "--proxy-password", PROXY_PW, "--monitor-password", MONITOR_PW]
    )
    assert r.exit_code == 0, r.output
    assert "set on 3 node(s)" in r.output
    return cluster


def _as(cluster: LocalCluster, user: str, pw: str) -> redis.Redis:
    return redis.Redis(port=cluster.port, username=user, password=pw)


def test_proxy_user_runs_a_proxy(acl_cluster: LocalCluster) -> None:
    settings = load_settings(url=acl_cluster.url, username="cogs-proxy", password=PROXY_PW)

    async def go() -> None:
        async with StateProxy(settings=settings) as a, StateProxy(settings=settings) as b:
            for i in range(50):
                a.update("hits", f"acl{i % 5}", "add", 3)  # threshold 10: alerts too
            await a.flush()
            assert await a.syn_retrieve("hits", "acl1") == 30
            await a.syn_up("nat", "acl-f", "set", 7)
            assert await b.syn_retrieve("nat", "acl-f") == 7  # replica registered
            await a.syn_up("nat", "acl-f", "add", 1)  # discard published on a cogs channel
            await eventually(lambda: b.statistics().discards >= 1)
            assert b.cached("nat", "acl-f") is MISS
            assert a.statistics().errors == 0

    anyio.run(go)


#: what no cogs user may do: change or read outside cogs:*, run admin commands, load or
#: read code, or list the keyspace / channels / clients (key patterns do not filter
#: SCAN and friends, so these are refused as commands)
DENIED_TO_BOTH = [
    ("FLUSHALL",), ("GET", "not-cogs"), ("SET", "other", "1"), ("CONFIG", "GET", "*"), ("SHUTDOWN",),
    ("FUNCTION", "DELETE", "cogs"), ("FUNCTION", "FLUSH"), ("FUNCTION", "DUMP"), ("EVAL", "return 1", "0"),
    ("SCRIPT", "FLUSH"), ("KEYS", "*"), ("SCAN", "0"), ("SCAN", "0", "MATCH", "cogs:*"), ("RANDOMKEY",),
    ("PUBSUB", "CHANNELS"), ("PUBSUB", "NUMSUB", "cogs:alerts"), ("PUBSUB", "SHARDCHANNELS"), ("PSUBSCRIBE", "cogs:*"),
    ("CLIENT", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("CLIENT", "TRACKING", "ON", "BCAST"),
    ("SLOWLOG", "GET"), ("MONITOR",), ("LATENCY", "LATEST"), ("ACL", "LIST"),
    ("CLUSTER", "GETKEYSINSLOT", "0", "10"), ("CLUSTER", "COUNTKEYSINSLOT", "0"), ("OBJECT", "ENCODING", "cogs:x"),
    ("MEMORY", "USAGE", "not-cogs"), ("MEMORY", "STATS"), ("MEMORY", "DOCTOR"), ("DUMP", "cogs:x"),
    ("SUBSCRIBE", "not-cogs"),
]  # fmt: skip


@pytest.mark.parametrize("cmd", DENIED_TO_BOTH, ids=" ".join)
@pytest.mark.parametrize("user", ["cogs-proxy", "cogs-monitor"])
def test_cogs_users_cannot(acl_cluster: LocalCluster, user: str, cmd: tuple[str, ...]) -> None:
    pw = PROXY_PW if user == "cogs-proxy" else MONITOR_PW
    with _as(acl_cluster, user, pw) as r, pytest.raises(redis.exceptions.NoPermissionError):
        r.execute_command(*cmd)


@pytest.mark.parametrize(
    ("user", "cmd"),
    [
        ("cogs-proxy", ("PING",)), ("cogs-proxy", ("INFO", "cluster")), ("cogs-proxy", ("CLUSTER", "SLOTS")),
        ("cogs-proxy", ("SET", "cogs:proxy:{me}", "x", "PX", "1000")), ("cogs-proxy", ("GET", "cogs:proxy:{me}")),
        ("cogs-proxy", ("ZADD", "cogs:proxies", "1", "me")), ("cogs-proxy", ("FCALL_RO", "cogs_info", "0")),
        ("cogs-proxy", ("WAIT", "0", "1")), ("cogs-proxy", ("TIME",)),
        ("cogs-proxy", ("MEMORY", "USAGE", "cogs:x")),  # its NF's keys only: what a new entry takes (limits)
        ("cogs-monitor", ("PING",)), ("cogs-monitor", ("INFO",)), ("cogs-monitor", ("CLUSTER", "NODES")),
        ("cogs-monitor", ("FCALL_RO", "cogs_info", "0")), ("cogs-monitor", ("ZRANGE", "cogs:proxies", "0", "-1")),
        ("cogs-monitor", ("GET", "cogs:proxy:{me}")), ("cogs-monitor", ("XREVRANGE", "cogs:alerts:{0}", "+", "-")),
    ],
)  # fmt: skip
def test_cogs_users_can(acl_cluster: LocalCluster, user: str, cmd: tuple[str, ...]) -> None:
    pw = PROXY_PW if user == "cogs-proxy" else MONITOR_PW
    with _as(acl_cluster, user, pw) as r, contextlib.suppress(redis.exceptions.MovedError):
        r.execute_command(*cmd)  # (MOVED: allowed, and served by another node)


def test_monitor_user_writes_nothing(acl_cluster: LocalCluster) -> None:
    with _as(acl_cluster, "cogs-monitor", MONITOR_PW) as r:
        for cmd in (
            ("SET", "cogs:x", "1"),
            ("DEL", "cogs:x"),
            ("FCALL", "cogs_batch", "0"),
            ("PUBLISH", "cogs:alerts", "x"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*cmd)


def test_proxy_user_keys_and_channels_are_cogs_only(acl_cluster: LocalCluster) -> None:
    """cogs:* keys and channels: yes; anything else: no."""
    with _as(acl_cluster, "cogs-proxy", PROXY_PW) as r:
        r.set("cogs:allowed", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.publish("not-cogs", "x")
    with redis.Redis(port=acl_cluster.port) as admin:
        assert admin.get("cogs:allowed") == b"1"


def test_monitor_user_reads_only(acl_cluster: LocalCluster) -> None:
    settings = load_settings(url=acl_cluster.url, username="cogs-monitor", password=MONITOR_PW)

    async def go() -> None:
        async with Coordinator(settings) as co:
            await read_alerts(co)
            info = await co.node_info(0)
            assert info["version"] == co.spec.version
            table = await StateTable.open(co)
            with pytest.raises(CogsError, match=r"NOPERM|permission"):
                await table.update("cnt", "mon", "add", 1)

    anyio.run(go)
    with _as(acl_cluster, "cogs-monitor", MONITOR_PW) as r:
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set("cogs:x", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.get("not-cogs")


def test_acl_passwords_must_be_long(cluster: LocalCluster) -> None:
    r = CliRunner().invoke(
        main, ["acl", "apply", "--url", cluster.url, "--proxy-password", "short", "--monitor-password", MONITOR_PW]
    )
    assert r.exit_code == 2
    assert "at least 12 characters" in r.output


def test_acl_users_survive_a_node_restart(tmp_path: Path) -> None:
    """ACL SAVE into the shared config's aclfile: a restarted node keeps the users."""
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "acl")
    lc.up()
    try:
        r = CliRunner().invoke(
            main, ["acl", "apply", "--url", lc.url, "--proxy-password", PROXY_PW, "--monitor-password", MONITOR_PW]
        )
        assert r.exit_code == 0, r.output
        assert "not saved" not in r.output
        port = lc.ports[1]
        assert "user cogs-proxy" in (lc.node_dir(port) / "users.acl").read_text()
        lc.stop_node(port)
        lc.start_node(port)
        with redis.Redis(port=port, username="cogs-proxy", password=PROXY_PW) as c:
            assert c.ping()
            with pytest.raises(redis.exceptions.NoPermissionError):
                c.execute_command("FLUSHALL")
    finally:
        lc.down()


def test_acl_apply_names_the_nodes_that_cannot_keep_the_users(standalone: Standalone) -> None:
    r = CliRunner().invoke(
        main, ["acl", "apply", "--url", standalone.url, "--proxy-password", PROXY_PW, "--monitor-password", MONITOR_PW]
    )
    assert r.exit_code == 0, r.output
    assert f"not saved on 127.0.0.1:{standalone.port}: no aclfile configured there" in r.output
    with redis.Redis(port=standalone.port, username="cogs-proxy", password=PROXY_PW) as c:
        assert c.ping()  # set all the same, until that node restarts


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path_factory.mktemp("tls"), tls=True)
    lc.up()
    try:
        yield lc
    finally:
        lc.down()


@pytest.mark.slow
def test_tls_cluster_end_to_end(tls_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tls_cluster.tls_files
    assert files is not None
    assert tls_cluster.url.startswith("rediss://")
    with pytest.raises(redis.ConnectionError):  # no plain-text port at all
        redis.Redis(port=tls_cluster.port, socket_timeout=2).ping()
    monkeypatch.setenv("COGS_TLS_CA_FILE", str(files.ca))
    load_default_catalog(tls_cluster.url)

    async def go() -> None:
        async with StateProxy(tls_cluster.url) as a, StateProxy(tls_cluster.url) as b:
            for port in range(20):
                a.update("scan_ports", "6.6.6.6>10.0.0.1", "add", str(port))
            await a.flush()
            na, nb = NatTable(a, "nat"), NatTable(b, "nat")
            ext = await na.outbound(6, "10.0.0.5", 40000)
            assert ext is not None
            assert await nb.inbound(6, *ext) == ("10.0.0.5", 40000)  # b now caches the mapping
            assert await na.release(6, "10.0.0.5", 40000)
            await eventually(lambda: b.statistics().discards >= 1)  # discards travel over TLS
            async with Coordinator(url=tls_cluster.url) as co:
                alerts = await read_alerts(co, state="scan_ports")
            assert [x.key for x in alerts] == ["6.6.6.6>10.0.0.1"]

    anyio.run(go)
    r = CliRunner().invoke(main, ["alerts", "--url", tls_cluster.url, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.splitlines()[0])["state"] == "scan_ports"


def test_the_monitor_runs_as_the_monitor_user(acl_cluster: LocalCluster) -> None:
    """Least privilege costs the monitor its state counts (SCAN would list every key
    name), not its view: nodes healthy, the catalog, proxies and alerts shown."""
    url = acl_cluster.url.replace("redis://", f"redis://cogs-monitor:{MONITOR_PW}@")
    r = CliRunner().invoke(main, ["monitor", "--once", "--json", "--url", url])
    assert r.exit_code == 0, r.output
    snap = json.loads(r.output)
    assert snap["problem"] == ""
    assert {n["role"] for n in snap["nodes"]} == {"primary"}
    assert not any(n["problem"] for n in snap["nodes"])
    assert "may not SCAN" in snap["counts_note"]
    assert {s["name"] for s in snap["states"]} >= {"cnt", "nat"}
