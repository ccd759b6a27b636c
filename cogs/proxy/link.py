"""One pipelined connection per primary.

A proxy sends every batch for a node on one connection without waiting for the
previous reply, and a reader task hands replies back in order. Redis executes the
commands of one connection in the order they were written, so batches to a node are
applied in send order (per-key order across batches) and Redis never idles while
the proxy encodes the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import anyio
import hiredis  # its C encoder: redis-py's async connection packs in Python, ~10x slower
from redis import exceptions as rexc
from redis.asyncio.connection import AbstractConnection

from cogs.errors import CoordinatorUnavailable


class NodeLink:
    """``await link.call(*args)``: a command on the node's pipelined connection."""

    def __init__(self, addr: str, connection_class: type[AbstractConnection], kwargs: dict[str, Any]) -> None:
        self.addr = addr
        # Timeouts are handled per call here: a socket timeout inside redis-py would
        # move the write into a task and could reorder pipelined commands.
        self._kwargs = {**kwargs, "socket_timeout": None}
        self._cls = connection_class
        self._conn: AbstractConnection | None = None
        self._fifo: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._connecting = anyio.Lock()
        self.closed = False

    @property
    def inflight(self) -> int:
        return len(self._fifo)

    async def _connect(self) -> AbstractConnection:
        async with self._connecting:
            if self._conn is not None:
                return self._conn
            if self.closed:
                raise CoordinatorUnavailable(f"link to {self.addr} is closed")
            conn = self._cls(**self._kwargs)
            try:
                await conn.connect()
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as e:
                raise CoordinatorUnavailable(f"coordinator node {self.addr}: {e}") from e
            self._conn = conn
            self._reader = asyncio.get_running_loop().create_task(self._read(conn))
            return conn

    async def call(self, *args: Any, timeout: float = 10.0) -> Any:  # noqa: ASYNC109 - per-request deadline
        conn = self._conn or await self._connect()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # append and write in one synchronous step: the FIFO order is the wire order
        self._fifo.append(fut)
        try:
            await conn.send_packed_command(hiredis.pack_command(args), check_health=False)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as e:
            self._fail(conn, e)
        # a plain timer, not a cancel scope + shield per call: this is the proxy's hot path.
        # A caller cancelled meanwhile cancels only its future: the reader still takes its
        # reply off the FIFO, so later replies keep their order
        timer = fut.get_loop().call_later(timeout, self._expire, conn, fut, timeout)
        try:
            return await fut
        finally:
            timer.cancel()

    def _expire(self, conn: AbstractConnection, fut: asyncio.Future[Any], timeout: float) -> None:
        if fut.done():
            return
        # the reply may still come: the connection is no longer trustworthy
        err = CoordinatorUnavailable(f"coordinator node {self.addr}: no reply in {timeout:g}s")
        fut.set_exception(err)
        self._fail(conn, err)

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            try:
                reply = await conn.read_response(disconnect_on_error=False)
            except rexc.ResponseError as e:
                reply = e
            except (rexc.ConnectionError, rexc.TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                self._fail(conn, e)
                return
            except asyncio.CancelledError:
                return
            if not self._fifo:
                continue  # a reply for a request already failed by a timeout
            fut = self._fifo.popleft()
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def _fail(self, conn: AbstractConnection, cause: BaseException) -> None:
        """Drop the connection; every request in flight on it fails (it may or may not
        have been applied: only the caller knows whether a retry is safe)."""
        if self._conn is not conn:
            return
        self._conn = None
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        err = CoordinatorUnavailable(f"coordinator node {self.addr}: connection lost ({cause})")
        while self._fifo:
            fut = self._fifo.popleft()
            if not fut.done():
                fut.set_exception(err)
        asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))

    async def aclose(self) -> None:
        self.closed = True
        conn = self._conn
        if conn is not None:
            self._fail(conn, CoordinatorUnavailable("closed"))
        if conn is not None:
            await conn.disconnect(nowait=True)
