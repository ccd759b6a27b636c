"""An admin-locked coordinator end to end (issues 16 and 23): `cogs acl apply
--admin-password --cluster-dir` on a 3 + 1-replica cluster; strangers get NOAUTH for
everything on every node; proxies (ACL users) keep working; `cogs cluster down/up/
status/scale` on the dir authenticate by themselves (auth.conf); replicas resync after
a restart; a 3+1 -> 4+1 scale under load gives the new nodes the lock before they join
and counts every update exactly; a wrong admin password changes nothing."""

from __future__ import annotations

import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import redis
from click.testing import CliRunner

from cogs import adminauth
from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.ports import free_port_base
from cogs.proxy import MISS, StateProxy
from tests.conftest import _load
from tests.helpers import TEST_CATALOG, eventually, make_catalog
from tests.integration.test_scale import ROOT, _ops, _read, _results, _start_load
from tests.unit.test_adminauth import TRICKY

PROXY_PW, MONITOR_PW = "proxy-secret-123", "monitor-secret-456"
#: a quote and a backslash: auth.conf must say it as Redis' config parser reads it
ADMIN_PW = 'adm"in\\secret-789'
WRONG_PW = "not-the-admin-password"


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), env=env)
    return r.exit_code, r.output


def _admin(port: int) -> redis.Redis:
    return redis.Redis(port=port, username="default", password=ADMIN_PW)


def _raw(port: int, *cmd: str) -> bytes:
    """One command as a stranger would send it: RESP2 over a bare socket, no AUTH."""
    wire = f"*{len(cmd)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in cmd)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(wire)
        return s.recv(4096)


def _proxy_url(lc: LocalCluster) -> str:
    return f"redis://cogs-proxy:{PROXY_PW}@127.0.0.1:{lc.port}"


def _admin_url(lc: LocalCluster) -> str:
    return f"redis://default:{quote(ADMIN_PW, safe='')}@127.0.0.1:{lc.port}"


def _replicas_synced(lc: LocalCluster) -> bool:
    links = []
    for p in lc.ports:
        with _admin(p) as r:
            rep = r.info("replication")
        if rep["role"] == "slave":
            links.append(rep.get("master_link_status"))
    return len(links) == lc.masters * lc.replicas and all(x == "up" for x in links)


