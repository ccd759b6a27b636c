"""State operations against the coordinator: validate, route per node, batch, decode.

:class:`StateTable` is the paper's state table seen from one process, without any
proxy-side batching or caching: every call is one round trip per node involved. It
shares the proxy's pieces: the request checks (:class:`Schema`, ``wire_arg``), the
one frame encoder (frames.py), the one error boundary (``errors.from_redis``) and
the one re-route policy (reroute.py). Its batches are not numbered: an update whose
connection dropped is reported as failed (its outcome unknown), never re-sent; the
proxy is the exactly-once path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from cogs.catalog import Catalog, StateSpec
from cogs.coordinator.client import Coordinator
from cogs.coordinator.frames import Frames
from cogs.coordinator.reroute import Reroute
from cogs.errors import (
    BadDelta,
    BadKey,
    CogsError,
    Moved,
    OpError,
    UnknownOp,
    UnknownState,
    bad_reply,
    op_error,
    refuse,
    show,
)
from cogs.keys import escape, key_problem, slot
from cogs.library import TypeSpec
from cogs.protocol import Mode
from cogs.values import Decoder, check_decoder, retrieve_decoder


@dataclass(frozen=True, slots=True)
class Op:
    """One state operation as a user names it."""

    mode: Mode
    state: str
    key: str
    op: str | None  # None: a retrieve of the whole state
    arg: Any = None


@dataclass(frozen=True, slots=True)
class Prepared:
    node: int
    wire: tuple[int, int, str, str, Any]  # mode, state index, op, key (as given), argument
    decode: Decoder | None


_GENERIC_UPDATE = ("clear",)
_GENERIC_RETRIEVE = ("exists", "ttl")
_KIND_NAMES = {
    Mode.UPDATE: "update", Mode.UPDATE_GET: "update", Mode.RETRIEVE: "retrieve", Mode.CHECK: "check",
    Mode.RETRIEVE_REPLICA: "retrieve",
}  # fmt: skip


def wire_arg(arg: Any, spec: StateSpec, op: str) -> Any:
    """Validate what JSON can carry and give ints as strings (Lua passes them on as is)."""
    if arg is None:
        return arg
    if isinstance(arg, str):
        if not arg.isascii():
            _text(arg, spec, op)
        return arg
    if isinstance(arg, bool):
        raise refuse(BadDelta, "a boolean is not a valid argument", state=spec.name, op=op)
    if isinstance(arg, int):
        # a decimal string passes exactly (a JSON number is a double in Lua)
        return str(arg)
    if isinstance(arg, float):
        if not math.isfinite(arg):
            raise refuse(BadDelta, f"{arg} is not a finite number", state=spec.name, op=op)
        return arg
    if isinstance(arg, list | tuple | set | frozenset):
        return [wire_arg(x, spec, op) for x in arg]
    if isinstance(arg, dict):
        return {wire_arg(str(k), spec, op): wire_arg(v, spec, op) for k, v in arg.items()}
    msg = f"cannot send a {type(arg).__name__} (use str, int, float, or a list/dict of them)"
    raise refuse(BadDelta, msg, state=spec.name, op=op)


def _text(s: str, spec: StateSpec, op: str) -> None:
    try:
        s.encode()
    except UnicodeEncodeError:
        raise refuse(
            BadDelta, f"text must be valid Unicode (it holds a lone surrogate): {show(s)}", state=spec.name, op=op
        ) from None


class Schema:
    """What a catalog allows: states held by the coordinator, their ops, reply decoders."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.index = {s.name: catalog.index(s.name) for s in catalog}
        #: (state, mode, op) -> what ``request`` found: every sync op asks again
        self._requests: dict[tuple[str, int, str | None], tuple[StateSpec, int, str, Decoder]] = {}

    def request(self, name: str, mode: int, op: str | None) -> tuple[StateSpec, int, str, Decoder]:
        """``state`` and ``op`` in one look-up, remembered once valid: (spec, index, op, decoder)."""
        got = self._requests.get((name, mode, op))
        if got is None:
            st, _, sidx = self.state(name)
            op_name, decode = self.op(name, mode, op)
            got = self._requests[(name, mode, op)] = (st, sidx, op_name, decode)
        return got

    def state(self, name: str) -> tuple[StateSpec, TypeSpec, int]:
        sidx = self.index.get(name)
        if sidx is None:
            raise refuse(UnknownState, f"not in the catalog (has: {', '.join(self.index)})", state=name)
        st = self.catalog.get(name)
        ts = self.catalog.spec.types.get(st.type)
        if ts is None or st.state_class == "indirect":
            raise refuse(UnknownState, f"{st.state_class} states do not live in the coordinator", state=name)
        return st, ts, sidx

    def op(self, name: str, mode: int, op: str | None) -> tuple[str, Decoder]:
        """The op to send for ``mode`` (retrieves default to the whole state) and its decoder."""
        _, ts, _ = self.state(name)
        if mode in (Mode.UPDATE, Mode.UPDATE_GET):
            known, decode = (*ts.update, *_GENERIC_UPDATE), retrieve_decoder(ts.name, ts.whole)
        elif mode == Mode.CHECK:
            known, decode = (*ts.check, "checker"), check_decoder()
        else:
            op = op or ts.whole
            known, decode = (*ts.retrieve, *_GENERIC_RETRIEVE), retrieve_decoder(ts.name, op)
        if op not in known:
            kind = _KIND_NAMES.get(Mode(mode), "update")
            raise refuse(
                UnknownOp, f"type {ts.name} has no {kind} op {op!r} (has: {', '.join(known)})", state=name, op=op
            )
        return op, decode


