"""Catalog validation: every problem named with its entry; digests stable."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogs.catalog import Catalog, catalog_diff, parse_duration
from cogs.errors import CatalogError
from tests.helpers import TEST_CATALOG, make_catalog

DEFAULT = Path(__file__).resolve().parents[2] / "cogs" / "catalogs"


def _problems(toml: str) -> list[str]:
    with pytest.raises(CatalogError) as e:
        Catalog.from_toml(toml)
    return e.value.problems


def test_bundled_catalogs_validate() -> None:
    for p in DEFAULT.glob("*.toml"):
        assert len(Catalog.from_file(p)) > 0, p


@pytest.mark.parametrize(
    ("v", "ms"),
    [(300, 300_000), ("5m", 300_000), ("250ms", 250), ("1.5s", 1500), ("2h", 7_200_000), ("1d", 86_400_000)],
)
def test_durations(v: object, ms: int) -> None:
    assert parse_duration(v) == ms


@pytest.mark.parametrize("v", ["5 minutes", "-1s", "0", True, "1y", 10**9])
def test_bad_durations(v: object) -> None:
    with pytest.raises(ValueError, match=r"duration|range|boolean"):
        parse_duration(v)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ('class = "trigger"\ntype = "tree"', "type 'tree' is not in the library"),
        ('class = "trig"\ntype = "int"', "class"),
        ('class = "trigger"\ntype = "int"\nmode = "replica"', "mode must be 'singleton'"),
        ('class = "trigger"\ntype = "int"\nttl = "1m"', "take 'window'"),
        ('class = "direct"\ntype = "int"\nwindow = "1m"', "'window' is for trigger states"),
        (
            'class = "direct"\ntype = "int"\nchecker = "threshold"\nparams = {threshold=1}',
            "checkers run on trigger",
        ),
        ('class = "trigger"\ntype = "int"\nchecker = "nope"', "checker 'nope' is not in the library"),
        (
            'class = "trigger"\ntype = "set"\nchecker = "threshold"\nparams = {threshold=1}',
            "works on int states",
        ),
        ('class = "trigger"\ntype = "int"\nchecker = "threshold"', "needs parameter 'threshold'"),
        ('class = "trigger"\ntype = "int"\nchecker = "threshold"\nparams = {threshold="x"}', "must be int"),
        (
            'class = "trigger"\ntype = "int"\nchecker = "threshold"\nparams = {threshold=1, t=2}',
            "no parameter 't'",
        ),
        ('class = "trigger"\ntype = "int"\nchecker = "rate"\nparams = {threshold=1.0}', "needs a 'window'"),
        ('class = "trigger"\ntype = "int"\nparams = {a=1}', "'params' given without a checker"),
        ('class = "indirect"\ntype = "int"', "type must be 'blob'"),
        ('class = "trigger"\ntype = "int"\nwindow = "soon"', "not a duration"),
        ('class = "trigger"\ntype = "int"\ncolour = "red"', "Extra inputs"),
        ('class = "trigger"\ntype = "int"\nmax_bytes = 0', "max_bytes"),
    ],
)
def test_entry_problems_name_the_entry(entry: str, needle: str) -> None:
    problems = _problems(f"[states.bad_one]\n{entry}\n[states.good]\nclass = 'trigger'\ntype = 'int'\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith("state 'bad_one'")
    assert needle in problems[0]


def test_all_problems_reported_at_once() -> None:
    problems = _problems("[states.a]\nclass='x'\n[states.b]\nclass='trigger'\ntype='nope'\n")
    assert [p.split(":")[0] for p in problems] == ["state 'a'", "state 'b'"]


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("", "no states"),
        ("[states]", "no states"),
        ("states = 3", "no states"),
        ("[stats.a]\nclass='trigger'", "unknown top-level key"),
        ("[states.a", "not valid TOML"),
        ('[states."1bad"]\nclass="trigger"\ntype="int"', "name"),
        ("[states.a]\nx = 1\n[states.a.y]", "Extra inputs"),
    ],
)
def test_file_level_problems(toml: str, needle: str) -> None:
    assert any(needle in p for p in _problems(toml))


def test_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        Catalog.from_file(tmp_path / "none.toml")


def test_defaults_filled_and_digest_order_independent() -> None:
    cat = make_catalog()
    assert cat.get("qtypes").params["min_denominator"] == 4
    assert cat.get("rate").params == {"threshold": 5.0, "min_count": 3}
    blocks = TEST_CATALOG.strip().split("\n\n")
    shuffled = Catalog.from_toml("\n\n".join(reversed(blocks)))
    assert shuffled.digest == cat.digest
    assert [s.name for s in shuffled] == sorted(s.name for s in cat)


def test_int_and_float_number_params_give_one_digest() -> None:
    a = Catalog.from_toml("[states.r]\nclass='trigger'\ntype='int'\nwindow=5\nchecker='rate'\nparams={threshold=5}")
    b = Catalog.from_toml("[states.r]\nclass='trigger'\ntype='int'\nwindow=5\nchecker='rate'\nparams={threshold=5.0}")
    assert a.digest == b.digest


def test_wire_round_trip_keeps_digest() -> None:
    import json

    cat = make_catalog()
    again = Catalog.from_wire(json.loads(cat.json))
    assert again.digest == cat.digest


def test_diff_names_what_changed() -> None:
    a = make_catalog()
    b = Catalog.from_toml(
        TEST_CATALOG.replace('window = "5m"', 'window = "6m"') + "\n[states.zz]\nclass='trigger'\ntype='int'\n"
    )
    assert catalog_diff(a, b) == "only given: zz; ports differs in window_ms"
