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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener

from cogs.errors import PeerError

log = logging.getLogger("cogs.peer")
VERSION = 1
MAX_FRAME = 256 * 1024 + 1
CHUNK = 256 * 1024
RECV_SIZE = 256 * 1024  # bytes asked of the socket per receive
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


class Wire:
    """Frames on one connection: JSON headers and value chunks."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()  # received, not yet taken
        #: a server connection's one scope: waits move its deadline (cheaper than a scope each)
        self.scope: anyio.CancelScope | None = None

    async def send_json(self, obj: dict[str, Any], value: bytes | None = None) -> None:
        """A header, and the value's chunks after it, in one write."""
        body = json.dumps(obj, separators=(",", ":")).encode()
        frames = [_HDR.pack(len(body) + 1, J), body]
        data = value or b""
        for i in range(0, len(data), CHUNK):
            part = data[i : i + CHUNK]
            frames += (_HDR.pack(len(part) + 1, B), part)
        await self.stream.send(b"".join(frames))

    async def _take(self, n: int, within: float | None) -> bytes:
        """The next ``n`` bytes, within ``within`` seconds (None: the caller bounds the
        wait). Bytes already received are taken without a timer: frames mostly come whole."""
        buf = self._buf
        if len(buf) < n:
            deadline = None if within is None else anyio.current_time() + within
            if deadline is not None and self.scope is not None:
                self.scope.deadline, deadline = deadline, None
            while len(buf) < n:
                try:
                    if deadline is None:
                        buf += await self.stream.receive(RECV_SIZE)
                    else:
                        with anyio.fail_after(deadline - anyio.current_time()):
                            buf += await self.stream.receive(RECV_SIZE)
                except anyio.EndOfStream:
                    if buf:
                        raise anyio.IncompleteRead from None
                    raise
        out = bytes(buf[:n])
        del buf[:n]
        return out

    async def _frame(self, idle: float | None) -> tuple[int, bytes]:
        (length,) = _LEN.unpack(await self._take(_LEN.size, idle))
        if length < 1 or length > MAX_FRAME:  # refused before reading a byte more
            raise PeerRefusal("BAD_FRAME", f"frame length {length} outside 1..{MAX_FRAME}")
        body = await self._take(length, None if idle is None else FRAME_TIMEOUT)
        return body[0], body[1:]

    async def recv_json(self, idle: float | None = FRAME_TIMEOUT) -> dict[str, Any]:
        kind, body = await self._frame(idle)
        if kind != J:
            raise PeerRefusal("BAD_FRAME", f"expected a JSON frame, got kind {kind!r}")
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise PeerRefusal("BAD_FRAME", f"not JSON: {e}") from e
        if not isinstance(obj, dict):
            raise PeerRefusal("BAD_FRAME", "a header must be a JSON object")
        return obj

    async def recv_value(self, size: int, idle: float | None = FRAME_TIMEOUT) -> bytes:
        parts, got = [], 0
        while got < size:
            kind, body = await self._frame(idle)
            if kind != B or got + len(body) > size:
                raise PeerRefusal("BAD_FRAME", f"value chunks do not add up to the {size} bytes announced")
            parts.append(body)
            got += len(body)
        return b"".join(parts)


def _mac(secret: bytes, nonce: str, client: str, server: str) -> str:
    return hmac.new(secret, f"cogs-peer-v1|{nonce}|{client}|{server}".encode(), hashlib.sha256).hexdigest()


# -- server ----------------------------------------------------------------------------

#: (op, state, key, value) -> (version, value or None); raises PeerRefusal
Handler = Callable[[str, str, str, bytes | None], Awaitable[tuple[int, bytes | None]]]
SizeLimit = Callable[[str], int]


