"""The peer server: a proxy serves the indirect states it owns to other proxies.

A stranger never holds what peers need. Connections are accepted here, not by
asyncio's server: one over its source's rate, or over the rate of all strangers
together (gate.py), is reset at once, before a transport, a hello or a timer is
spent on it, so a flood of connections costs the owner an accept and a close each
and real peers (their sources known once they proved the secret) still get in. An
admitted connection must finish the handshake within HANDSHAKE_TIMEOUT, and
connections still in the handshake have a small pool of their own (per source
address too). When it is full, a new connection evicts the oldest pending one: a
real peer authenticates in one round trip, so a flood of idle strangers (Slowloris)
can never starve it. Authenticated connections have their own cap. A bad frame or
bad auth is answered with an error and cut; a client that stalls mid-frame or idles
is cut silently; the other connections never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from cogs.errors import PeerError, show
from cogs.proxy.peer.gate import AcceptGate
from cogs.proxy.peer.wire import MAX_FRAME, OPS, VERSION, Chunks, Frames, PeerRefusal, header, mac, message, same

log = logging.getLogger("cogs.peer")
FRAME_TIMEOUT = 10.0  # a frame, once started, must arrive whole within this
IDLE_TIMEOUT = 120.0
HANDSHAKE_TIMEOUT = 3.0  # from connect to a proven secret
#: an answer the peer does not read (the transport's buffer over its high-water mark)
#: must drain within this, or the connection is cut: 4 MiB needs ~140 KB/s
WRITE_TIMEOUT = 30.0
#: bytes a connection may hold unread while it cannot act on them (a request being
#: served, an answer not read): then the server stops reading it, and TCP holds the peer
IN_BUDGET = 2 * MAX_FRAME
BACKLOG = 128  # longer: a real peer waits behind more of a flood (1024: ~40 ms at 30k/s)
#: connections accepted per wake-up: the loop's other work runs between batches
ACCEPT_BATCH = 64
ACCEPT_RETRY = 0.5  # out of file descriptors (or the like): accept again after this
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST, keeps no TIME_WAIT

#: (op, state, key, value) -> (version, value or None); raises PeerRefusal
Handler = Callable[[str, str, str, bytes | None], Awaitable[tuple[int, bytes | None]]]
SizeLimit = Callable[[str], int]


class _Session(asyncio.Protocol):
    """One peer's connection: hello, auth, then requests one at a time (frames a
    client sends ahead wait in the buffer). Cut, with an error frame, on a bad frame
    or bad auth; cut silently when a started frame stalls or the peer idles.

    Flow control, so that an authenticated peer cannot make the server buffer without
    bound: no next request is served while the answer before it is not read (the
    transport's pause_writing), reading stops while over IN_BUDGET bytes wait behind a
    request being served or an answer not read, and an answer left unread for
    WRITE_TIMEOUT cuts the connection. A connection so holds at most one value coming
    in, one answer going out and IN_BUDGET bytes."""

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
        self.started = now
        self.source = "?"
        self.since = now  # the last whole frame (or the start)
        self.frame_started = 0.0  # when the first byte of an incomplete frame came
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.writing_paused = 0.0  # when the peer stopped reading our answers (0: it reads)
        self.reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self.server.closing:  # accepted while the server shuts down
            self.closed = True
            transport.close()
            return
        self.server._admit(self)
        self.transport.write(
            message(
                {"t": "hello", "v": VERSION, "id": self.server.proxy_id, "inc": self.server.inc, "nonce": self.nonce}
            )
        )
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

    def pause_writing(self) -> None:
        self.writing_paused = self.loop.time()
        self._arm()

    def resume_writing(self) -> None:
        self.writing_paused = 0.0
        if not self.closed:
            self._drain()  # requests the peer sent ahead

    def _flow(self) -> None:
        """Read only while this connection can act on what it reads, or holds little."""
        if self.closed or self.transport is None:
            return
        blocked = self.busy or bool(self.writing_paused)
        if self.reading and blocked and len(self.frames.buf) > IN_BUDGET:
            self.reading = False
            self.transport.pause_reading()
        elif not self.reading and not blocked:
            self.reading = True
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._gone(self)
        if self.timer is not None:
            self.timer.cancel()

    def _drain(self) -> None:
        try:
            while not self.busy and not self.closed and not self.writing_paused:
                frame = self.frames.next()
                if frame is None:
                    break
                self.since = self.frame_started = self.loop.time()
                self._frame(*frame)
        except PeerRefusal as e:
            self._refuse(e)
            return
        self._flow()
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

    def _auth(self, auth: dict[str, object]) -> None:
        srv = self.server
        client, nonce, proof = auth.get("id"), auth.get("nonce"), auth.get("mac")
        if auth.get("t") != "auth" or not isinstance(client, str) or not isinstance(nonce, str) or len(nonce) > 64:
            raise PeerRefusal("AUTH", "expected an auth frame with id, nonce and mac")
        args = (self.nonce, nonce, client, srv.proxy_id, srv.inc)
        if not same(proof, mac(srv.secret, "client", *args)):
            raise PeerRefusal("AUTH", f"peer {client[:64]!r} does not know the cluster's secret")
        if len(srv.sessions) >= srv.max_connections:
            raise PeerRefusal("BUSY", f"{srv.max_connections} peer connections open")
        srv._authed(self)
        self.authed = True
        self._write(message({"t": "ok", "mac": mac(srv.secret, "server", *args)}))

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
            srv.failed += 1
            if srv.failed <= 10 or srv.failed % 1000 == 0:  # a peer repeating it must not flood the log
                log.exception("peer request %s %s[%s] failed (%d so far)", show(op), show(state), show(key), srv.failed)
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
        n = self.server.refused
        if n <= 10 or n % 1000 == 0:  # a hostile scanner must not flood the log
            log.warning("peer connection from %s refused: %s (%d so far)", self.source, str(e)[:200], n)
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
        if self.writing_paused:
            return self.writing_paused + WRITE_TIMEOUT
        if self.busy:
            return self.since + IDLE_TIMEOUT
        if not self.authed:
            return self.started + HANDSHAKE_TIMEOUT
        if self.frames.buf:
            return self.frame_started + FRAME_TIMEOUT
        if self.pending is not None:
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
            if self.writing_paused and self.transport is not None:
                self.closed = True
                self.transport.abort()  # its unread answer goes too: close() would wait for it
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
    #: this start of the proxy: readers check it against the state reference table
    inc: str = ""
    max_connections: int = 256  # authenticated
    max_pending: int = 32  # connections in the handshake, all sources
    max_pending_per_source: int = 8
    #: connections per second each source, and all strangers together, may open
    gate: AcceptGate = field(default_factory=AcceptGate)
    address: str = field(default="", init=False)
    limited: int = field(default=0, init=False)  # connections reset at accept: over a rate (gate)
    refused: int = field(default=0, init=False)  # connections cut for bad auth or bad frames
    evicted: int = field(default=0, init=False)  # pending connections pushed out by newer ones
    served: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)  # requests whose handler raised (a bug): connection cut
    sessions: set[_Session] = field(default_factory=set, init=False, repr=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Event | None = None
        #: connections still in the handshake, oldest first
        self._pending: OrderedDict[_Session, None] = OrderedDict()
        self._open: set[_Session] = set()  # every connection until its transport is gone
        self.closing = False

    def _admit(self, s: _Session) -> None:
        """A new connection: make room in the handshake pool by evicting the oldest
        pending one (of its source first), never by refusing the newcomer."""
        mine = [p for p in self._pending if p.source == s.source]
        if len(mine) >= self.max_pending_per_source:
            self._evict(mine[0])
        if len(self._pending) >= self.max_pending:
            self._evict(next(iter(self._pending)))
        self._pending[s] = None
        self._open.add(s)

    def _evict(self, s: _Session) -> None:
        self.evicted += 1
        self._pending.pop(s, None)
        s._close()

    def _authed(self, s: _Session) -> None:
        self._pending.pop(s, None)
        self.gate.known(s.source)
        self.sessions.add(s)

    def _gone(self, s: _Session) -> None:
        self._open.discard(s)
        self._pending.pop(s, None)
        self.sessions.discard(s)

    async def start(self) -> str:
        """Listen (peers are served from now on); the address peers connect to."""
        loop = asyncio.get_running_loop()
        try:
            family, kind, proto, _, where = (
                await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(where)
                sock.listen(BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
        except OSError as e:
            raise PeerError(f"cannot listen for peers on {self.host}:{self.port}: {e}") from e
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._accept)
        self.address = f"{self.host}:{sock.getsockname()[1]}"
        self._stopped = asyncio.Event()
        return self.address

    def _accept(self) -> None:
        """Accept what is waiting (a batch at most); reset what is over a rate, at once."""
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        now = loop.time()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE, ENOBUFS...: the queue waits in the kernel meanwhile
                log.warning("peer server cannot accept (%s): again in %.1f s", e, ACCEPT_RETRY)
                loop.remove_reader(sock.fileno())
                self._retry = loop.call_later(ACCEPT_RETRY, self._resume)
                return
            source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            why = "closing" if self.closing else self.gate.admit(source, now)
            if why is not None:
                self._reset(conn, source, why)
                continue
            conn.setblocking(False)
            task = loop.create_task(self._connected(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _reset(self, conn: socket.socket, source: str, why: str) -> None:
        self.limited += 1
        n = self.limited
        if n <= 10 or n % 10000 == 0:  # a flood must not flood the log
            log.warning("peer connection from %s reset: over the %s rate (%d so far)", source[:64], why, n)
        with contextlib.suppress(OSError):  # already reset by the peer
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.close()

    async def _connected(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: _Session(self), conn)
        except OSError:
            conn.close()  # the peer left meanwhile
        except BaseException:
            conn.close()
            raise

    def _resume(self) -> None:
        self._retry = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def serve(self) -> None:
        """Serve until cancelled or closed, then stop listening and drop the connections."""
        assert self._stopped is not None, "start() first"
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self.closing = True
        if self._stopped is not None:
            self._stopped.set()
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for s in list(self._open):
            s._close()
        for t in list(self.tasks):
            t.cancel()
        for _ in range(100):  # let the transports finish closing (their sockets released)
            if not self._open:
                break
            await asyncio.sleep(0.01)
