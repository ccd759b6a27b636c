"""The event loop every cogs process runs on.

uvloop (libuv) when it is installed, else asyncio's own loop; ``COGS_LOOP=asyncio``
forces the latter. The proxy works the same on both (node links use plain transport
callbacks), uvloop just spends less CPU per wake-up, read and write: the web cache's
HTTP handling and the NAT's async path are mostly that.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple

import anyio

from cogs import logs
from cogs.errors import ConfigError

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

LOOPS = ("auto", "uvloop", "asyncio")


def loop_name() -> str:
    """The loop this process runs: ``COGS_LOOP`` (auto, uvloop, asyncio) resolved."""
    want = os.environ.get("COGS_LOOP", "auto").strip().lower() or "auto"
    if want not in LOOPS:
        raise ConfigError(f"COGS_LOOP={want!r}: must be one of {', '.join(LOOPS)}")
    have = importlib.util.find_spec("uvloop") is not None
    if want == "uvloop" and not have:
        raise ConfigError("COGS_LOOP=uvloop but uvloop is not installed (pip install uvloop)")
    return "uvloop" if want != "asyncio" and have else "asyncio"


def backend_options() -> dict[str, Any]:
    """anyio's asyncio backend options for the loop :func:`loop_name` picks."""
    return {"use_uvloop": loop_name() == "uvloop"}


def run(fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """``anyio.run(fn, *args)`` on the loop :func:`loop_name` picks (and, in a process
    cogs spawned, with the logging its parent chose: COGS_LOG_LEVEL / COGS_LOG_FORMAT)."""
    logs.configure_from_env()
    return anyio.run(fn, *args, backend_options=backend_options())
