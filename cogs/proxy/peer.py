"""The peer channel: proxies serve the indirect states they own to other proxies.

Wire format (version 1), over TCP:

    frame   = length (u32, big endian, counts kind + payload) | kind (1 byte) | payload
    kind    = "J": a JSON object (UTF-8)   "B": a chunk of a value's bytes

1. server -> client  J {"t": "hello", "v": 1, "id": <server id>, "nonce": <32 hex>}
2. client -> server  J {"t": "auth", "id": <client id>,
                        "mac": hex HMAC-SHA256(secret, "cogs-peer-v1|nonce|client id|server id")}
3. server -> client  J {"t": "ok"}, or J {"t": "error", "code": "AUTH", ...} and close
4. client -> server  J {"t": "req", "n": <int>, "op": "get"|"has"|"set"|"create"|"delete",
                        "state": <name>, "key": <key>, "size": <value bytes, 0 if none>}
                     then the value in B chunks (size bytes in all)
5. server -> client  J {"t": "res", "n": <int>, "ok": true, "version": <int>, "size": <bytes or -1>}
                     then the value in B chunks; or
                     J {"t": "res", "n": <int>, "ok": false, "code": <CODE>, "msg": <text>}

A peer without the shared secret reads and writes nothing (step 3). Frames are at
most MAX_FRAME bytes and values at most the state's max_bytes: a larger length, a
malformed frame, or a client that stalls mid-frame is answered with an error and
cut off; the server's other connections never notice. Every client request has a
deadline. Use TLS or a private network between proxies: the secret authenticates
the connection, it does not encrypt it.

Both ends are asyncio protocols: a frame is parsed in the transport's callback, a
message is one write, and only a request's handler runs as a task (anyio streams
cost ~2.5x the CPU per message: a receive event, a checkpoint per send, a cancel
scope per request).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from cogs.errors import PeerError

log = logging.getLogger("cogs.peer")
VERSION = 1
MAX_FRAME = 256 * 1024 + 1
CHUNK = 256 * 1024
FRAME_TIMEOUT = 10.0  # a frame, once started, must arrive whole within this
IDLE_TIMEOUT = 120.0
_HDR = struct.Struct(">IB")
_LEN = struct.Struct(">I")
J, B = ord("J"), ord("B")
#: get: the value; has: only whether (and which version) the peer holds it
OPS = ("get", "has", "set", "create", "delete")


class PeerRefusal(Exception):
    """An owner's answer that is not a value: code (NOT_OWNER, NOT_FOUND, ...) and text."""

    def __init__(self, code: str, msg: str) -> None:
        self.code, self.msg = code, msg
        super().__init__(f"{code} {msg}")


# -- framing ---------------------------------------------------------------------------


def message(obj: dict[str, Any], value: bytes | None = None) -> bytes:
    """A JSON header and the value's chunks after it, as one write."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    frames = [_HDR.pack(len(body) + 1, J), body]
    data = value or b""
    for i in range(0, len(data), CHUNK):
        part = data[i : i + CHUNK]
        frames += (_HDR.pack(len(part) + 1, B), part)
    return b"".join(frames)


class Frames:
    """Frames out of the bytes received so far."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def next(self) -> tuple[int, bytes] | None:
        """The next whole frame (kind, payload), or None until more bytes come.
        A bad length is refused as soon as its 4 bytes are in, before any more are read."""
        buf = self.buf
        if len(buf) < 4:
            return None
        (length,) = _LEN.unpack_from(buf)
        if length < 1 or length > MAX_FRAME:
            raise PeerRefusal("BAD_FRAME", f"frame length {length} outside 1..{MAX_FRAME}")
        if len(buf) < 4 + length:
            return None
        kind, payload = buf[4], bytes(buf[5 : 4 + length])
        del buf[: 4 + length]
        return kind, payload


