"""The CLI's offline commands and its error contract (one line, meaningful exit code)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cogs
from cogs.cli import main
from cogs.cluster import free_port_base


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


def _commands(group: click.Group, path: list[str]) -> list[list[str]]:
    out = []
    for name, cmd in group.commands.items():
        out.append([*path, name])
        if isinstance(cmd, click.Group):
            out += _commands(cmd, [*path, name])
    return out


def test_every_command_has_help() -> None:
    cmds = _commands(main, [])
    assert {"monitor", "alerts", "demo"} <= {c[0] for c in cmds}
    assert ["nf", "run"] in cmds
    assert ["bench", "indirect"] in cmds
    for cmd in cmds:  # the whole tree: a new command without help fails here
        code, out = _run(*cmd, "--help")
        assert code == 0, cmd
        assert "Usage: main" in out or "Usage: cogs" in out
        node: click.Command = main
        for name in cmd:
            assert isinstance(node, click.Group)
            node = node.commands[name]
        assert (node.help or "").strip(), f"{' '.join(cmd)} has no description"


def test_catalog_check_ok_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[states.a]\nclass = 'trigger'\ntype = 'int'\n")
    code, out = _run("catalog", "check", str(good))
    assert code == 0
    assert "1 states, digest" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[states.a]\nclass = 'trigger'\ntype = 'tree'\n")
    code, out = _run("catalog", "check", str(bad))
    assert code == 1
    assert "state 'a': type 'tree' is not in the library" in out


def test_catalog_types_lists_the_library() -> None:
    code, out = _run("catalog", "types")
    assert code == 0
    data = json.loads(out)
    assert "add" in data["types"]["int"]["update"]
    assert data["checkers"]["ratio"]["params"]["min_denominator"] == "int=1"


def test_unreachable_coordinator_exit_3() -> None:
    port = free_port_base(1)
    code, out = _run("catalog", "show", "--url", f"redis://127.0.0.1:{port}")
    assert code == 3
    assert "no coordinator node answered" in out
    assert "Traceback" not in out


def test_bad_url_exit_2() -> None:
    code, out = _run("alerts", "--url", "http://nope")
    assert code == 2
    assert "not a Redis URL" in out


def test_missing_redis_server_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out = _run("cluster", "up", "--port", str(free_port_base(3)), "--dir", str(tmp_path))
    assert code == 1
    assert "apt-get install -y redis-server" in out


def test_public_surface() -> None:
    assert len(set(cogs.__all__)) == len(cogs.__all__)
    for name in cogs.__all__:
        assert getattr(cogs, name) is not None
    public = {n for n in dir(cogs) if not n.startswith("_") and not inspect.ismodule(getattr(cogs, n))}
    assert public - {"annotations"} == set(cogs.__all__)
