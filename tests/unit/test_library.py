"""Library assembly: headers are the contract between Lua and Python."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

from cogs.catalog import Catalog
from cogs.errors import ConfigError
from cogs.library import assemble, library_spec, parse_header
from tests.helpers import LuaHarness, fake_harness


def test_headers_match_what_lua_registers() -> None:
    h = fake_harness()
    info = json.loads(h.r.fcall("cogs_info", 0))
    spec = library_spec()
    assert set(info["types"]) == set(spec.types)
    for name, t in spec.types.items():
        got = info["types"][name]
        for kind in ("update", "retrieve", "check"):
            assert sorted(got[kind]) == sorted(getattr(t, kind)), (name, kind)
        assert got["whole"] == t.whole
    assert info["checkers"] == sorted(spec.checkers)
    assert info["version"] == spec.version


def test_version_changes_with_any_source(tmp_path: Path) -> None:
    base = library_spec()
    extra = tmp_path / "types"
    extra.mkdir()
    (extra / "flag.lua").write_text(FLAG_TYPE)
    assert library_spec([tmp_path]).version != base.version


def test_header_parsing() -> None:
    h = parse_header("-- type: x\n-- about: one\n--   two\n-- update: a b\nlocal y = 1\n-- not: header")
    assert h == {"type": "x", "about": "one two", "update": "a b"}


FLAG_TYPE = """\
-- type: flag
-- update: raise lower
-- retrieve: get
-- check: up
-- measure:
-- whole: get
-- about: a test type added from outside the package
local R
cogs.on_bind(function() R = redis.call end)
cogs.register_type('flag', {
    update = {
        raise = function(rk) R('SET', rk, '1', 'KEEPTTL') return true, nil end,
        lower = function(rk) return R('DEL', rk) > 0, nil end,
    },
    retrieve = { get = function(rk) return R('EXISTS', rk) end },
    check = { up = function(rk) return R('EXISTS', rk) == 1 end },
    measure = {},
    whole = 'get',
})
"""

ONE_OF = """\
-- checker: one_of
-- types: flag
-- params: note:string=x
-- alert: value = 1 when the flag is raised
cogs.register_checker('one_of', { test = function(rk, hint, st, p) return true, 1 end })
"""


def test_user_defined_type_and_checker_from_extra_dir(tmp_path: Path) -> None:
    (tmp_path / "types").mkdir()
    (tmp_path / "checkers").mkdir()
    (tmp_path / "types" / "flag.lua").write_text(FLAG_TYPE)
    (tmp_path / "checkers" / "one_of.lua").write_text(ONE_OF)
    spec = library_spec([tmp_path])
    assert spec.types["flag"].update == ("raise", "lower")
    cat = Catalog.from_toml("[states.f]\nclass='trigger'\ntype='flag'\nchecker='one_of'", spec)
    assert cat.get("f").params == {"note": "x"}
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    r.function_load(assemble(spec, cat.json, cat.digest).source)
    h = LuaHarness.__new__(LuaHarness)
    h.r, h.catalog, h.lib = r, cat, assemble(spec, cat.json, cat.digest)
    assert h.one(2, "f", "k", "get") == 0
    h.one(0, "f", "k", "raise")
    assert h.one(3, "f", "k", "up") == 1
    assert [a["checker"] for a in h.alerts()] == ["one_of"]


def test_duplicate_type_refused(tmp_path: Path) -> None:
    (tmp_path / "types").mkdir()
    (tmp_path / "types" / "int.lua").write_text("-- type: int\n")
    with pytest.raises(ConfigError, match="defined twice"):
        library_spec([tmp_path])


def test_missing_extra_dir_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        library_spec([tmp_path / "nope"])


def test_catalog_survives_any_json_in_long_string() -> None:
    cat = Catalog.from_toml(
        "[states.x]\nclass='trigger'\ntype='map'\nchecker='ratio'\n"
        "params={numerator=']]=]==]', denominator='all', threshold=0.5}\n"
    )
    assert "]]=]==]" in cat.json
    lib = assemble(library_spec(), cat.json, cat.digest)
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    r.function_load(lib.source)
    assert json.loads(r.fcall("cogs_info", 0))["catalog_digest"] == cat.digest
