"""The same Lua cases as tests/unit/test_lua.py, on a real redis-server."""

from __future__ import annotations

import pytest

from tests.conftest import Standalone
from tests.helpers import LuaHarness
from tests.lua_cases import *  # noqa: F403  (the shared cases, collected here)


@pytest.fixture
def h(standalone: Standalone) -> LuaHarness:
    r = standalone.client()
    r.flushall()
    return LuaHarness(r)
