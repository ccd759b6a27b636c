"""HTTP for the web cache, on aiohttp (C-accelerated parsing, pooled keep-alive
connections): a server that hands whole requests to a handler and sends back whole
responses (cached objects are held in memory anyway), and the client that fetches
from origins with the body exactly as sent (no decompression).

aiohttp answers what it cannot parse with 400 itself; request heads are bounded by
its line and field limits, request bodies by ``MAX_REQUEST_BODY``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import anyio
from aiohttp import web
from multidict import CIMultiDict

from cogs.errors import show
from cogs.logs import Throttle
from cogs.nf.ident import bounded_message

log = logging.getLogger("cogs.http")
#: what aiohttp logs itself: a request it cannot parse, with a traceback quoting it
server_log = logging.getLogger("cogs.http.server")

MAX_BODY = 16 * 1024 * 1024  # a response we relay (and may cache)
MAX_REQUEST_BODY = 1024 * 1024  # what a client may send us (aiohttp's default)
#: headers of one connection, never forwarded (RFC 9110 7.6.1)
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
     b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}
)  # fmt: skip


class _OneLine(logging.Filter):
    """aiohttp's own lines in one bounded line each (no traceback: the exception's text,
    whitespace folded, cut), a few a minute: a client sending junk must not fill the log."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        n = self.throttle.allow("aiohttp")
        if n is None:
            return False
        msg = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            msg += f": {type(e).__name__}: {bounded_message(' '.join(str(e).split()), 200)}"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = msg + (f" ({n} similar lines left out)" if n else ""), ()
        return True


server_log.addFilter(_OneLine())


def find_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (any case), or None."""
    name = name.lower()
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


@dataclass
class HttpRequest:
    method: str
    target: str  # as sent: an absolute URL when we are the client's proxy
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return find_header(self.headers, name)


def error(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, [(b"content-type", b"text/plain; charset=utf-8")], (text + "\n").encode())


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def _forwardable(headers: list[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    return CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k.lower() not in HOP_BY_HOP)


@dataclass
class HttpServer:
    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.address = ""
        self._runner: web.ServerRunner | None = None
        self._throttle = Throttle()

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _web(error(413, f"request body over {MAX_REQUEST_BODY} bytes"))
        req = HttpRequest(request.method, request.raw_path, list(request.raw_headers), body)
        try:
            resp = await self.handler(req)
        except Exception as e:  # one request fails, the server stays up
            # a bounded line (a request's target is the client's), a few a minute
            self._throttle.log(log, logging.ERROR, "handler", "handler failed on %s %s", show(req.method),
                               show(req.target), exc_info=True)  # fmt: skip
            resp = error(500, f"internal error: {type(e).__name__}")
        return _web(resp)

    async def start(self) -> str:
        self._runner = web.ServerRunner(
            web.Server(self._serve, logger=server_log), handle_signals=False, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = self._runner.addresses
        self.address = f"{self.host}:{sockets[0][1]}"
        return self.address

    async def serve(self) -> None:
        """Serve until cancelled, then close the listener and the connections."""
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def _web(r: HttpResponse) -> web.Response:
    return web.Response(status=r.status, headers=_forwardable(r.headers), body=r.body)


class OriginError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        self.status = status
        super().__init__(msg)


class OriginClient:
    """Requests to origin servers, over pooled keep-alive connections."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # within the running loop
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=64),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False, trust_env=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )  # fmt: skip
        return self._session

    async def fetch(self, req: HttpRequest, url: str) -> HttpResponse:
        """The origin's response to ``req`` (sent to ``url``); OriginError (502/504) if
        it cannot be had."""
        headers = _forwardable([(k, v) for k, v in req.headers if k.lower() != b"host"])
        try:
            async with self._open().request(
                req.method, url, headers=headers, data=req.body or None, allow_redirects=False
            ) as r:
                body = bytearray()
                async for chunk in r.content.iter_chunked(256 * 1024):
                    body += chunk
                    if len(body) > MAX_BODY:
                        raise OriginError(502, f"the origin's response is over {MAX_BODY} bytes")
                return HttpResponse(r.status, list(r.raw_headers), bytes(body))
        except TimeoutError as e:
            raise OriginError(504, f"the origin did not answer within {self.timeout} s") from e
        except (aiohttp.ClientError, ValueError) as e:
            raise OriginError(502, f"the origin is unreachable: {type(e).__name__}: {e}") from e

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
