"""The peer client: a reader's authenticated connections to owner proxies.

A few connections per peer, reused. Each proves the shared secret to the server and
checks the server's proof, which names the server's proxy id and incarnation: a
request that expects an owner (the locator's id and incarnation) is only ever
answered by that owner. Every request has a deadline (waiting for a free connection
included).
"""

from __future__ import annotations

import asyncio
import secrets
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from typing import Any, cast

from cogs.errors import PeerError
from cogs.proxy.peer.wire import VERSION, Chunks, Frames, PeerRefusal, header, mac, message, same

#: (state) -> the largest value of that state, in bytes
SizeLimit = Callable[[str], int]
#: the largest value a peer may send when no limit per state is given
MAX_VALUE = 64 << 20

Owner = tuple[str, str]  # (proxy id, incarnation) a reader expects to answer
#: a connection without a hello after this gets a sibling attempt (then 2x, 3x this...)
CONNECT_STAGGER = 0.25
CONNECT_TRIES = 4  # attempts at once, at most


class _Conn(asyncio.Protocol):
    """A connection to a peer: hands each whole message (header, value) to the one
    request waiting for it."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.limit = 0  # the largest value the request waiting may get (its state's max_bytes)
        self.frames = Frames()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[dict[str, Any], bytes | None]] | None = None
        self.head: dict[str, Any] | None = None  # a result whose value chunks are coming
        self.chunks = Chunks(0)
        self.closed = False
        self.hello: asyncio.Future[tuple[dict[str, Any], bytes | None]] | None = None
        self.owner: Owner = ("", "")  # who the server proved to be

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
            if announced > self.limit:  # refused before a byte of it is kept
                raise PeerRefusal("OVERSIZE", f"a value of {announced} bytes announced, over {self.limit}")
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


def _cut(v: object) -> str:
    """A peer's word in an error: at most 200 characters of it."""
    text = str(v)
    return text if len(text) <= 200 else text[:200] + "..."


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

    def __init__(
        self, proxy_id: str, secret: bytes, timeout: float = 5.0, per_peer: int = 4,
        max_value: SizeLimit | None = None,
    ) -> None:  # fmt: skip
        self.proxy_id, self.secret, self.timeout, self.per_peer = proxy_id, secret, timeout, per_peer
        #: the largest value a peer may send for a state (more is refused as it is announced)
        self.max_value: SizeLimit = max_value or (lambda _state: MAX_VALUE)
        self._idle: dict[str, list[_Conn]] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._n = 0
        self._closed = False
        self.requests = 0

    async def _connect(self, addr: str, deadline: float) -> _Conn:
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:  # a heartbeat says where: anyone's word
            raise PeerError(f"peer address {addr[:80]!r} is not host:port")
        conn, hello = await self._first_hello(addr, host, int(port), deadline)
        try:
            if hello.get("t") != "hello" or hello.get("v") != VERSION:
                raise PeerError(f"peer {addr} does not speak cogs peer protocol v{VERSION}")
            server, inc, nonce = str(hello.get("id")), str(hello.get("inc", "")), str(hello.get("nonce"))
            mine = secrets.token_hex(16)
            args = (nonce, mine, self.proxy_id, server, inc)
            auth = {"t": "auth", "id": self.proxy_id, "nonce": mine, "mac": mac(self.secret, "client", *args)}
            ok, _ = await _within(conn.send(message(auth)), deadline, "no answer to auth")
            if ok.get("t") != "ok":
                raise PeerError(f"peer {addr} refused us: {ok.get('code')} {str(ok.get('msg'))[:200]}")
            if not same(ok.get("mac"), mac(self.secret, "server", *args)):
                raise PeerError(f"peer {addr} (claims {server[:64]!r}) does not know the cluster's secret: an impostor")
            conn.owner = (server, inc)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _first_hello(self, addr: str, host: str, port: int, deadline: float) -> tuple[_Conn, dict[str, Any]]:
        """A connection and the server's hello: a new attempt every CONNECT_STAGGER s
        while none has one, the first hello wins. A server flooded by strangers has a
        full accept queue: the kernel drops a SYN (retried after 1 s, then 3 s) or the
        handshake's last ACK (the server speaks first: the connection waits for the
        SYN-ACK's retry), where a fresh attempt gets in between the flood's."""
        loop = asyncio.get_running_loop()
        tries: set[asyncio.Task[tuple[_Conn, dict[str, Any]]]] = set()
        started, last = 0, None
        next_at = loop.time()
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    raise last or TimeoutError("no hello")  # what the last try met says more
                if now >= next_at and len(tries) < CONNECT_TRIES:
                    started += 1
                    tries.add(loop.create_task(self._hello(addr, host, port)))
                    next_at = now + CONNECT_STAGGER * started  # later tries wait longer
                wake = min(deadline, next_at) if len(tries) < CONNECT_TRIES else deadline
                done, tries = await asyncio.wait(tries, timeout=max(0.0, wake - now), return_when=FIRST_COMPLETED)
                won = None
                for t in done:
                    if t.exception() is None and won is None:
                        won = t.result()
                    elif t.exception() is None:
                        t.result()[0].close()  # a second hello: not needed
                    else:
                        last = t.exception()
                if won is not None:
                    return won
                if isinstance(last, ConnectionRefusedError) and not tries:
                    raise last  # nobody listens there: no use trying again
        finally:
            for t in tries:
                t.cancel()  # _hello closes its connection

    async def _hello(self, addr: str, host: str, port: int) -> tuple[_Conn, dict[str, Any]]:
        conn = _Conn(addr)
        try:
            await asyncio.get_running_loop().create_connection(lambda: conn, host, port)
            assert conn.hello is not None
            hello, _ = await conn.hello
        except BaseException:
            conn.close()
            raise
        return conn, hello

    async def request(
        self, addr: str, op: str, state: str, key: str, value: bytes | None = None, *, owner: Owner | None = None
    ) -> tuple[int, bytes | None]:
        """One request to the peer at ``addr``: (version, value or None), within the
        client's timeout (waiting for a free connection included). ``owner``: only
        that proxy id and incarnation may answer (else :class:`PeerError`)."""
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
                if owner is not None and conn.owner != owner:
                    raise PeerError(
                        f"peer {addr} is {conn.owner[0][:64]!r} incarnation {conn.owner[1][:16]!r}, not the owner "
                        f"{owner[0][:64]!r} incarnation {owner[1][:16]!r} the state reference table names"
                    )
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
        conn.limit = self.max_value(state)
        req = message({"t": "req", "n": n, "op": op, "state": state, "key": key, "size": size}, value)
        res, data = await _within(conn.send(req), deadline, f"no answer within {self.timeout} s")
        if res.get("t") == "error":
            raise PeerError(f"peer refused: {_cut(res.get('code'))} {_cut(res.get('msg'))}")
        if res.get("t") != "res" or res.get("n") != n:
            raise PeerError("peer answered out of turn")
        if not res.get("ok"):
            raise PeerRefusal(_cut(res.get("code")), _cut(res.get("msg")))
        version = res.get("version", 0)
        if type(version) is not int or not 0 <= version < 1 << 63:
            raise PeerError(f"peer {conn.addr} answered with version {_cut(version)}: no 64-bit count")
        return version, data

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
