"""State operations against the coordinator: validate, route per node, batch, decode.

:class:`StateTable` is the paper's state table seen from one process, without any
proxy-side batching or caching: every call is one round trip per node involved. The
state proxy builds its batching and caches on the same pieces (``prepare``,
``Coordinator.call_batch``, ``decode``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import anyio

from cogs.catalog import Catalog, StateSpec
from cogs.coordinator.client import Coordinator
from cogs.coordinator.library import TypeSpec
from cogs.errors import BadDelta, BadKey, CogsError, Moved, OpError, UnknownOp, UnknownState, op_error
from cogs.keys import MAX_KEY_BYTES, escape, slot
from cogs.values import Decoder, check_decoder, retrieve_decoder


class Mode(IntEnum):
    UPDATE = 0  # trigger path: no result
    UPDATE_GET = 1  # direct path: returns the new state
    RETRIEVE = 2
    CHECK = 3


@dataclass(frozen=True, slots=True)
class Op:
    """One state operation as a user names it."""

    mode: Mode
    state: str
    key: str
    op: str
    arg: Any = None


@dataclass(frozen=True, slots=True)
class Prepared:
    node: int
    wire: tuple[int, int, str, str, Any]
    decode: Decoder | None


MAX_REROUTES = 5
_GENERIC_UPDATE = ("clear",)
_GENERIC_RETRIEVE = ("exists", "ttl")


def wire_arg(arg: Any, spec: StateSpec, op: str) -> Any:
    """Validate what JSON can carry and give ints as strings (Lua passes them on as is)."""
    if arg is None or isinstance(arg, str):
        return arg
    if isinstance(arg, bool):
        raise BadDelta(
            f"BAD_DELTA state={spec.name} op={op}: a boolean is not a valid argument",
            state=spec.name,
            op=op,
        )
    if isinstance(arg, int):
        # a decimal string passes exactly (a JSON number is a double in Lua)
        return str(arg)
    if isinstance(arg, float):
        if not math.isfinite(arg):
            raise BadDelta(
                f"BAD_DELTA state={spec.name} op={op}: {arg} is not a finite number",
                state=spec.name,
                op=op,
            )
        return arg
    if isinstance(arg, list | tuple | set | frozenset):
        return [wire_arg(x, spec, op) if not isinstance(x, str) else x for x in arg]
    if isinstance(arg, dict):
        return {str(k): (v if isinstance(v, str) else wire_arg(v, spec, op)) for k, v in arg.items()}
    raise BadDelta(
        f"BAD_DELTA state={spec.name} op={op}: cannot send a {type(arg).__name__} "
        "(use str, int, float, or a list/dict of them)",
        state=spec.name,
        op=op,
    )


class StateTable:
    """Update / Retrieve / Check on the coordinator, one round trip per node per call."""

    def __init__(self, coord: Coordinator, catalog: Catalog, token: str) -> None:
        self.coord = coord
        self.catalog = catalog
        self.token = token

    @classmethod
    async def open(cls, coord: Coordinator, expected: Catalog | None = None) -> StateTable:
        catalog, token = await coord.stored_catalog(expected)
        return cls(coord, catalog, token)

    # -- preparing ---------------------------------------------------------------------

    def spec_of(self, state: str) -> tuple[StateSpec, TypeSpec]:
        if state not in self.catalog:
            known = ", ".join(s.name for s in self.catalog)
            msg = f"UNKNOWN_STATE state={state!r}: not in the catalog (has: {known})"
            raise UnknownState(msg, state=state)
        st = self.catalog.get(state)
        ts = self.catalog.spec.types.get(st.type)
        if ts is None:
            raise UnknownState(
                f"UNKNOWN_STATE state={state!r}: {st.state_class} states do not live in the coordinator",
                state=state,
            )
        return st, ts

    def prepare(self, op: Op) -> Prepared:
        st, ts = self.spec_of(op.state)
        if op.mode in (Mode.UPDATE, Mode.UPDATE_GET):
            known, decode = (
                (*ts.update, *_GENERIC_UPDATE),
                (retrieve_decoder(ts.name, ts.whole) if op.mode == Mode.UPDATE_GET else None),
            )
        elif op.mode == Mode.RETRIEVE:
            known, decode = (*ts.retrieve, *_GENERIC_RETRIEVE), retrieve_decoder(ts.name, op.op)
        else:
            known, decode = (*ts.check, "checker"), check_decoder()
        if op.op not in known:
            raise UnknownOp(
                f"UNKNOWN_OP state={op.state} op={op.op!r}: type {ts.name} has no "
                f"{op.mode.name.lower().replace('_get', '')} op {op.op!r} (has: {', '.join(known)})",
                state=op.state,
                op=op.op,
            )
        key = escape(op.key) if isinstance(op.key, str) else ""
        if not key or len(key.encode()) > MAX_KEY_BYTES:
            raise BadKey(
                f"BAD_KEY state={op.state} key={op.key!r}: a key must be a non-empty str of at most "
                f"{MAX_KEY_BYTES} bytes",
                state=op.state,
                key=str(op.key),
            )
        node = self.coord.topology.node_of(slot(key)) if self.coord.topology else 0
        wire = (int(op.mode), self.catalog.index(op.state), op.op, key, wire_arg(op.arg, st, op.op))
        return Prepared(node, wire, decode)

    # -- executing ---------------------------------------------------------------------

    async def execute(self, ops: Sequence[Op], *, raise_errors: bool = False) -> list[Any]:
        """Run ``ops``; return per op its value (None for plain updates) or its error.

        An error is an :class:`OpError` for a refused op, or the :class:`CogsError` that
        failed the op's whole node batch (node unreachable, library outdated).

        Ops on the same key keep their order (same node, one call, applied in order).
        Ops whose slot moved are re-routed after re-reading the slot map.
        """
        results: list[Any] = [None] * len(ops)
        pending: list[tuple[int, Prepared]] = []
        for i, op in enumerate(ops):
            try:
                pending.append((i, self.prepare(op)))
            except OpError as e:
                results[i] = e
        for attempt in range(MAX_REROUTES + 1):
            moved = await self._send(ops, pending, results)
            if not moved:
                break
            if attempt == MAX_REROUTES:
                for i, _ in moved:
                    results[i] = Moved(
                        f"MOVED: gave up after {MAX_REROUTES} re-routes",
                        state=ops[i].state,
                        key=ops[i].key,
                    )
                break
            await anyio.sleep(0.05 * attempt)
            await self.coord.refresh()
            pending = [(i, self.prepare(ops[i])) for i, _ in moved]
        if raise_errors:
            for r in results:
                if isinstance(r, CogsError):
                    raise r
        return results

    async def _send(
        self, ops: Sequence[Op], pending: list[tuple[int, Prepared]], results: list[Any]
    ) -> list[tuple[int, Prepared]]:
        by_node: dict[int, list[tuple[int, Prepared]]] = {}
        for item in pending:
            by_node.setdefault(item[1].node, []).append(item)
        moved: list[tuple[int, Prepared]] = []

        async def one(node: int, items: list[tuple[int, Prepared]]) -> None:
            flat = [x for _, p in items for x in p.wire]
            payload = json.dumps(flat, separators=(",", ":"))
            try:
                reply = await self.coord.call_batch(node, self.token, self.coord.alert_stream(node), payload)
            except CogsError as failed:  # the whole node batch failed: every op in it reports why
                for i, _ in items:
                    results[i] = failed
                return
            for j, (i, p) in enumerate(items):
                err = reply.errors.get(j)
                if err is not None:
                    e = op_error(err, state=ops[i].state, key=ops[i].key, op=ops[i].op)
                    if isinstance(e, Moved):
                        moved.append((i, p))
                    results[i] = e
                elif p.decode is not None:
                    results[i] = p.decode(reply.results.get(j))

        async with anyio.create_task_group() as tg:
            for node, items in by_node.items():
                tg.start_soon(one, node, items)
        return moved

    # -- one-op conveniences (the paper's names live on the proxy) -----------------------

    async def update(self, state: str, key: str, op: str, delta: Any = None) -> Any:
        """Apply ``op`` with ``delta``; return the new state."""
        return (await self.execute([Op(Mode.UPDATE_GET, state, key, op, delta)], raise_errors=True))[0]

    async def retrieve(self, state: str, key: str, op: str | None = None, arg: Any = None) -> Any:
        """Read a state (``op`` defaults to the type's whole-state read)."""
        if op is None:
            op = self.spec_of(state)[1].whole
        return (await self.execute([Op(Mode.RETRIEVE, state, key, op, arg)], raise_errors=True))[0]

    async def check(self, state: str, key: str, op: str = "checker", arg: Any = None) -> bool:
        """Evaluate a predicate (or the state's checker) at the coordinator."""
        return bool((await self.execute([Op(Mode.CHECK, state, key, op, arg)], raise_errors=True))[0])