class StateTable:
    """Update / Retrieve / Check on the coordinator, one round trip per node per call."""

    def __init__(self, coord: Coordinator, catalog: Catalog, token: str) -> None:
        self.coord = coord
        self.catalog = catalog
        self.token = token
        self.schema = Schema(catalog)
        self.reroute = Reroute(coord.settings.reroute_timeout_s)

    @classmethod
    async def open(cls, coord: Coordinator, expected: Catalog | None = None) -> StateTable:
        catalog, token = await coord.stored_catalog(expected)
        return cls(coord, catalog, token)

    # -- preparing ---------------------------------------------------------------------

    def prepare(self, op: Op) -> Prepared:
        st, sidx, name, decode = self.schema.request(op.state, op.mode, op.op)
        problem = key_problem(op.key)
        if problem is not None:
            raise refuse(BadKey, problem, state=op.state, key=op.key, op=op.op)
        node = self.coord.topology.node_of(slot(escape(op.key))) if self.coord.topology else 0
        wire = (int(op.mode), sidx, name, op.key, wire_arg(op.arg, st, name))
        return Prepared(node, wire, None if op.mode == Mode.UPDATE else decode)

    # -- executing ---------------------------------------------------------------------

    async def execute(self, ops: Sequence[Op], *, raise_errors: bool = False) -> list[Any]:
        """Run ``ops``; return per op its value (None for plain updates) or its error.

        An error is an :class:`OpError` for a refused op, or the :class:`CogsError` that
        failed the op's whole node batch (node unreachable, library outdated).

        Ops on the same key keep their order (same node, one call, applied in order).
        Ops whose slot moved are re-routed after re-reading the slot map, as the
        proxy does (reroute.py).
        """
        results: list[Any] = [None] * len(ops)
        pending: list[tuple[int, Prepared]] = []
        for i, op in enumerate(ops):
            try:
                pending.append((i, self.prepare(op)))
            except OpError as e:
                results[i] = e
        first = 0.0
        while pending:
            moved = await self._send(ops, pending, results)
            if not moved:
                break
            now = time.monotonic()
            if self.reroute.expired(first, now):
                for i, _ in moved:
                    err = results[i]
                    results[i] = self.reroute.gave_up(err, state=ops[i].state, key=ops[i].key, op=str(ops[i].op))
                break
            first = first or now
            await anyio.sleep(self.reroute.delay)
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
            frames = Frames(len(items))
            for _, p in items:
                frames.op(*p.wire)
            ((payload, _, _),) = frames.frames()
            try:
                reply = await self.coord.call_batch(node, self.token, self.coord.alert_stream(node), payload)
            except CogsError as failed:  # the whole node batch failed: every op in it reports why
                for i, _ in items:
                    results[i] = failed
                return
            for j, (i, p) in enumerate(items):
                err = reply.errors.get(j)
                if err is not None:
                    e = op_error(err, state=ops[i].state, key=ops[i].key, op=str(ops[i].op))
                    if isinstance(e, Moved):
                        moved.append((i, p))
                    results[i] = e
                elif p.decode is not None:
                    raw = reply.results.get(j)
                    try:
                        results[i] = p.decode(raw)
                    except Exception as e:  # written outside cogs: this op fails alone
                        results[i] = bad_reply(e, raw, state=ops[i].state, key=ops[i].key, op=str(ops[i].op))

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
        return (await self.execute([Op(Mode.RETRIEVE, state, key, op, arg)], raise_errors=True))[0]

    async def check(self, state: str, key: str, op: str = "checker", arg: Any = None) -> bool:
        """Evaluate a predicate (or the state's checker) at the coordinator."""
        return bool((await self.execute([Op(Mode.CHECK, state, key, op, arg)], raise_errors=True))[0])
