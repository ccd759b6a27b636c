"""Installs as shipped: the wheel, installed into a fresh venv WITHOUT extras (its own
pip resolving the base dependencies, nothing borrowed from the dev venv), gives a
working ``cogs``: it starts a cluster, loads catalogs with user-defined Lua types
(``COGS_LUA_PATHS``), names the extra a command needs, and runs compose's own init
command line against nodes started from compose's own node command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cogs.ports import free_port_base
from tests.compose_run import ComposeNodes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

FMAX = """\
-- type: fmax
-- update: max
-- retrieve: get
-- check:
-- measure: value
-- whole: get
-- about: the largest number seen so far (floats too): a user-defined type
local R
cogs.on_bind(function() R = redis.call end)
cogs.register_type('fmax', {
    update = {
        max = function(rk, d)
            d = cogs.number(d, 'delta')
            local cur = tonumber(R('GET', rk))
            if cur and cur >= d then return false, nil end
            R('SET', rk, cogs.num2s(d), 'KEEPTTL')
            return true, nil
        end,
    },
    retrieve = { get = function(rk) return R('GET', rk) end },
    check = {},
    measure = { value = function(rk) return tonumber(R('GET', rk)) or 0 end },
    whole = 'get',
})
"""
USER_CATALOG = "[states.peak]\nclass = 'direct'\ntype = 'fmax'\n"

PROXY_PROBE = """
import sys, anyio
from cogs.proxy import StateProxy
async def go():
    async with StateProxy(sys.argv[1], catalog=sys.argv[2]) as p:
        await p.syn_up("peak", "k", "max", 2.5)
        await p.syn_up("peak", "k", "max", 1.5)
        print(await p.syn_retrieve("peak", "k"))
anyio.run(go)
"""


@dataclass(frozen=True)
class Venv:
    root: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """The venv first on PATH; nothing of the dev venv or this checkout leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COGS_", "PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        return {**env, **extra}

    def run(self, *argv: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=self.env(**env),
            timeout=240,
            check=False,
        )

    def cogs(self, *argv: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bin / "cogs", *argv, cwd=cwd, **env)


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel built once, installed once into a fresh venv with its own pip."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(ROOT)],
        check=True,
    )
    [wheel] = tmp.glob("cogs_nf-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, env=clean, cwd=tmp,
    )  # fmt: skip
    return Venv(venv, wheel)


def test_wheel_carries_the_lua_sources_and_configs(base_venv: Venv) -> None:
    names = zipfile.ZipFile(base_venv.wheel).namelist()
    for f in ("cogs/_lua/core.lua", "cogs/_lua/types/int.lua", "cogs/_checkers/threshold.lua", "cogs/redis.conf",
              "cogs/catalogs/default.toml", "cogs/py.typed"):  # fmt: skip
        assert f in names


