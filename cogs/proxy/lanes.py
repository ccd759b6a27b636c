"""Pending trigger updates, one lane per state, and how pending ops become frames.

A lane holds ``key -> [op, kind, acc, op, kind, acc, ...]``. A new update of the op
last pending for the key merges into it when the type declares the op commutative
(``-- coalesce: add=sum`` in the Lua header): counters add up, set inserts union.
Another op starts a new group, so per-key order holds (add, remove, add stay three
ops in that order). The type's first coalescing op (a counter's add, a set's add)
is the hot op: keys with nothing else pending keep just its sum or members.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cogs.coordinator.frames import Frame, Frames, arg_json, jstr, members, route
from cogs.proxy.requests import Req

SUM, UNION, MAPSUM, NONE = 1, 2, 3, 0
_KINDS = {"sum": SUM, "union": UNION, "mapsum": MAPSUM}


class Lane:
    """Pending trigger updates of one state."""

    __slots__ = ("hot", "hot_kind", "hot_op", "kinds", "name", "pending", "prefix", "replica", "sidx", "state_spec")

    def __init__(self, name: str, sidx: int, kinds: dict[str, int], state_spec: Any, *, replica: bool = False) -> None:
        self.name, self.sidx, self.kinds, self.state_spec = name, sidx, kinds, state_spec
        #: proxies cache this state's replicas: an update makes this proxy's copy stale at once
        self.replica = replica
        #: key -> [op, kind, acc, op, kind, acc, ...]: the ops pending for the key, in order
        #: (a last group with op None fences the key: its later ops go to the request queue)
        self.pending: dict[str, list[Any]] = {}
        #: The hot op (the type's first coalescing op: a counter's add, a set's add) of
        #: keys with nothing else pending: key -> its sum (int), its one member (str) or
        #: members (set). No list per op: every container allocated here is GC work (the
        #: collector's passes cost a quarter of the NF's CPU when each op had one). A key
        #: is in ``hot`` or in ``pending``, never both.
        self.hot: dict[str, Any] = {}
        self.hot_op = next((op for op, k in kinds.items() if k in (SUM, UNION)), None)
        self.hot_kind = kinds[self.hot_op] if self.hot_op is not None else NONE
        #: op -> the JSON fragment '0,<sidx>,"<op>",' that starts a run of its ops
        self.prefix = {op: f"0,{sidx},{json.dumps(op)}," for op in kinds}

    @property
    def has_ops(self) -> bool:
        return bool(self.pending or self.hot)


def encode(
    lanes: list[Lane],
    queue: list[Req],
    owner: Any,
    limit: int = 2000,
) -> dict[int, list[Frame]]:
    """The pending ops as run frames (cogs/coordinator/frames.py) per node.

    Lane ops go first, one run per (state, op) and node; a key with several groups
    keeps them in order as runs of one; requests follow in arrival order. Built from
    fragments: at this rate json.dumps of a list costs more than the Lua that
    applies it. Routes are computed, not cached: a cache of the long tail of keys
    misses the CPU's caches and costs twice the C calls (1.0 vs 0.4 us per op).
    """
    nodes: dict[int, Frames] = {}

    def frames(n: int) -> Frames:
        f = nodes.get(n)
        if f is None:
            f = nodes[n] = Frames(limit)
        return f

    def wire(kind: int, acc: Any) -> str:
        if kind == SUM:
            return f'"{acc}"'
        if kind == UNION:
            return members(acc)
        if kind == MAPSUM:  # counts as decimal strings: exact past 2^53 (Lua numbers are doubles)
            return json.dumps({f: str(v) for f, v in acc.items()})
        return json.dumps(acc)

    for lane in lanes:
        prefix = lane.prefix
        singles: dict[tuple[int, str], list[str]] = {}  # (node, op) -> "key,arg" fragments
        multi: list[tuple[int, list[Any], str]] = []
        hop = lane.hot_op
        if hop is not None and lane.hot:
            for n, frags in _hot_fragments(lane, owner).items():
                singles[(n, hop)] = frags
        for key, g in lane.pending.items():
            if g[0] is None and len(g) == 3:
                continue  # only a marker (order.py): the key's ops are in the request queue
            r = route(key)
            n = owner[r[1]]
            if len(g) == 3:
                acc = g[2]
                frag = f'{r[0]},"{acc}"' if g[1] == SUM else f"{r[0]},{wire(g[1], acc)}"
                lst = singles.get((n, g[0]))
                if lst is None:
                    lst = singles[(n, g[0])] = []
                lst.append(frag)
            else:
                multi.append((n, g, r[0]))
        for (n, op), frags in singles.items():
            frames(n).run(prefix[op], frags)
        for n, g, ekj in multi:
            f = frames(n)
            for j in range(0, len(g), 3):
                if g[j] is not None:  # (a marker: order.py)
                    f.one(f"{prefix[g[j]]}1,{ekj},{wire(g[j + 1], g[j + 2])}")
    for req in queue:  # "mode,state,op,1,key,arg" from cached fragments (json.dumps of a list costs more)
        r = route(req.key)
        frames(owner[r[1]]).one(f"{req.mode},{req.sidx},{jstr(req.op)},1,{r[0]},{arg_json(req.arg)}", req)
    return {n: f.frames() for n, f in nodes.items()}


def _hot_fragments(lane: Lane, owner: Any) -> dict[int, list[str]]:
    """node -> "key,arg" fragments of the lane's hot op (``Lane.hot``)."""
    per: dict[int, list[str]] = {}
    sums = lane.hot_kind == SUM
    for key, acc in lane.hot.items():
        ekj, s = route(key)
        frags = per.get(owner[s])
        if frags is None:
            frags = per[owner[s]] = []
        frags.append(f'{ekj},"{acc}"' if sums else f"{ekj},{members(acc)}")
    return per


def coalesce_kinds(declared: Mapping[str, str], update_ops: tuple[str, ...]) -> dict[str, int]:
    """Op -> SUM / UNION / NONE, from a type's ``-- coalesce:`` header."""
    return {op: _KINDS.get(declared.get(op, ""), NONE) for op in (*update_ops, "clear")}
