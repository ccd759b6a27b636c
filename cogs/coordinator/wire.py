"""The frame ``cogs_batch`` takes: a flat JSON array of runs.

    mode, state index, op, n, key_1, arg_1, ..., key_n, arg_n, mode, state index, ...

Ops of a run share mode, state and op, so a batch of trigger updates costs the Lua
decoder two items per op instead of five. Ops are numbered 0.. in frame order; the
reply's errors and results use those numbers. (lua/api.lua has the other side.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

WireOp = tuple[int, int, str, str, Any]  # mode, state index, op, escaped key, arg


def runs(ops: Iterable[Sequence[Any]]) -> list[Any]:
    """Flat run frame for ops given as (mode, state index, op, key, arg), in order."""
    flat: list[Any] = []
    head = -1  # index of the current run's n
    last: tuple[Any, Any, Any] | None = None
    for mode, sidx, op, key, arg in ops:
        if (mode, sidx, op) != last:
            last = (mode, sidx, op)
            flat += (mode, sidx, op, 0)
            head = len(flat) - 1
        flat[head] += 1
        flat += (key, arg)
    return flat


def expand(flat: Sequence[Any]) -> list[WireOp]:
    """The ops of a run frame, numbered as the Lua side numbers them."""
    out: list[WireOp] = []
    i = 0
    while i < len(flat):
        mode, sidx, op, n = flat[i : i + 4]
        for j in range(i + 4, i + 4 + 2 * n, 2):
            out.append((mode, sidx, op, flat[j], flat[j + 1]))
        i += 4 + 2 * n
    return out
