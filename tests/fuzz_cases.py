"""Property-based bad-input cases (hypothesis), shared by the unit tests and the
longer fuzz run (bench/fuzz.py). Each returns how many inputs it tried."""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cogs.catalog import Catalog
from cogs.errors import CatalogError, CogsError
from cogs.keys import escape
from tests.helpers import LuaHarness

CODES = (
    "UNKNOWN_STATE",
    "UNKNOWN_OP",
    "BAD_KEY",
    "BAD_DELTA",
    "OVERSIZE",
    "WRONGTYPE",
    "OVERFLOW",
    "BAD_FRAME",
    "ALERT",
    "NOT_OWNER",
)
OPS = ("add", "sub", "max", "min", "set", "append", "remove", "incr", "del", "clear", "get", "members", "card",
       "contains", "all", "field", "len", "count", "exists", "ttl", "ge", "eq", "has", "checker", "", "zz", "__index")  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet="0123456789-", max_size=25),
)
args = st.recursive(
    scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
keys = st.one_of(
    st.text(max_size=30), st.text(alphabet=string.printable, min_size=1, max_size=600), st.integers(), st.none()
)


def _snapshot(h: LuaHarness, state: str, key: Any) -> Any:
    if not isinstance(key, str) or not key:
        return None
    rk = f"cogs:{state}:{{{escape(key)}}}"
    return [h.r.dump(k) for k in (rk, rk + ":alerted", rk + ":v", rk + ":r")]


def lua_ops(h: LuaHarness, examples: int) -> int:
    """Random single ops: every one is applied or refused with a known code, and a
    refused one leaves its state exactly as it was."""
    names = [s.name for s in h.catalog] + ["nope"]
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        mode=st.integers(min_value=-1, max_value=5),
        state=st.sampled_from(names),
        op=st.sampled_from(OPS),
        key=keys,
        arg=args,
    )
    def run(mode: int, state: str, op: str, key: Any, arg: Any) -> None:
        nonlocal tried
        tried += 1
        sidx = h.catalog.index(state) if state in h.catalog else 999
        before = _snapshot(h, state, key)
        frame = json.dumps([mode, sidx, op, 1, escape(key) if isinstance(key, str) else key, arg])
        try:
            reply = h.raw(frame, pid="fuzz")
        except Exception as e:  # refused whole (a number JSON cannot carry to Lua, ...)
            assert "BAD_FRAME" in str(e), e
            assert _snapshot(h, state, key) == before
            return
        assert isinstance(reply, list)
        assert len(reply) == 3
        errs = reply[1]
        if errs:
            msg = errs[1].decode()  # strict: a message is valid UTF-8
            assert msg.split(" ", 1)[0] in CODES, msg
            if not msg.startswith("ALERT"):
                assert _snapshot(h, state, key) == before, msg  # refused: untouched
        else:
            assert reply[0] == 1

    run()
    return tried


def lua_frames(h: LuaHarness, examples: int) -> int:
    """Random frames: refused whole with BAD_FRAME, or applied op by op; never a crash."""
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(frame=st.one_of(st.text(max_size=200), st.lists(args, max_size=12).map(json.dumps)))
    def run(frame: str) -> None:
        nonlocal tried
        tried += 1
        try:
            reply = h.raw(frame, pid="fuzz")
        except Exception as e:  # a frame-level refusal is an error reply
            assert "BAD_FRAME" in str(e), e
        else:
            assert isinstance(reply, list)
            for m in reply[1][1::2]:
                assert m.decode().split(" ", 1)[0] in CODES

    run()
    return tried


catalog_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from(["trigger", "direct", "indirect", "int", "set", "map", "hll", "string", "blob",
                               "replica", "singleton", "5m", "threshold", "cardinality", "ratio", "rate"])),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
        ["class", "type", "mode", "window", "ttl", "checker", "params", "threshold", "max_bytes", "max_items", "x"]), c, max_size=6),
    max_leaves=15,
)  # fmt: skip


def catalogs(examples: int) -> int:
    """Random catalog documents: a Catalog, or a CatalogError naming the problems."""
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(doc=st.dictionaries(st.sampled_from(["states", "description", "other"]),
                               st.dictionaries(st.text(max_size=10), catalog_values, max_size=4) | catalog_values, max_size=3))  # fmt: skip
    def run(doc: dict[str, Any]) -> None:
        nonlocal tried
        tried += 1
        try:
            cat = Catalog.from_mapping(doc)
        except CatalogError as e:
            assert e.problems
            assert all(isinstance(p, str) and p for p in e.problems)
        else:
            assert len(cat) >= 1

    run()
    return tried


def proxy_updates(update: Any, examples: int) -> int:
    """Random ``update()`` calls: accepted, or refused with a CogsError (never a crash)."""
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        state=st.sampled_from(["cnt", "ports", "qtypes", "note", "nope", ""]),
        key=keys,
        op=st.sampled_from(OPS),
        delta=args,
    )
    def run(state: str, key: Any, op: str, delta: Any) -> None:
        nonlocal tried
        tried += 1
        try:
            update(state, key, op, delta)
        except CogsError as e:
            assert str(e)

    run()
    return tried
