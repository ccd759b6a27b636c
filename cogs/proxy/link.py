"""One pipelined connection per primary.

A proxy sends every batch for a node on one connection without waiting for the
previous reply; replies come back in order. Redis executes the commands of one
connection in the order they were written, so batches to a node are applied in send
order (per-key order across batches) and Redis never idles while the proxy encodes
the next batch.

redis-py opens the connection (TLS, AUTH as the proxy's ACL user, its handshake);
then this module takes the socket's transport over: a request is packed and written
by hiredis in the caller's step, and replies are parsed by hiredis in the transport's
callback. That is the proxy's hot path: redis-py's async reader costs about as much
again per call (timeout context, stream reader, one task switch more).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import anyio
import hiredis
from redis import exceptions as rexc
from redis.asyncio.connection import AbstractConnection

from cogs.errors import NETWORK_ERRORS, CoordinatorUnavailable


class _Replies(asyncio.Protocol):
    """The protocol of a taken-over connection: replies to the link, in order."""

    def __init__(self, link: NodeLink, transport: asyncio.Transport) -> None:
        self.link, self.transport = link, transport
        self.parser = hiredis.Reader()
        self.writable: asyncio.Event | None = None  # set while the kernel buffer is full

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
            while (reply := self.parser.gets()) is not False:
                self.link._reply(self, reply)
        except hiredis.ProtocolError as e:
            self.link._fail(self, e)

    def eof_received(self) -> bool:
        return False  # close: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._fail(self, exc or ConnectionError("closed by the node"))
        self.resume_writing()

    def pause_writing(self) -> None:
        self.writable = asyncio.Event()

    def resume_writing(self) -> None:
        ev, self.writable = self.writable, None
        if ev is not None:
            ev.set()


class NodeLink:
    """``await link.call(*args)``: a command on the node's pipelined connection."""

    def __init__(self, addr: str, connection_class: type[AbstractConnection], kwargs: dict[str, Any]) -> None:
        self.addr = addr
        # deadlines are per call, here; the handshake of a node that accepts but never
        # answers (frozen) is bounded by the connect timeout plus the command timeout
        self._handshake_s = float(kwargs.get("socket_connect_timeout") or 2.0) + float(
            kwargs.get("socket_timeout") or 5.0
        )
        self._kwargs = {**kwargs, "socket_timeout": None}
        self._cls = connection_class
        self._conn: AbstractConnection | None = None  # kept for its socket's lifetime
        self._wire: _Replies | None = None
        self._fifo: deque[asyncio.Future[Any]] = deque()
        self._connecting = anyio.Lock()
        self.closed = False

    @property
    def inflight(self) -> int:
        return len(self._fifo)

    async def _connect(self) -> _Replies:
        async with self._connecting:
            if self._wire is not None:
                return self._wire
            if self.closed:
                raise CoordinatorUnavailable(f"link to {self.addr} is closed")
            conn = self._cls(**self._kwargs)
            try:
                with anyio.fail_after(self._handshake_s):
                    await conn.connect()
            except NETWORK_ERRORS as e:  # TimeoutError included
                with contextlib.suppress(*NETWORK_ERRORS, rexc.RedisError):
                    await conn.disconnect(nowait=True)
                raise CoordinatorUnavailable(f"coordinator node {self.addr}: {type(e).__name__} {e}") from e
            except rexc.RedisError as e:  # refused the handshake (credentials, LOADING): try again later
                with contextlib.suppress(*NETWORK_ERRORS, rexc.RedisError):
                    await conn.disconnect()
                raise CoordinatorUnavailable(f"coordinator node {self.addr}: {e}") from e
            writer = getattr(conn, "_writer", None)  # redis-py's stream, after its handshake
            if writer is None:
                raise CoordinatorUnavailable(f"coordinator node {self.addr}: the redis client has no transport")
            transport: asyncio.Transport = writer.transport
            wire = _Replies(self, transport)
            transport.set_protocol(wire)  # nothing is in flight: no reply is left behind
            self._conn, self._wire = conn, wire
            return wire

    async def open(self) -> None:
        """Connect, unless connected."""
        if self._wire is None:
            await self._connect()

    def drop(self, cause: BaseException) -> None:
        """Drop the connection now: every request in flight on it fails."""
        if self._wire is not None:
            self._fail(self._wire, cause)

    @property
    def ready(self) -> bool:
        """Connected: ``send`` can go out at once."""
        return self._wire is not None

    def send(self, args: tuple[Any, ...], timeout: float = 10.0) -> asyncio.Future[Any]:
        """Write a command now (the link must be ``ready``); its reply's future, failed
        with CoordinatorUnavailable when the connection drops or ``timeout`` passes."""
        wire = self._wire
        assert wire is not None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # append and write in one synchronous step: the FIFO order is the wire order
        self._fifo.append(fut)
        try:
            wire.transport.write(hiredis.pack_command(args))
        except (RuntimeError, OSError) as e:  # the transport is closing
            self._fail(wire, e)
        # a plain timer, not a cancel scope per call. A caller cancelled meanwhile
        # cancels only its future: its reply is still taken off the FIFO
        timer = fut.get_loop().call_later(timeout, self._expire, wire, fut, timeout)
        fut.add_done_callback(lambda _: timer.cancel())
        return fut

    async def call(self, *args: Any, timeout: float = 10.0) -> Any:  # noqa: ASYNC109 - per-request deadline
        wire = self._wire or await self._connect()
        fut = self.send(args, timeout)
        if wire.writable is not None:  # the node reads slower than we write: wait
            await wire.writable.wait()
        return await fut

    def _reply(self, wire: _Replies, reply: Any) -> None:
        if wire is not self._wire or not self._fifo:
            return  # a reply on a dropped connection, or for a request already failed
        fut = self._fifo.popleft()
        if fut.done():
            return
        if isinstance(reply, hiredis.ReplyError):
            fut.set_exception(rexc.ResponseError(str(reply)))  # the code stays in the text
        else:
            fut.set_result(reply)

    def _expire(self, wire: _Replies, fut: asyncio.Future[Any], timeout: float) -> None:
        if fut.done():
            return
        # the reply may still come: the connection is no longer trustworthy
        err = CoordinatorUnavailable(f"coordinator node {self.addr}: no reply in {timeout:g}s")
        fut.set_exception(err)
        self._fail(wire, err)

    def _fail(self, wire: _Replies, cause: BaseException) -> None:
        """Drop the connection; every request in flight on it fails (it may or may not
        have been applied: only the caller knows whether a retry is safe)."""
        if self._wire is not wire:
            return
        conn, self._wire, self._conn = self._conn, None, None
        err = CoordinatorUnavailable(f"coordinator node {self.addr}: connection lost ({cause})")
        while self._fifo:
            fut = self._fifo.popleft()
            if not fut.done():
                fut.set_exception(err)
        wire.transport.abort()  # unsent requests go too: they were failed above
        if conn is not None:  # let redis-py close its side (no "unclosed connection" warning)
            asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))

    async def aclose(self) -> None:
        self.closed = True
        if self._wire is not None:
            self._fail(self._wire, CoordinatorUnavailable("closed"))
