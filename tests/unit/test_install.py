"""A base install: which extra provides what, the CLI's message when one is missing,
and COGS_LUA_PATHS reaching every catalog check (the wheel test runs the same in a
fresh venv; these are the quick checks of the pieces)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cogs.catalog import Catalog
from cogs.cli import main
from cogs.cli.nf import DETECTOR_NAMES
from cogs.errors import CatalogError, ConfigError
from cogs.extras import extras_providing, missing_extra_message
from cogs.library import library_spec
from cogs.settings import load_settings
from tests.integration.test_wheel import FMAX


def test_the_cli_knows_the_detectors_without_importing_them() -> None:
    from cogs.nf.detectors import DETECTORS

    assert sorted(DETECTOR_NAMES) == sorted(DETECTORS)


@pytest.mark.parametrize(
    ("module", "extra"),
    [("dpkt", "nf"), ("aiohttp", "webcache"), ("httpx", "bench"), ("matplotlib.pyplot", "plot"),
     ("cryptography.x509", "tls"), ("yaml", "dev")],
)  # fmt: skip
def test_extras_name_the_smallest_that_provides_a_module(module: str, extra: str) -> None:
    found = extras_providing(module)
    assert found[0] == extra
    assert found[-1] == "dev"


def test_base_dependencies_belong_to_no_extra() -> None:
    assert extras_providing("redis") == []
    assert missing_extra_message(ModuleNotFoundError("x", name="no_such_module")) is None
    msg = missing_extra_message(ModuleNotFoundError("x", name="dpkt"))
    assert msg is not None
    assert "pip install 'cogs-nf[nf]'" in msg
    assert "[bench]" in msg  # the other extra that has it


def test_cli_names_the_extra_when_a_command_needs_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "dpkt", None)  # import dpkt -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "cogs.nf.synth", raising=False)
    r = CliRunner().invoke(main, ["trace", "synth", "--out", str(tmp_path / "t.pcap")])
    assert r.exit_code == 2, r.output
    assert "pip install 'cogs-nf[nf]'" in r.output  # brackets kept: not taken for markup


def test_cli_error_lines_keep_brackets(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[x]\n")
    r = CliRunner().invoke(main, ["catalog", "check", str(bad)])
    assert r.exit_code == 1
    assert "expected [states.<name>] tables" in r.output


@pytest.fixture
def user_lua(tmp_path: Path) -> Path:
    (tmp_path / "types").mkdir()
    (tmp_path / "types" / "fmax.lua").write_text(FMAX)
    return tmp_path


def test_lua_paths_json_or_path_list(user_lua: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = user_lua / "other"
    monkeypatch.setenv("COGS_LUA_PATHS", f"{user_lua}:{other}")
    assert load_settings().lua_paths == (user_lua, other)
    monkeypatch.setenv("COGS_LUA_PATHS", f'["{user_lua}"]')
    assert load_settings().lua_paths == (user_lua,)
    monkeypatch.setenv("COGS_LUA_PATHS", "[oops")
    with pytest.raises(ConfigError, match="LUA_PATHS"):
        load_settings()


def test_catalog_checks_honour_cogs_lua_paths(user_lua: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = "[states.peak]\nclass = 'direct'\ntype = 'fmax'\n"
    with pytest.raises(CatalogError, match="'fmax' is not in the library"):
        Catalog.from_toml(toml)
    monkeypatch.setenv("COGS_LUA_PATHS", str(user_lua))
    assert "fmax" in library_spec().types
    assert Catalog.from_toml(toml).get("peak").type == "fmax"
    assert "fmax" not in library_spec(()).types  # explicit directories win over the settings