@dataclass
class PeerServer:
    proxy_id: str
    secret: bytes
    handler: Handler
    max_value: SizeLimit
    host: str = "127.0.0.1"
    port: int = 0
    max_connections: int = 256

    def __post_init__(self) -> None:
        self.listener: MultiListener[SocketStream] | None = None
        self.address = ""
        self.refused = 0  # connections cut for bad auth or bad frames
        self.served = 0
        self._slots = anyio.Semaphore(self.max_connections)

    async def start(self) -> str:
        try:
            self.listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        except OSError as e:
            raise PeerError(f"cannot listen for peers on {self.host}:{self.port}: {e}") from e
        port = self.listener.listeners[0].extra(SocketAttribute.local_port)
        self.address = f"{self.host}:{port}"
        return self.address

    async def serve(self) -> None:
        assert self.listener is not None
        async with self.listener:
            await self.listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        if self._slots.value == 0:
            await stream.aclose()  # full: refuse at once rather than queue
            return
        async with self._slots, stream:
            wire = Wire(stream)
            try:
                await self._session(wire)
            except PeerRefusal as e:
                self.refused += 1
                log.warning("peer connection refused: %s", e)
                with anyio.move_on_after(1):
                    await wire.send_json({"t": "error", "code": e.code, "msg": e.msg})
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead, TimeoutError, OSError):
                pass  # the peer went away or stalled: drop the connection only

    async def _session(self, wire: Wire) -> None:
        nonce = secrets.token_hex(16)
        await wire.send_json({"t": "hello", "v": VERSION, "id": self.proxy_id, "nonce": nonce})
        auth = await wire.recv_json()
        client = auth.get("id")
        mac = auth.get("mac")
        if auth.get("t") != "auth" or not isinstance(client, str) or not isinstance(mac, str):
            raise PeerRefusal("AUTH", "expected an auth frame")
        if not hmac.compare_digest(mac, _mac(self.secret, nonce, client, self.proxy_id)):
            raise PeerRefusal("AUTH", f"peer {client!r} does not know the cluster's secret")
        await wire.send_json({"t": "ok"})
        with anyio.CancelScope() as wire.scope:  # past its deadline: the connection is dropped
            while True:
                wire.scope.deadline = anyio.current_time() + IDLE_TIMEOUT
                req = await wire.recv_json(IDLE_TIMEOUT)
                await self._request(wire, req)

    async def _request(self, wire: Wire, req: dict[str, Any]) -> None:
        n, op, state, key, size = req.get("n"), req.get("op"), req.get("state"), req.get("key"), req.get("size", 0)
        if req.get("t") != "req" or not isinstance(n, int) or op not in OPS:
            raise PeerRefusal("BAD_FRAME", f"a request needs t=req, an int n and op {'|'.join(OPS)}")
        if not isinstance(state, str) or not isinstance(key, str) or not isinstance(size, int) or size < 0:
            raise PeerRefusal("BAD_FRAME", "a request needs a state name, a key and a size >= 0")
        limit = self.max_value(state)
        if size > limit:
            raise PeerRefusal("OVERSIZE", f"value of {size} bytes over the {limit} bytes of state {state}")
        value = await wire.recv_value(size) if op in ("set", "create") else None
        try:
            version, out = await self.handler(op, state, key, value)
        except PeerRefusal as e:
            await wire.send_json({"t": "res", "n": n, "ok": False, "code": e.code, "msg": e.msg})
            return
        self.served += 1
        size = -1 if out is None else len(out)
        await wire.send_json({"t": "res", "n": n, "ok": True, "version": version, "size": size}, out)

    async def aclose(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()


# -- client ----------------------------------------------------------------------------


class PeerClient:
    """Authenticated connections to other proxies, a few per peer, reused."""

    def __init__(self, proxy_id: str, secret: bytes, timeout: float = 5.0, per_peer: int = 4) -> None:
        self.proxy_id, self.secret, self.timeout, self.per_peer = proxy_id, secret, timeout, per_peer
        self._idle: dict[str, list[Wire]] = {}
        self._limits: dict[str, anyio.Semaphore] = {}
        self._n = 0
        self.requests = 0

    async def _connect(self, addr: str) -> Wire:
        host, _, port = addr.rpartition(":")
        stream = await anyio.connect_tcp(host, int(port))
        wire = Wire(stream)
        try:
            hello = await wire.recv_json()
            if hello.get("t") != "hello" or hello.get("v") != VERSION:
                raise PeerError(f"peer {addr} does not speak cogs peer protocol v{VERSION}")
            server, nonce = str(hello.get("id")), str(hello.get("nonce"))
            await wire.send_json(
                {"t": "auth", "id": self.proxy_id, "mac": _mac(self.secret, nonce, self.proxy_id, server)}
            )
            ok = await wire.recv_json()
            if ok.get("t") != "ok":
                raise PeerError(f"peer {addr} refused us: {ok.get('code')} {ok.get('msg')}")
        except BaseException:
            await stream.aclose()
            raise
        return wire

    async def request(
        self, addr: str, op: str, state: str, key: str, value: bytes | None = None
    ) -> tuple[int, bytes | None]:
        """One request to the owner at ``addr``: (version, value or None)."""
        limit = self._limits.setdefault(addr, anyio.Semaphore(self.per_peer))
        async with limit:
            idle = self._idle.setdefault(addr, [])
            wire = idle.pop() if idle else None
            try:
                with anyio.fail_after(self.timeout):
                    if wire is None:
                        wire = await self._connect(addr)
                    result = await self._exchange(wire, op, state, key, value)
            except PeerRefusal:
                idle.append(wire)  # type: ignore[arg-type]  # a clean refusal: the connection is fine
                raise
            except PeerError:
                if wire is not None:
                    await wire.stream.aclose()
                raise
            except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead) as e:
                if wire is not None:
                    await wire.stream.aclose()
                raise PeerError(f"peer {addr}: {type(e).__name__}: {e}") from e
            idle.append(wire)
            return result

    async def _exchange(
        self, wire: Wire, op: str, state: str, key: str, value: bytes | None
    ) -> tuple[int, bytes | None]:
        self._n += 1
        n = self._n  # requests on other connections go on meanwhile: this one's number
        self.requests += 1
        size = len(value or b"")
        await wire.send_json({"t": "req", "n": n, "op": op, "state": state, "key": key, "size": size}, value)
        res = await wire.recv_json(None)  # (request() bounds the whole exchange)
        if res.get("t") == "error":
            raise PeerError(f"peer refused: {res.get('code')} {res.get('msg')}")
        if res.get("t") != "res" or res.get("n") != n:
            raise PeerError("peer answered out of turn")
        if not res.get("ok"):
            raise PeerRefusal(str(res.get("code")), str(res.get("msg")))
        size = int(res.get("size", -1))
        data = await wire.recv_value(size, None) if size > 0 else (b"" if size == 0 else None)
        return int(res.get("version", 0)), data

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for w in conns:
                await w.stream.aclose()
        self._idle.clear()