def test_base_install_has_no_extras_and_a_working_cli(base_venv: Venv, tmp_path: Path) -> None:
    probe = "import importlib.util as u, cogs; print(cogs.__file__, *(bool(u.find_spec(m)) for m in ('dpkt', 'aiohttp', 'pytest')))"
    r = base_venv.run(base_venv.bin / "python", "-c", probe, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    where, *present = r.stdout.split()
    assert where.startswith(str(base_venv.root))  # the wheel's cogs, not this checkout's
    assert present == ["False", "False", "False"]  # no extras, nothing of the dev venv
    r = base_venv.cogs("--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cogs, version 0.1.0"
    for argv in (["--help"], ["nf", "run", "--help"], ["bench", "--help"], ["cluster", "--help"], ["lab", "--help"]):
        r = base_venv.cogs(*argv, cwd=tmp_path)
        assert r.returncode == 0, (argv, r.stderr)
    # a command that needs an extra says which, in one line, exit 2 (not a traceback)
    pcap = tmp_path / "t.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1")
    for argv in (["nf", "run", "portscan", "--trace", str(pcap)], ["trace", "synth", "--out", str(pcap)]):
        r = base_venv.cogs(*argv, cwd=tmp_path)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "pip install 'cogs-nf[nf]'" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_base_install_runs_a_cluster_and_user_types(base_venv: Venv, tmp_path: Path) -> None:
    """`cogs cluster up`, `catalog check/types/load`, `cluster up --catalog` and
    StateProxy(catalog=path), each a fresh process of the base install, see the
    `fmax` type that only COGS_LUA_PATHS provides."""
    lua = tmp_path / "my-lua"
    (lua / "types").mkdir(parents=True)
    (lua / "types" / "fmax.lua").write_text(FMAX)
    cat = tmp_path / "user.toml"
    cat.write_text(USER_CATALOG)
    port, data = free_port_base(3), tmp_path / "cluster"
    cluster = ("--port", str(port), "--dir", str(data))
    up = base_venv.cogs("cluster", "up", *cluster, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        url = up.stdout.strip()
        assert url == f"redis://127.0.0.1:{port}"
        # without the extra directory the type is unknown, and the error says so
        r = base_venv.cogs("catalog", "check", cat, cwd=tmp_path)
        assert r.returncode == 1
        assert "type 'fmax' is not in the library" in r.stderr
        for paths in (str(lua), json.dumps([str(lua)])):  # PATH-like or a JSON list
            r = base_venv.cogs("catalog", "check", cat, cwd=tmp_path, COGS_LUA_PATHS=paths)
            assert r.returncode == 0, r.stderr
            assert "1 states" in r.stdout
        r = base_venv.cogs("catalog", "types", cwd=tmp_path, COGS_LUA_PATHS=str(lua))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["types"]["fmax"]["update"] == ["max"]
        r = base_venv.cogs("catalog", "load", cat, "--url", url, cwd=tmp_path, COGS_LUA_PATHS=str(lua))
        assert r.returncode == 0, r.stderr
        assert "(1 states) on" in r.stdout
        r = base_venv.cogs("catalog", "show", "--json", "--url", url, cwd=tmp_path, COGS_LUA_PATHS=str(lua))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["states"][0]["type"] == "fmax"
        # `cluster up` on the running cluster (resumes it) loads --catalog the same way
        r = base_venv.cogs("cluster", "up", *cluster, "--catalog", cat, cwd=tmp_path, COGS_LUA_PATHS=str(lua))
        assert r.returncode == 0, r.stderr
        r = base_venv.run(base_venv.bin / "python", "-c", PROXY_PROBE, url, cat, cwd=tmp_path, COGS_LUA_PATHS=str(lua))
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["2.5"]  # the max of 2.5 and 1.5, by the user type
        # a bad COGS_LUA_PATHS is a one-line settings error, exit 2
        r = base_venv.cogs("catalog", "types", cwd=tmp_path, COGS_LUA_PATHS="[not json")
        assert r.returncode == 2
        assert "COGS_LUA_PATHS" in r.stderr or "lua_paths" in r.stderr
    finally:
        down = base_venv.cogs("cluster", "down", *cluster, "--purge", cwd=tmp_path)
    assert down.returncode == 0, down.stderr


@pytest.fixture
def compose_nodes(tmp_path: Path) -> Iterator[ComposeNodes]:
    nodes = ComposeNodes(ROOT / "compose.yaml", tmp_path / "compose", port_base=free_port_base(6))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def test_compose_init_forms_the_cluster_from_a_base_install(base_venv: Venv, compose_nodes: ComposeNodes) -> None:
    """compose.yaml's init command (minus its `pip install` of this package, which the
    fixture did from the wheel) in the base venv, against nodes run from compose's node
    command lines: a 3+3 cluster with the library loaded."""
    install, argv = compose_nodes.init_command()
    assert install == "pip install --quiet /src"  # the base package: no extras in compose either
    r = base_venv.run(*argv, cwd=compose_nodes.dir)
    assert r.returncode == 0, r.stdout + r.stderr
    roles = compose_nodes.roles()
    assert sorted(roles.values()) == ["master"] * 3 + ["slave"] * 3
    r = base_venv.cogs("catalog", "show", "--json", "--url", compose_nodes.url, cwd=compose_nodes.dir)
    assert r.returncode == 0, r.stderr
    assert "scan_ports" in {s["name"] for s in json.loads(r.stdout)["states"]}
    # compose's keeper command, one pass: it reaches the nodes by name and counts nothing yet
    _, argv = compose_nodes.init_command("keeper", ("--once",))
    r = base_venv.run(*argv, cwd=compose_nodes.dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no NF loaded sets max_keys or max_memory" in r.stdout
