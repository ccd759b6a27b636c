"""The CLI's offline commands and its error contract (one line, meaningful exit code)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import cogs
from cogs.cli import main
from cogs.cluster import free_port_base


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


def test_every_command_has_help() -> None:
    for cmd in (["cluster", "up"], ["cluster", "down"], ["cluster", "status"], ["cluster", "create"],
                ["catalog", "load"], ["catalog", "show"], ["catalog", "check"], ["catalog", "types"],
                ["alerts"], ["bench", "coordinator"]):  # fmt: skip
        code, out = _run(*cmd, "--help")
        assert code == 0
        assert "Usage: main" in out or "Usage: cogs" in out


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
