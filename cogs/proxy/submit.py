"""Sending requests: one op to the coordinator through the batcher, waited for or not.

The sync ops, the async ops, the entry ops and the indirect states' locator ops all
go out this way: a replica-mode read registers its fetch with the replica cache, a
whole-state read is shared with later reads of the key, and a caller who waits gets
its answer (or the error) on a future.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cogs.coordinator.ops import Schema, wire_arg
from cogs.errors import BadKey, ProxyClosed, refuse, show
from cogs.keys import key_problem
from cogs.protocol import Mode
from cogs.proxy.batcher import Batcher
from cogs.proxy.requests import Req, RequestTable


class Submitter:
    def __init__(self, batcher: Batcher, requests: RequestTable, schema: Schema) -> None:
        self.batcher, self.requests, self.schema = batcher, requests, schema
        self.sync_ops = 0

    def make(self, mode: int, state: str, key: str, op: str | None, arg: Any) -> Req:
        """A request, checked where it enters: state, op, key and argument."""
        if self.batcher.closed:
            raise ProxyClosed(f"the proxy is closed: {state}[{show(key)}] {op or 'retrieve'} refused")
        st, sidx, name, decode = self.schema.request(state, mode, op)
        problem = key_problem(key)
        if problem is not None:
            raise refuse(BadKey, problem, state=state, key=key, op=op)
        req = Req(mode, state, sidx, key, name, wire_arg(arg, st, name), decode)
        if mode in (Mode.UPDATE, Mode.UPDATE_GET):
            self.requests.written(sidx, key)  # later reads must see this update
        return req

    def locator(self, mode: int, state: str, sidx: int, key: str, op: str, arg: Any) -> Req:
        """A locator op of an indirect state (state reference table)."""
        if self.batcher.closed:
            raise ProxyClosed(f"the proxy is closed: {state}[{show(key)}] {op} refused")
        problem = key_problem(key)
        if problem is not None:
            raise refuse(BadKey, problem, state=state, key=key, op=op)
        return Req(mode, state, sidx, key, op, arg, None)

    def replicated(self, req: Req) -> bool:
        """A whole-state read of a replica-mode state: served by / filling the cache."""
        return req.arg is None and self.requests.replica_whole.get(req.state) == req.op

    def send(self, req: Req, *, now: bool) -> None:
        if req.mode == Mode.RETRIEVE:
            if self.replicated(req):
                req.mode = Mode.RETRIEVE_REPLICA
                req.epoch = self.requests.cache.begin_fetch((req.sidx, req.key))
            if req.arg is None:
                self.requests.share(req)
        self.batcher.submit(req, now=now)

    def queue(self, req: Req, *, now: bool = False) -> asyncio.Future[Any]:
        """Queue ``req`` now, before anything queued after this call; its reply's future
        (``now``: flush at once, a caller waits for it)."""
        fut = self.requests.future(req)
        self.send(req, now=now)
        return fut

    async def wait(self, req: Req) -> Any:
        """Send ``req`` (or join the same read under way) and wait for its answer."""
        if not self.batcher.has_room(1, req.key):  # on its node's channel too
            await self.batcher.wait_room(1, req.key)
        self.sync_ops += 1
        if req.mode == Mode.RETRIEVE and req.arg is None:
            shared = self.requests.shared_read(req.sidx, req.key, req.op)
            if shared is not None:
                fut = self.requests.future(shared)
                self.batcher.kick()
                return await fut
        return await self.queue(req, now=True)
