"""A small HTTP/1.1 server on anyio: h11 parses and frames, this drives connections.

Keep-alive, bounded request heads and bodies, an idle timeout, one clear 400/413/500
for what cannot be served; a handler maps a whole request to a whole response
(cached objects are held in memory anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import h11
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener

log = logging.getLogger("cogs.http")

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
IDLE_TIMEOUT = 60.0
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Content Too Large", 500: b"Internal Server Error",
           501: b"Not Implemented", 502: b"Bad Gateway", 504: b"Gateway Timeout"}  # fmt: skip
#: headers of one connection, never forwarded (RFC 9110 7.6.1)
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
     b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}
)  # fmt: skip


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def error(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, [(b"content-type", b"text/plain; charset=utf-8")], (text + "\n").encode())


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def _respond(stream: SocketStream, conn: h11.Connection, r: HttpResponse) -> None:
    headers = [(k, v) for k, v in r.headers if k.lower() not in HOP_BY_HOP]
    headers.append((b"content-length", str(len(r.body)).encode()))
    out = conn.send(h11.Response(status_code=r.status, headers=headers, reason=REASONS.get(r.status, b"")))
    out += conn.send(h11.Data(data=r.body)) if r.body else b""
    out += conn.send(h11.EndOfMessage())
    await stream.send(out)


async def _next(stream: SocketStream, conn: h11.Connection) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        with anyio.fail_after(IDLE_TIMEOUT):
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                data = b""
        conn.receive_data(data)


async def serve_connection(stream: SocketStream, handler: Handler) -> None:
    """Requests of one client connection, one after the other (keep-alive)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    async with stream:
        try:
            while True:
                event = await _next(stream, conn)
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
                body = bytearray()
                while True:
                    ev = await _next(stream, conn)
                    if isinstance(ev, h11.Data):
                        body += ev.data
                        if len(body) > MAX_BODY:
                            await _respond(stream, conn, error(413, f"request body over {MAX_BODY} bytes"))
                            return
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        return
                req = HttpRequest(
                    event.method.decode(), event.target.decode("latin-1"), list(event.headers), bytes(body)
                )
                try:
                    resp = await handler(req)
                except Exception as e:  # one request fails, the server stays up
                    log.exception("handler failed on %s %s", req.method, req.target)
                    resp = error(500, f"internal error: {type(e).__name__}")
                await _respond(stream, conn, resp)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with anyio.move_on_after(1):
                    await _respond(stream, conn, error(e.error_status_hint, f"bad request: {e}"))
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # an idle or vanished client


@dataclass
class HttpServer:
    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.listener: MultiListener[SocketStream] | None = None
        self.address = ""

    async def start(self) -> str:
        self.listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        port = self.listener.listeners[0].extra(SocketAttribute.local_port)
        self.address = f"{self.host}:{port}"
        return self.address

    async def serve(self) -> None:
        assert self.listener is not None
        async with self.listener:
            await self.listener.serve(lambda s: serve_connection(s, self.handler))
