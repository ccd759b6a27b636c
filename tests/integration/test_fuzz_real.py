"""The property-based bad-input cases against a real redis-server (its cjson and
Lua differ from fakeredis in the corners fuzzing finds)."""

from __future__ import annotations

from tests import fuzz_cases
from tests.conftest import Standalone
from tests.helpers import LuaHarness

EXAMPLES = 300


def test_random_ops_on_real_redis(standalone: Standalone) -> None:
    assert fuzz_cases.lua_ops(LuaHarness(standalone.client()), EXAMPLES) == EXAMPLES


def test_random_frames_on_real_redis(standalone: Standalone) -> None:
    assert fuzz_cases.lua_frames(LuaHarness(standalone.client()), EXAMPLES) == EXAMPLES
