"""The peer channel's wire format (version 2): frames, messages, the handshake MACs.

Over TCP:

    frame   = length (u32, big endian, counts kind + payload) | kind (1 byte) | payload
    kind    = "J": a JSON object (UTF-8, at most MAX_HEADER bytes)   "B": a chunk of a value

1. server -> client  J {"t": "hello", "v": 2, "id": <server id>, "inc": <incarnation>, "nonce": <32 hex>}
2. client -> server  J {"t": "auth", "id": <client id>, "nonce": <32 hex>,
                        "mac": hex HMAC-SHA256(secret, "cogs-peer-v2|client|" + the transcript)}
3. server -> client  J {"t": "ok", "mac": hex HMAC-SHA256(secret, "cogs-peer-v2|server|" + the transcript)},
                     or J {"t": "error", "code": "AUTH", ...} and close
   transcript = server nonce | client nonce | client id | server id | server incarnation
4. client -> server  J {"t": "req", "n": <int>, "op": "get"|"has"|"set"|"create"|"delete",
                        "state": <name>, "key": <key>, "size": <value bytes, 0 if none>}
                     then the value in B chunks (size bytes in all)
5. server -> client  J {"t": "res", "n": <int>, "ok": true, "version": <int>, "size": <bytes or -1>}
                     then the value in B chunks; or
                     J {"t": "res", "n": <int>, "ok": false, "code": <CODE>, "msg": <text>}

Both ends prove the shared secret over fresh nonces of both, so neither a stranger
nor a replayed handshake passes, and the server's proof names its proxy id and
incarnation: a reader accepts a value only from the owner incarnation the state
reference table names (a process that took a dead owner's port is refused). The
secret authenticates, it does not encrypt: use TLS or a private network.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from typing import Any

VERSION = 2
MAX_FRAME = 256 * 1024 + 1
MAX_HEADER = 4096  # a JSON header (auth, request, result): names and a key, never more
CHUNK = 256 * 1024
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
        if len(buf) > 4 and buf[4] == J and length > MAX_HEADER + 1:
            raise PeerRefusal("BAD_FRAME", f"a JSON header of {length - 1} bytes (at most {MAX_HEADER})")
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
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise PeerRefusal("BAD_FRAME", f"not JSON: {str(e)[:80]}") from None
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


def mac(secret: bytes, side: str, server_nonce: str, client_nonce: str, client: str, server: str, inc: str) -> str:
    """One side's proof of the shared secret over the handshake's transcript."""
    text = f"cogs-peer-v2|{side}|{server_nonce}|{client_nonce}|{client}|{server}|{inc}"
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def same(a: object, b: str) -> bool:
    return isinstance(a, str) and hmac.compare_digest(a.encode(), b.encode())
