"""An origin server for demos, tests and benches: objects with known bytes, a delay
per response (a far-away server), and the Cache-Control cases a cache must honour.

    /obj/<n>[?size=B]   cacheable (max-age=3600); body: B bytes (default: a size
                        drawn for n, ~11 KB mean, as Polygraph's), derived from n
    /nostore/<n>        Cache-Control: no-store
    /private/<n>        Cache-Control: private
    /short/<n>          max-age=1
    /status/<code>      that status, no body
    /origin/stats       JSON: requests served per path kind
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import anyio

from cogs.nf.webcache.http import HttpRequest, HttpResponse, error

MAX_SIZE = 8 << 20


def object_size(n: int, mean: int = 11_000) -> int:
    """A heavy-tailed (lognormal) size for object ``n``, the same on every call."""
    return max(64, min(MAX_SIZE, int(random.Random(n).lognormvariate(0, 1.0) * mean / 1.65)))


def object_body(n: int, size: int) -> bytes:
    """``size`` bytes of text that depend on ``n`` (a test can check a cache served the
    right object; a person with curl sees text)."""
    line = f"object {n} {hashlib.sha256(str(n).encode()).hexdigest()}\n".encode()
    return (line * (size // len(line) + 1))[:size]


class Origin:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.served: Counter[str] = Counter()

    async def handle(self, req: HttpRequest) -> HttpResponse:
        parts = urlsplit(req.target)
        path = parts.path
        kind, _, arg = path.strip("/").partition("/")
        if path == "/origin/stats":
            return HttpResponse(200, [(b"content-type", b"application/json")], json.dumps(self.served).encode())
        self.served[kind] += 1
        if self.delay_s:
            await anyio.sleep(self.delay_s)
        if kind == "status" and arg.isdigit():
            return HttpResponse(int(arg), [(b"cache-control", b"max-age=3600")])
        if kind not in ("obj", "nostore", "private", "short") or not arg.isdigit():
            return error(404, f"no such object: {path}")
        n = int(arg)
        q = parse_qs(parts.query)
        size = int(q["size"][0]) if q.get("size", [""])[0].isdigit() else object_size(n)
        if size > MAX_SIZE:
            return error(400, f"size over {MAX_SIZE}")
        cc = {"obj": b"max-age=3600", "nostore": b"no-store", "private": b"private, max-age=3600",
              "short": b"max-age=1"}[kind]  # fmt: skip
        headers = [(b"content-type", b"text/plain"), (b"cache-control", cc),
                   (b"x-object", str(n).encode())]  # fmt: skip
        return HttpResponse(200, headers, object_body(n, size))
