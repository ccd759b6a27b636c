"""COGS_LOOP: which event loop cogs processes run on."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from cogs import runtime
from cogs.errors import ConfigError


@pytest.mark.parametrize(
    ("env", "want"), [("", "uvloop"), ("auto", "uvloop"), ("UVLOOP", "uvloop"), ("asyncio", "asyncio")]
)
def test_loop_choice(env: str, want: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGS_LOOP", env)
    assert runtime.loop_name() == want
    assert runtime.backend_options() == {"use_uvloop": want == "uvloop"}


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("COGS_LOOP", "auto")
    assert runtime.loop_name() == "asyncio"
    monkeypatch.setenv("COGS_LOOP", "uvloop")
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        runtime.loop_name()


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGS_LOOP", "trio")
    with pytest.raises(ConfigError, match=r"COGS_LOOP='trio': must be one of auto, uvloop, asyncio"):
        runtime.loop_name()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_uses_the_chosen_loop(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGS_LOOP", loop)

    async def which(x: int) -> tuple[str, int]:
        return type(asyncio.get_running_loop()).__module__, x + 1

    module, y = runtime.run(which, 1)
    assert module.startswith(loop)
    assert y == 2
