"""Cached HTTP objects: what may be cached (a shared cache's basic rules) and the
bytes an object is kept as (the value of an indirect state, or a sibling's copy).

    blob = u32 header length | JSON {"s": status, "h": [[name, value], ...],
                                     "t": stored at (unix s), "a": fresh for (s)} | body
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass

from cogs.nf.webcache.http import HttpRequest, HttpResponse

_LEN = struct.Struct(">I")
DEFAULT_FRESH_S = 3600


@dataclass
class Cached:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    fresh_for: float

    def fresh(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) < self.stored_at + self.fresh_for

    def response(self, age_now: float | None = None) -> HttpResponse:
        age = int((age_now if age_now is not None else time.time()) - self.stored_at)
        headers = [(k, v) for k, v in self.headers if k.lower() != b"age"] + [(b"age", str(max(age, 0)).encode())]
        return HttpResponse(self.status, headers, self.body)


def encode(c: Cached) -> bytes:
    head = json.dumps(
        {"s": c.status, "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in c.headers],
         "t": c.stored_at, "a": c.fresh_for},
        separators=(",", ":"),
    ).encode()  # fmt: skip
    return _LEN.pack(len(head)) + head + c.body


def decode(blob: bytes) -> Cached:
    """The object in ``blob``; ValueError if it is not one."""
    if len(blob) < _LEN.size:
        raise ValueError("cached object too short")
    (n,) = _LEN.unpack_from(blob)
    try:
        h = json.loads(blob[_LEN.size : _LEN.size + n])
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in h["h"]]
        return Cached(int(h["s"]), headers, blob[_LEN.size + n :], float(h["t"]), float(h["a"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a cached object: {e}") from e


def directives(value: bytes | None) -> dict[str, str]:
    """Cache-Control directives (lower-case names; values without quotes)."""
    out: dict[str, str] = {}
    for part in (value or b"").decode("latin-1").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"')
    return out


def request_bypasses(req: HttpRequest) -> str | None:
    """Why a request must go to the origin whatever is cached, or None."""
    if req.method != "GET":
        return f"method {req.method}"
    if req.header(b"authorization") is not None:
        return "authorized request"
    cc = directives(req.header(b"cache-control"))
    if "no-store" in cc or "no-cache" in cc:
        return "client asked for no-cache/no-store"
    return None


def storable(resp: HttpResponse, max_bytes: int, default_fresh: float = DEFAULT_FRESH_S) -> tuple[float, str]:
    """(seconds the response stays fresh, "") if a shared cache may store it, else (0, why not)."""
    if resp.status != 200:
        return 0, f"status {resp.status}"
    cc = directives(resp.header(b"cache-control"))
    for d in ("no-store", "private", "no-cache"):
        if d in cc:
            return 0, f"Cache-Control: {d}"
    if resp.header(b"vary") == b"*":
        return 0, "Vary: *"
    if len(resp.body) > max_bytes:
        return 0, f"{len(resp.body)} bytes, over the {max_bytes}-byte object limit"
    for d in ("s-maxage", "max-age"):
        if d in cc:
            try:
                age = float(int(cc[d]))
            except ValueError:
                return 0, f"bad {d}={cc[d]!r}"
            return (age, "") if age > 0 else (0, f"{d}=0")
    return default_fresh, ""
