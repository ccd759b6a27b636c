"""Frames for ``cogs_batch``: the ops of one call as a flat JSON array of runs.

    mode, state index, op, n, key_1, arg_1, ..., key_n, arg_n, mode, state index, ...

Ops of a run share mode, state and op, so a batch of trigger updates costs the Lua
decoder two items per op instead of five. Ops are numbered 0.. in frame order; the
reply's errors and results use those numbers (lua/api.lua has the other side).

Frames are built from text fragments: at the proxy's rate json.dumps of a list costs
more than the Lua that applies it. Every caller (the proxy's batcher, StateTable)
builds them here, so there is one encoder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from cogs.keys import escape, slot

WireOp = tuple[int, int, str, str, Any]  # mode, state index, op, escaped key, arg
MEMBER_CACHE = 1_000_000


def route(key: str) -> tuple[str, int]:
    """(the escaped key as a JSON string, its slot), computed each time: json's own
    string encoder and crc_hqx cost less than a cache look-up that misses the CPU's caches."""
    ek = escape(key)
    return encode_basestring_ascii(ek), slot(ek)


_JSON_STR: dict[str, str] = {}


def jstr(s: str) -> str:
    """JSON of a string that repeats (set members: ports, client IPs, names; op names), cached."""
    j = _JSON_STR.get(s)
    if j is None:
        if len(_JSON_STR) >= MEMBER_CACHE:
            _JSON_STR.clear()
        j = _JSON_STR[s] = encode_basestring_ascii(s)
    return j


def members(acc: str | set[str]) -> str:
    """JSON of a set op's members: one as a string, several as an array."""
    if type(acc) is str:
        return _JSON_STR.get(acc) or jstr(acc)
    if len(acc) == 1:
        m = next(iter(acc))
        return _JSON_STR.get(m) or jstr(m)
    return "[" + ",".join([_JSON_STR.get(m) or jstr(m) for m in acc]) + "]"


def arg_json(arg: Any) -> str:
    return "null" if arg is None else json.dumps(arg)


Frame = tuple[str, int, dict[int, Any]]  # payload, number of ops, op index -> what waits for it


class Frames:
    """Run-frame fragments for one node, cut into frames of at most ``limit`` ops: one
    FCALL stays short (others wait while Lua runs) however much piled up meanwhile.
    Frames go out in order on one channel, so a key's ops split across two stay in order."""

    __slots__ = ("count", "done", "limit", "parts", "reqs")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done: list[Frame] = []
        self.parts: list[str] = []
        self.count = 0
        self.reqs: dict[int, Any] = {}

    def run(self, prefix: str, frags: list[str]) -> None:
        """A run of ops sharing ``prefix`` ("mode,state,op,"): "key,arg" fragments."""
        i = 0
        while i < len(frags):
            take = frags[i : i + self.limit - self.count]
            self.parts.append(f"{prefix}{len(take)},{','.join(take)}")
            self.count += len(take)
            i += len(take)
            if self.count >= self.limit:
                self._cut()

    def one(self, text: str, req: Any = None) -> None:
        """One op's whole text ("mode,state,op,1,key,arg"); ``req`` waits for its reply."""
        if req is not None:
            self.reqs[self.count] = req
        self.parts.append(text)
        self.count += 1
        if self.count >= self.limit:
            self._cut()

    def op(self, mode: int, sidx: int, op: str, key: str, arg: Any, req: Any = None) -> None:
        self.one(f"{mode},{sidx},{jstr(op)},1,{route(key)[0]},{arg_json(arg)}", req)

    def _cut(self) -> None:
        if self.count:
            self.done.append(("[" + ",".join(self.parts) + "]", self.count, self.reqs))
            self.parts, self.count, self.reqs = [], 0, {}

    def frames(self) -> list[Frame]:
        self._cut()
        return self.done


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
