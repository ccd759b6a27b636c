"""ICP (RFC 2186, version 2) queries between sibling caches, over UDP: the baseline
the coordinator is compared with. A query names a URL; each sibling answers HIT or
MISS; the asker waits for the first HIT or every answer (or a timeout), then fetches
the object from the sibling that hit (over the peer channel, as cogs does).

    header (20 bytes): opcode u8 | version u8 (2) | length u16 | request number u32 |
                       options u32 | option data u32 | sender host address u32
    QUERY payload: requester host address u32 | URL | NUL;  HIT/MISS payload: URL | NUL

The agent is an asyncio datagram protocol: a query is answered inside the callback
that received it and a query's datagrams go out back to back from the asker's
coroutine, so one query costs the siblings one wake-up each and the asker one per
answer — no task, lock or await per datagram (the care cogs' own links get, so the
web cache bench compares the two designs, not two levels of tuning).

ICP has no authentication: keep siblings on a private network (here: loopback).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Callable
from typing import Any

QUERY, HIT, MISS, ERR = 1, 2, 3, 4
VERSION = 2
_HDR = struct.Struct(">BBHIIII")
MAX_URL = 8000  # a datagram stays well under 64 KiB
Addr = tuple[str, int]


def encode(opcode: int, reqnum: int, url: str) -> bytes:
    body = url.encode() + b"\0"
    if opcode == QUERY:
        body = b"\0\0\0\0" + body
    return _HDR.pack(opcode, VERSION, _HDR.size + len(body), reqnum, 0, 0, 0) + body


def decode(data: bytes) -> tuple[int, int, str] | None:
    """(opcode, request number, URL), or None for what is not an ICP v2 message."""
    if len(data) < _HDR.size:
        return None
    opcode, version, length, reqnum, _, _, _ = _HDR.unpack_from(data)
    if version != VERSION or length != len(data) or opcode not in (QUERY, HIT, MISS, ERR):
        return None
    body = data[_HDR.size : -1]
    if opcode == QUERY:
        body = body[4:]
    try:
        return opcode, reqnum, body.decode()
    except UnicodeDecodeError:
        return None


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Pending:
    """One query in flight: who has not answered yet, who hit, and the asker's future."""

    __slots__ = ("fut", "hits", "waiting")

    def __init__(self, siblings: list[Addr], fut: asyncio.Future[None]) -> None:
        self.waiting: set[Addr] = set(siblings)
        self.hits: list[Addr] = []
        self.fut = fut


class IcpAgent(asyncio.DatagramProtocol):
    """One node's ICP socket: answers siblings' queries, asks them its own."""

    def __init__(self, has: Callable[[str], bool], host: str = "127.0.0.1", port: int = 0) -> None:
        self.has, self.host, self.port = has, host, port
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[int, _Pending] = {}
        self._numbers = itertools.count(1)
        self._closed: asyncio.Future[None] | None = None
        self.answered = self.bad = self.lost = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.host, self.port), family=socket.AF_INET
        )

    async def serve(self) -> None:
        """Until aclose(): the protocol's callbacks do the work (kept for the node's task group)."""
        assert self._closed is not None
        await asyncio.shield(self._closed)

    # -- protocol callbacks ------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        msg = decode(data)
        if msg is None:
            self.bad += 1
            return
        opcode, reqnum, url = msg
        if opcode == QUERY:
            self.answered += 1
            self._send(encode(HIT if self.has(url) else MISS, reqnum, url), addr)
            return
        p = self._pending.get(reqnum)
        src = (addr[0], addr[1])
        if p is None or src not in p.waiting:
            return  # late, or not from a sibling we asked
        p.waiting.discard(src)
        if opcode == HIT:
            p.hits.append(src)
        if (opcode == HIT or not p.waiting) and not p.fut.done():
            p.fut.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.lost += 1  # e.g. a sibling's port closed (ICMP): the asker's timeout covers it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _send(self, msg: bytes, addr: Addr) -> None:
        assert self.transport is not None
        try:
            self.transport.sendto(msg, addr)
        except OSError:
            self.lost += 1  # as UDP may: the asker's timeout covers it

    # -- asking ------------------------------------------------------------------------

    async def ask(self, siblings: list[Addr], url: str, wait_s: float) -> tuple[Addr | None, bool]:
        """(the first sibling that has ``url`` or None, whether some did not answer in time)."""
        if not siblings or len(url) > MAX_URL:
            return None, False
        n = next(self._numbers) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        p = _Pending(siblings, loop.create_future())
        self._pending[n] = p
        timer = loop.call_later(wait_s, _expire, p.fut)  # a timer, not a cancellation: cheaper
        try:
            msg = encode(QUERY, n, url)
            for addr in siblings:
                self._send(msg, addr)
            await p.fut
        finally:
            timer.cancel()
            del self._pending[n]
        return (p.hits[0] if p.hits else None), bool(p.waiting) and not p.hits

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