def header(kind: int, payload: bytes) -> dict[str, Any]:
    if kind != J:
        raise PeerRefusal("BAD_FRAME", f"expected a JSON frame, got kind {kind!r}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise PeerRefusal("BAD_FRAME", f"not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise PeerRefusal("BAD_FRAME", "a header must be a JSON object")
    return obj


class Chunks:
    """The B frames of one announced value, which must add up to its size exactly."""

    __slots__ = ("got", "parts", "size")

    def __init__(self, size: int) -> None:
        self.size, self.got = size, 0
        self.parts: list[bytes] = []

    def add(self, kind: int, payload: bytes) -> bytes | None:
        """Take one frame; the whole value once it is complete, else None."""
        if kind != B or self.got + len(payload) > self.size:
            raise PeerRefusal("BAD_FRAME", f"value chunks do not add up to the {self.size} bytes announced")
        self.parts.append(payload)
        self.got += len(payload)
        return b"".join(self.parts) if self.got == self.size else None


def _mac(secret: bytes, nonce: str, client: str, server: str) -> str:
    return hmac.new(secret, f"cogs-peer-v1|{nonce}|{client}|{server}".encode(), hashlib.sha256).hexdigest()


# -- server ----------------------------------------------------------------------------

#: (op, state, key, value) -> (version, value or None); raises PeerRefusal
Handler = Callable[[str, str, str, bytes | None], Awaitable[tuple[int, bytes | None]]]
SizeLimit = Callable[[str], int]


class _Session(asyncio.Protocol):
    """One peer's connection: hello, auth, then requests one at a time (frames a
    client sends ahead wait in the buffer). Cut, with an error frame, on a bad frame
    or bad auth; cut silently when a started frame stalls or the peer idles."""

    def __init__(self, server: PeerServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.frames = Frames()
        self.transport: asyncio.Transport | None = None
        self.nonce = secrets.token_hex(16)
        self.authed = self.busy = self.closed = False
        #: a set/create waiting for its value: (n, op, state, key), and its chunks so far
        self.pending: tuple[int, str, str, str] | None = None
        self.chunks = Chunks(0)
        self.task: asyncio.Task[None] | None = None
        now = self.loop.time()
        self.since = now  # the last whole frame (or the start)
        self.frame_started = 0.0  # when the first byte of an incomplete frame came
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        srv = self.server
        if len(srv.sessions) >= srv.max_connections:
            self.closed = True
            transport.close()  # full: refuse at once rather than queue
            return
        srv.sessions.add(self)
        self.transport.write(message({"t": "hello", "v": VERSION, "id": srv.proxy_id, "nonce": self.nonce}))
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.frames.buf:
            self.frame_started = self.loop.time()
        self.frames.buf += data
        self._drain()

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.sessions.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def _drain(self) -> None:
        try:
            while not self.busy and not self.closed:
                frame = self.frames.next()
                if frame is None:
                    break
                self.since = self.frame_started = self.loop.time()
                self._frame(*frame)
        except PeerRefusal as e:
            self._refuse(e)
            return
        self._arm()

    def _frame(self, kind: int, payload: bytes) -> None:
        if not self.authed:
            self._auth(header(kind, payload))
        elif self.pending is not None:  # a chunk of a value being sent
            value = self.chunks.add(kind, payload)
            if value is not None:
                (n, op, state, key), self.pending = self.pending, None
                self._run(n, op, state, key, value)
        else:
            self._request(header(kind, payload))

    def _auth(self, auth: dict[str, Any]) -> None:
        srv = self.server
        client, mac = auth.get("id"), auth.get("mac")
        if auth.get("t") != "auth" or not isinstance(client, str) or not isinstance(mac, str):
            raise PeerRefusal("AUTH", "expected an auth frame")
        if not hmac.compare_digest(mac, _mac(srv.secret, self.nonce, client, srv.proxy_id)):
            raise PeerRefusal("AUTH", f"peer {client!r} does not know the cluster's secret")
        self.authed = True
        self._write(message({"t": "ok"}))

    def _request(self, req: dict[str, Any]) -> None:
        n, op, state, key, size = req.get("n"), req.get("op"), req.get("state"), req.get("key"), req.get("size", 0)
        if req.get("t") != "req" or not isinstance(n, int) or op not in OPS:
            raise PeerRefusal("BAD_FRAME", f"a request needs t=req, an int n and op {'|'.join(OPS)}")
        if not isinstance(state, str) or not isinstance(key, str) or not isinstance(size, int) or size < 0:
            raise PeerRefusal("BAD_FRAME", "a request needs a state name, a key and a size >= 0")
        limit = self.server.max_value(state)
        if size > limit:
            raise PeerRefusal("OVERSIZE", f"value of {size} bytes over the {limit} bytes of state {state}")
        if op in ("set", "create"):
            if size:
                self.pending, self.chunks = (n, op, state, key), Chunks(size)
                return
            self._run(n, op, state, key, b"")
        else:
            self._run(n, op, state, key, None)

    def _run(self, n: int, op: str, state: str, key: str, value: bytes | None) -> None:
        self.busy = True
        self.task = self.loop.create_task(self._handle(n, op, state, key, value))
        self.server.tasks.add(self.task)
        self.task.add_done_callback(self.server.tasks.discard)

    async def _handle(self, n: int, op: str, state: str, key: str, value: bytes | None) -> None:
        srv = self.server
        try:
            version, out = await srv.handler(op, state, key, value)
        except PeerRefusal as e:
            self._write(message({"t": "res", "n": n, "ok": False, "code": e.code, "msg": e.msg}))
        except Exception:  # a bug in the handler costs this connection, not the server
            log.exception("peer request %s %s[%s] failed", op, state, key)
            self._close()
            return
        else:
            srv.served += 1
            size = -1 if out is None else len(out)
            self._write(message({"t": "res", "n": n, "ok": True, "version": version, "size": size}, out))
        finally:
            self.busy, self.task = False, None
        if not self.closed:
            self._drain()  # requests the client sent ahead

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _refuse(self, e: PeerRefusal) -> None:
        self.server.refused += 1
        log.warning("peer connection refused: %s", e)
        self._write(message({"t": "error", "code": e.code, "msg": e.msg}))
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.transport is not None
            self.transport.close()  # after what was written

    # One timer per connection, moved only when the deadline comes nearer (most
    # transitions push it later: the timer then re-arms itself when it fires).
    def _deadline(self) -> float:
        if self.busy:
            return self.since + IDLE_TIMEOUT
        if self.frames.buf:
            return self.frame_started + FRAME_TIMEOUT
        if not self.authed or self.pending is not None:
            return self.since + FRAME_TIMEOUT
        return self.since + IDLE_TIMEOUT

    def _arm(self) -> None:
        if self.closed:
            return
        at = self._deadline()
        if self.timer is None or at < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = self.loop.call_at(at, self._expire), at

    def _expire(self) -> None:
        self.timer = None
        if self.closed:
            return
        if self.loop.time() >= self._deadline():
            self._close()  # stalled or idle: dropped, nothing said
            if self.task is not None:
                self.task.cancel()
        else:
            self._arm()


@dataclass
class PeerServer:
    proxy_id: str
    secret: bytes
    handler: Handler
    max_value: SizeLimit
    host: str = "127.0.0.1"
    port: int = 0
    max_connections: int = 256
    address: str = field(default="", init=False)
    refused: int = field(default=0, init=False)  # connections cut for bad auth or bad frames
    served: int = field(default=0, init=False)
    sessions: set[_Session] = field(default_factory=set, init=False, repr=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._stopped: asyncio.Event | None = None

    async def start(self) -> str:
        """Listen (peers are served from now on); the address peers connect to."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Session(self), self.host, self.port)
        except OSError as e:
            raise PeerError(f"cannot listen for peers on {self.host}:{self.port}: {e}") from e
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self.host}:{port}"
        self._stopped = asyncio.Event()
        return self.address

    async def serve(self) -> None:
        """Serve until cancelled or closed, then stop listening and drop the connections."""
        assert self._stopped is not None, "start() first"
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._stopped is not None:
            self._stopped.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        for s in list(self.sessions):
            s._close()
        for t in list(self.tasks):
            t.cancel()


# -- client ----------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """A connection to a peer: hands each whole message (header, value) to the one
    request waiting for it."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.frames = Frames()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[dict[str, Any], bytes | None]] | None = None
        self.head: dict[str, Any] | None = None  # a result whose value chunks are coming
        self.chunks = Chunks(0)
        self.closed = False
        self.hello: asyncio.Future[tuple[dict[str, Any], bytes | None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.waiter = self.hello = asyncio.get_running_loop().create_future()  # the server speaks first

    def data_received(self, data: bytes) -> None:
        self.frames.buf += data
        try:
            while (frame := self.frames.next()) is not None:
                self._frame(*frame)
        except PeerRefusal as e:
            self._fail(PeerError(f"peer {self.addr} sent a bad frame: {e}"))

    def _frame(self, kind: int, payload: bytes) -> None:
        if self.waiter is None:
            raise PeerRefusal("BAD_FRAME", "a frame nobody asked for")
        if self.head is not None:
            value = self.chunks.add(kind, payload)
            if value is not None:
                head, self.head = self.head, None
                self._deliver(head, value)
            return
        obj = header(kind, payload)
        announced = obj.get("size")
        if obj.get("t") == "res" and obj.get("ok") and isinstance(announced, int) and announced > 0:
            self.head, self.chunks = obj, Chunks(announced)
        else:
            self._deliver(obj, b"" if announced == 0 else None)

    def _deliver(self, obj: dict[str, Any], value: bytes | None) -> None:
        fut, self.waiter = self.waiter, None
        if fut is not None and not fut.done():
            fut.set_result((obj, value))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(PeerError(f"peer {self.addr}: connection closed ({exc or 'by the peer'})"))

    def _fail(self, err: PeerError) -> None:
        self.close()
        fut, self.waiter = self.waiter, None
        if fut is not None and not fut.done():
            fut.set_exception(err)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def send(self, data: bytes | None) -> asyncio.Future[tuple[dict[str, Any], bytes | None]]:
        """Write ``data`` (if any); the next message's future."""
        if self.closed or self.transport is None:
            raise PeerError(f"peer {self.addr}: connection closed")
        fut: asyncio.Future[tuple[dict[str, Any], bytes | None]] = asyncio.get_running_loop().create_future()
        self.waiter = fut
        if data:
            self.transport.write(data)
        return fut


async def _within(fut: asyncio.Future[Any], deadline: float, what: str) -> Any:
    """``await fut``, failing it with TimeoutError at ``deadline`` (loop time)."""

    def expire() -> None:
        if not fut.done():
            fut.set_exception(TimeoutError(what))

    timer = asyncio.get_running_loop().call_at(deadline, expire)
    try:
        return await fut
    finally:
        timer.cancel()


class PeerClient:
    """Authenticated connections to other proxies, a few per peer, reused."""

    def __init__(self, proxy_id: str, secret: bytes, timeout: float = 5.0, per_peer: int = 4) -> None:
        self.proxy_id, self.secret, self.timeout, self.per_peer = proxy_id, secret, timeout, per_peer
        self._idle: dict[str, list[_Conn]] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._n = 0
        self._closed = False
        self.requests = 0

    async def _connect(self, addr: str, deadline: float) -> _Conn:
        loop = asyncio.get_running_loop()
        host, _, port = addr.rpartition(":")
        conn = _Conn(addr)
        await asyncio.wait_for(loop.create_connection(lambda: conn, host, int(port)), max(0.0, deadline - loop.time()))
        try:
            assert conn.hello is not None
            hello, _ = await _within(conn.hello, deadline, "no hello")
            if hello.get("t") != "hello" or hello.get("v") != VERSION:
                raise PeerError(f"peer {addr} does not speak cogs peer protocol v{VERSION}")
            server, nonce = str(hello.get("id")), str(hello.get("nonce"))
            auth = {"t": "auth", "id": self.proxy_id, "mac": _mac(self.secret, nonce, self.proxy_id, server)}
            ok, _ = await _within(conn.send(message(auth)), deadline, "no answer to auth")
            if ok.get("t") != "ok":
                raise PeerError(f"peer {addr} refused us: {ok.get('code')} {ok.get('msg')}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def request(
        self, addr: str, op: str, state: str, key: str, value: bytes | None = None
    ) -> tuple[int, bytes | None]:
        """One request to the owner at ``addr``: (version, value or None), within the
        client's timeout (waiting for a free connection included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        limit = self._limits.get(addr)
        if limit is None:
            limit = self._limits[addr] = asyncio.Semaphore(self.per_peer)
        try:
            if limit.locked():  # all connections to this peer busy: wait for one, in time
                await asyncio.wait_for(limit.acquire(), self.timeout)
            else:
                await limit.acquire()  # free: returns at once
        except TimeoutError as e:
            raise PeerError(f"peer {addr}: its {self.per_peer} connections stayed busy for {self.timeout} s") from e
        try:
            idle = self._idle.setdefault(addr, [])
            conn = None
            while idle and conn is None:
                c = idle.pop()
                conn = None if c.closed else c  # the peer closed it meanwhile (idle, restart)
            try:
                if conn is None:
                    conn = await self._connect(addr, deadline)
                result = await self._exchange(conn, op, state, key, value, deadline)
            except PeerRefusal:
                self._release(idle, conn)  # a clean refusal: the connection is fine
                raise
            except PeerError:
                if conn is not None:
                    conn.close()
                raise
            except (OSError, TimeoutError) as e:
                if conn is not None:
                    conn.close()
                raise PeerError(f"peer {addr}: {type(e).__name__}: {e}") from e
            except BaseException:  # cancelled mid-exchange: its answer would come to the next request
                if conn is not None:
                    conn.close()
                raise
            self._release(idle, conn)
            return result
        finally:
            limit.release()

    def _release(self, idle: list[_Conn], conn: _Conn | None) -> None:
        if conn is not None:
            if self._closed:
                conn.close()
            elif not conn.closed:
                idle.append(conn)

    async def _exchange(
        self, conn: _Conn, op: str, state: str, key: str, value: bytes | None, deadline: float
    ) -> tuple[int, bytes | None]:
        self._n += 1
        n = self._n  # requests on other connections go on meanwhile: this one's number
        self.requests += 1
        size = len(value or b"")
        req = message({"t": "req", "n": n, "op": op, "state": state, "key": key, "size": size}, value)
        res, data = await _within(conn.send(req), deadline, f"no answer within {self.timeout} s")
        if res.get("t") == "error":
            raise PeerError(f"peer refused: {res.get('code')} {res.get('msg')}")
        if res.get("t") != "res" or res.get("n") != n:
            raise PeerError("peer answered out of turn")
        if not res.get("ok"):
            raise PeerRefusal(str(res.get("code")), str(res.get("msg")))
        return int(res.get("version", 0)), data

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