def _wait(test: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    d = tmp_path_factory.mktemp("locked")
    lc = LocalCluster(port=free_port_base(8), masters=3, replicas=1, dir=d)
    lc.up()
    try:
        anyio.run(_load, lc.url, make_catalog())
        code, out = _cli(  # no --url: the cluster dir's
            "acl", "apply", "--proxy-password", PROXY_PW, "--monitor-password", MONITOR_PW,
            "--admin-password", ADMIN_PW, "--cluster-dir", str(d),
        )  # fmt: skip
        assert code == 0, out
        assert "set on 6 node(s)" in out, out  # the replicas too, though they hold no data yet
        assert "locked: 6 node(s) refuse connections without credentials" in out, out
        yield lc
    finally:
        lc.down()


def test_strangers_get_noauth_for_everything_on_every_node(locked: LocalCluster) -> None:
    auth = locked.auth_file
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert adminauth.read(auth) == adminauth.AdminAuth(ADMIN_PW)
    assert ADMIN_PW not in repr(adminauth.read(auth))
    assert len(locked.ports) == 6
    for port in locked.ports:
        for cmd in (
            ("FLUSHALL",), ("FCALL", "cogs_batch", "0"), ("GET", "cogs:cnt:{x}"), ("CONFIG", "GET", "*"),
            ("FUNCTION", "DELETE", "cogs"), ("ACL", "LIST"), ("CLUSTER", "NODES"), ("HELLO", "3"),
        ):  # fmt: skip
            assert _raw(port, *cmd).startswith((b"-NOAUTH", b"-NOPERM")), (port, cmd, _raw(port, *cmd))
        assert _raw(port, "AUTH", "default", WRONG_PW).startswith(b"-WRONGPASS")
        with _admin(port) as r:
            assert r.function_list(library="cogs") != []  # the library is untouched
            assert r.config_get("masteruser") == {"masteruser": "default"}
            assert r.config_get("masterauth") == {"masterauth": ADMIN_PW}


def test_proxies_and_the_monitor_keep_working(locked: LocalCluster) -> None:
    async def go() -> None:
        async with StateProxy(_proxy_url(locked)) as a, StateProxy(_proxy_url(locked)) as b:
            for i in range(40):
                a.update("cnt", f"lk{i % 4}", "add", 2)
            await a.flush()
            assert await a.syn_retrieve("cnt", "lk1") == 20
            await a.syn_up("nat", "lk-f", "set", 7)
            assert await b.syn_retrieve("nat", "lk-f") == 7
            await a.syn_up("nat", "lk-f", "add", 1)  # a discard reaches b
            await eventually(lambda: b.statistics().discards >= 1)
            assert b.cached("nat", "lk-f") is MISS
            assert a.statistics().errors == 0

    anyio.run(go)
    code, out = _cli("alerts", "--url", f"redis://cogs-monitor:{MONITOR_PW}@127.0.0.1:{locked.port}", "--json")
    assert code == 0, out


def test_a_wrong_admin_password_changes_nothing(locked: LocalCluster) -> None:
    def snapshot() -> list[Any]:
        out: list[Any] = [locked.auth_file.read_bytes()]
        for p in locked.ports:
            with _admin(p) as r:
                out += [sorted(r.execute_command("ACL", "LIST")), r.config_get("masterauth")]
                out.append((locked.node_dir(p) / "users.acl").read_bytes())
        return out

    before = snapshot()
    new_proxy_pw = "another-proxy-secret"
    code, out = _cli(
        "acl", "apply", "--url", locked.url, "--proxy-password", new_proxy_pw, "--monitor-password", MONITOR_PW,
        "--admin-password", WRONG_PW, "--cluster-dir", str(locked.dir),
    )  # fmt: skip
    assert code == 2, out
    assert f"node 127.0.0.1:{locked.port}" in out, out
    assert "WRONGPASS" in out, out
    assert "locked with another password" in out, out
    assert "nothing was changed" in out, out
    # no admin password at all on a locked cluster: told what to give
    code, out = _cli(
        "acl", "apply", "--url", locked.url, "--proxy-password", new_proxy_pw, "--monitor-password", MONITOR_PW
    )
    assert code == 2, out
    assert "requires a password" in out, out
    assert "--admin-password" in out, out
    assert snapshot() == before
    for p in locked.ports:
        with redis.Redis(port=p, username="cogs-proxy", password=PROXY_PW) as r:
            assert r.ping()
        assert _raw(p, "AUTH", "cogs-proxy", new_proxy_pw).startswith(b"-WRONGPASS")


def test_commands_on_the_dir_name_a_missing_or_open_auth_conf(locked: LocalCluster) -> None:
    opts = ["--port", str(locked.port), "--dir", str(locked.dir)]
    auth, kept = locked.auth_file, locked.auth_file.with_suffix(".kept")
    auth.rename(kept)
    try:
        code, out = _cli("cluster", "status", *opts)
        assert code == 1, out
        assert f"{auth} is missing" in out.replace("\n", ""), out
        code, out = _cli("cluster", "scale", *opts, "--masters", "4")
        assert code == 1, out
        assert f"{auth} is missing" in out.replace("\n", ""), out
    finally:
        kept.rename(auth)
    auth.chmod(0o644)
    try:
        code, out = _cli("cluster", "status", *opts)
        assert code == 2, out
        assert f"chmod 600 {auth}" in out.replace("\n", ""), out
    finally:
        auth.chmod(0o600)
    code, out = _cli("cluster", "status", *opts)
    assert code == 0, out
    # a command given a URL: COGS_AUTH_FILE names the file
    code, out = _cli("catalog", "show", "--url", locked.url)
    assert code == 1, out
    assert "NOAUTH" in out, out
    assert "COGS_AUTH_FILE" in out, out
    code, out = _cli("catalog", "show", "--url", locked.url, env={"COGS_AUTH_FILE": str(auth)})
    assert code == 0, out


def test_cluster_create_on_locked_nodes_takes_the_admins_credentials(locked: LocalCluster, tmp_path: Path) -> None:
    """compose's init (`cogs cluster create`) run again on nodes locked since."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG)
    args = ["cluster", "create", "--replicas", "1", "--catalog", str(catalog)]
    args += [a for p in locked.ports for a in ("--node", f"127.0.0.1:{p}")]
    code, out = _cli(*args)
    assert code == 1, out
    assert "the nodes are locked" in out, out
    code, out = _cli(*args, env={"COGS_AUTH_FILE": str(locked.auth_file)})
    assert code == 0, out
    assert "already form a cluster" in out, out


@pytest.mark.slow
def test_down_and_up_on_the_dir_and_replicas_resync(locked: LocalCluster, tmp_path: Path) -> None:
    opts = ["--port", str(locked.port), "--dir", str(locked.dir)]
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG)

    async def put() -> None:
        async with StateProxy(_proxy_url(locked)) as p:
            for i in range(300):
                p.update("cnt", f"restart{i % 30}", "add", 1)
            await p.flush()

    anyio.run(put)
    code, out = _cli("cluster", "down", *opts)
    assert code == 0, out
    assert not any(locked.status()[i].running for i in range(6))
    code, out = _cli("cluster", "up", *opts, "--masters", "3", "--replicas", "1", "--catalog", str(catalog))
    assert code == 0, out  # formed and the library loaded, as the admin of auth.conf
    _wait(lambda: _replicas_synced(locked))  # masteruser/masterauth from the included auth.conf
    code, out = _cli("cluster", "status", *opts)
    assert code == 0, out
    for p in locked.ports:
        assert _raw(p, "GET", "x").startswith(b"-NOAUTH")  # still locked: the default user's password was saved
        with _admin(p) as r:
            assert r.config_get("masterauth") == {"masterauth": ADMIN_PW}  # auth.conf read back exactly

    async def get() -> list[Any]:
        async with StateProxy(_proxy_url(locked)) as p:
            return [await p.syn_retrieve("cnt", f"restart{i}") for i in range(30)]

    assert anyio.run(get) == [10] * 30


@pytest.mark.slow
def test_scale_3_to_4_primaries_of_a_locked_cluster_under_load(locked: LocalCluster, tmp_path: Path) -> None:
    lc = locked
    stop = tmp_path / "stop"
    procs = _start_load([], _proxy_url(lc), 2, stop)
    try:
        time.sleep(1.0)
        code, out = _cli("cluster", "scale", "--port", str(lc.port), "--dir", str(lc.dir), "--masters", "4")
        assert code == 0, out
        assert "added node7, node8" in out, out
        assert "(locked: the default user's password)" in out, out
        time.sleep(1.0)
    finally:
        results = _results(procs, stop)
    values = anyio.run(_read, _admin_url(lc), _ops(results))
    want = [v for res in results for v in res["issued"].values()] + [v for res in results for v in res["syn"].values()]
    assert [int(v or 0) for v in values] == want  # nothing lost, nothing applied twice
    assert all(not res["jumps"] and res["errors"] == 0 for res in results), results
    assert all(sum(res["syn"].values()) > 20 for res in results), results  # the load ran throughout

    grown = LocalCluster.from_dir(lc.port, lc.dir)
    assert (grown.masters, grown.size) == (4, 8)
    for p in grown.ports[6:]:  # the new nodes: locked from their start, with the users
        assert _raw(p, "FLUSHALL").startswith(b"-NOAUTH")
        with _admin(p) as r:
            assert {u.split()[1] for u in map(bytes.decode, r.execute_command("ACL", "LIST"))} >= {
                "cogs-proxy", "cogs-monitor", "default",
            }  # fmt: skip
        with redis.Redis(port=p, username="cogs-proxy", password=PROXY_PW) as r:
            assert r.ping()
    _wait(lambda: _replicas_synced(grown))
    with _admin(grown.ports[7]) as r:
        assert r.info("replication")["role"] == "slave"


@pytest.mark.parametrize("pw", TRICKY)
def test_redis_reads_auth_conf_exactly_as_written(tmp_path: Path, pw: str) -> None:
    """What render() writes is what Redis' own config parser reads (the password a
    replica sends its primary)."""
    path = adminauth.write(tmp_path, adminauth.AdminAuth(pw))
    port = free_port_base(1, bus=False)
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen(["redis-server", *args, "--include", str(path)], stdout=subprocess.DEVNULL)
    try:
        _wait(lambda: _answers(port), 10)
        with redis.Redis(port=port) as r:
            assert r.config_get("masterauth") == {"masterauth": pw}
            assert r.config_get("masteruser") == {"masteruser": "default"}
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port) as r:
            return bool(r.ping())
    except redis.ConnectionError:
        return False


def test_compose_healthcheck_takes_a_locked_node_as_healthy(locked: LocalCluster) -> None:
    """compose's init waits for healthy nodes: a locked node (NOAUTH) is up."""
    import yaml

    check = yaml.safe_load((ROOT / "compose.yaml").read_text())["x-node"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"

    def healthy(port: int) -> bool:
        return subprocess.run(["sh", "-c", check[1].replace("$$REDIS_PORT", str(port))], check=False).returncode == 0

    assert _raw(locked.port, "PING").startswith(b"-NOAUTH")
    assert healthy(locked.port)
    assert not healthy(free_port_base(1, bus=False))  # nothing listens: unhealthy
