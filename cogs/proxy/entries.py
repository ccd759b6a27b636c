"""Entry ops: types whose ops read or write one entry of a key (portmap).

A NAT's port block is one key; its entries are the mappings (``o|<flow>``,
``i|<ip>|<port>``). Each reply is ``{value, version, idle ms left}``; in replica
mode the value is cached under its entry until a discard names it or half its idle
time passed (a busy entry is re-read, which keeps it alive at the coordinator).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cogs.coordinator.ops import Schema
from cogs.errors import ProxyClosed, show
from cogs.protocol import Mode
from cogs.proxy.cache import MISS
from cogs.proxy.requests import Callback, ErrorCallback, Req
from cogs.proxy.submit import Submitter
from cogs.values import generic


class EntryOps:
    def __init__(self, submit: Submitter, schema: Schema, replica_entries: frozenset[str]) -> None:
        self.submit, self.schema, self.replica_entries = submit, schema, replica_entries
        self._modes: dict[tuple[str, str], int] = {}  # (state, op) -> update or retrieve
        self.async_ops = 0

    def _req(self, state: str, key: str, op: str, arg: Any, entry: str) -> Req:
        mode = self._modes.get((state, op))
        if mode is None:
            _, ts, _ = self.schema.state(state)
            mode = self._modes[(state, op)] = Mode.UPDATE_GET if op in ts.update else Mode.RETRIEVE
        req = self.submit.make(mode, state, key, op, arg)
        req.decode = generic
        req.cache_key = (req.sidx, entry)
        if state in self.replica_entries:
            if req.mode == Mode.RETRIEVE:
                req.mode = Mode.RETRIEVE_REPLICA
            req.epoch = self.submit.requests.cache.begin_fetch(req.cache_key)
        return req

    def forget(self, state: str, entries: list[str]) -> None:
        """This proxy changes these entries (a release): its cached copies go now, and
        a fetch of one already under way is not cached (read-your-writes)."""
        if state in self.replica_entries:
            sidx = self.schema.index[state]
            for entry in entries:
                self.submit.requests.cache.written((sidx, entry))

    def _hit(self, state: str, entry: str) -> Any:
        if self.submit.batcher.closed:
            raise ProxyClosed(f"the proxy is closed: {state} entry {show(entry)} refused")
        if state not in self.replica_entries:
            return MISS
        return self.submit.requests.cache.get((self.schema.index[state], entry))

    async def syn(self, state: str, key: str, op: str, arg: Any, entry: str, *, share: bool = False) -> Any:
        """An op on one entry of ``state[key]``. ``share``: callers asking for the same
        entry while one op is in flight wait for that one (the op is idempotent)."""
        hit = self._hit(state, entry)
        if hit is not MISS:
            return hit
        reads = self.submit.requests.entry_reads
        if share:
            shared = reads.get((self.schema.index[state], entry))
            if shared is not None:
                fut: asyncio.Future[Any] = self.submit.requests.future(shared)
                return await fut
        req = self._req(state, key, op, arg, entry)
        if share:
            reads[(req.sidx, entry)] = req
        return await self.submit.wait(req)

    def asyn(
        self,
        state: str,
        key: str,
        op: str,
        arg: Any,
        entry: str,
        callback: Callback,
        packet: Any = None,
        *,
        share: bool = False,
        on_fail: ErrorCallback | None = None,
    ) -> None:
        """``syn`` with a callback: ``callback(value, packet)`` at once on a cache hit,
        else when the reply is back; ``on_fail(error, packet)`` if it is refused
        (default: the proxy's on_error)."""
        self.async_ops += 1
        requests = self.submit.requests
        hit = self._hit(state, entry)
        if hit is not MISS:
            requests.call(callback, hit, packet)
            return
        if share:
            shared = requests.entry_reads.get((self.schema.index[state], entry))
            if shared is not None:
                requests.hold(shared, callback, packet, on_fail)
                return
        req = self._req(state, key, op, arg, entry)
        if share:
            requests.entry_reads[(req.sidx, entry)] = req
        requests.hold(req, callback, packet, on_fail)
        self.submit.batcher.submit(req, now=False)
