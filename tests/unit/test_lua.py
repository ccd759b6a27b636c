"""The Lua state library on fakeredis[lua]: every type, op, checker and bad input."""

from __future__ import annotations

import pytest

from tests.helpers import LuaHarness, fake_harness
from tests.lua_cases import *  # noqa: F403  (the shared cases, collected here)


@pytest.fixture
def h() -> LuaHarness:
    return fake_harness()
