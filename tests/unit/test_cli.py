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
from cogs.ports import free_port_base


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


def _groups(group: click.Group, path: list[str]) -> list[list[str]]:
    out = [path]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _groups(cmd, [*path, name])
    return out


@pytest.mark.parametrize("columns", [60, 80])
def test_command_lists_are_never_cut(columns: int) -> None:
    """Each command's summary is its whole first sentence, wrapped at word boundaries
    (click cut them at 45 characters, and `bench --help` at the dot of "Fig. 12")."""
    for path in _groups(main, []):
        r = CliRunner().invoke(main, [*path, "--help"], terminal_width=columns)
        code, out = r.exit_code, r.output
        assert code == 0, path
        listing = out.split("Commands:\n", 1)[1]
        entries: list[str] = []
        for line in listing.splitlines():
            if line.startswith("  ") and not line.startswith("   "):
                entries.append(line.strip())
            elif line.strip():
                entries[-1] += " " + line.strip()
        assert entries, path
        for e in entries:
            assert not e.endswith("..."), (path, e)
            assert e.count("(") == e.count(")"), (path, e)
        assert all(len(line) <= columns for line in listing.splitlines()), (path, listing)
    code, out = _run("bench", "--help")
    assert "Coordinator throughput (paper Fig. 12): the same op mix at 1k/100k/1M states" in " ".join(out.split())


def test_every_coordinator_url_option_is_called_url() -> None:
    """One name for the coordinator URL everywhere (nf run keeps --coordinator as an alias)."""
    seen = 0
    for path in _commands(main, []):
        node: click.Command = main
        for name in path:
            assert isinstance(node, click.Group)
            node = node.commands[name]
        for p in node.params:
            if isinstance(p, click.Option) and (p.envvar == "COGS_URL" or "--coordinator" in p.opts):
                assert p.opts[0] == "--url", (path, p.opts)
                seen += 1
    assert seen >= 10
    nf_run = main.commands["nf"].commands["run"]  # type: ignore[attr-defined]
    [url] = [p for p in nf_run.params if p.name == "coordinator"]
    assert url.opts == ["--url", "--coordinator"]


def test_shell_completion_as_the_readme_documents_it() -> None:
    r = CliRunner().invoke(main, [], prog_name="cogs", env={"_COGS_COMPLETE": "bash_source"})
    assert r.exit_code == 0
    assert "_cogs_completion" in r.output  # the script `eval "$(_COGS_COMPLETE=bash_source cogs)"` loads
    env = {"_COGS_COMPLETE": "bash_complete", "COMP_WORDS": "cogs alerts --format ", "COMP_CWORD": "3"}
    r = CliRunner().invoke(main, [], prog_name="cogs", env=env)
    assert r.exit_code == 0
    assert {line.split(",")[1] for line in r.output.splitlines()} == {"text", "json", "zeek"}
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert 'eval "$(_COGS_COMPLETE=bash_source cogs)"' in readme


def test_every_public_error_is_exported() -> None:
    """An error a caller may catch is part of the surface: a new one not re-exported
    by ``cogs`` fails here."""
    import inspect

    import cogs
    from cogs import errors

    raised = {
        name for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.CogsError) and obj.__module__ == errors.__name__
    }  # fmt: skip
    internal = {"ChannelError"}  # the delivery layer's own (a channel's refusal), never reaches a caller
    assert raised - internal <= set(cogs.__all__), sorted(raised - internal - set(cogs.__all__))
    assert "Backpressure" in cogs.__all__
