"""ICP (RFC 2186, version 2) queries between sibling caches, over UDP: the baseline
the coordinator is compared with. A query names a URL; each sibling answers HIT or
MISS; the asker waits for the first HIT or every answer (or a timeout), then fetches
the object from the sibling that hit (over the peer channel, as cogs does).

    header (20 bytes): opcode u8 | version u8 (2) | length u16 | request number u32 |
                       options u32 | option data u32 | sender host address u32
    QUERY payload: requester host address u32 | URL | NUL;  HIT/MISS payload: URL | NUL

ICP has no authentication: keep siblings on a private network (here: loopback).
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Callable

import anyio
from anyio.abc import UDPSocket

QUERY, HIT, MISS, ERR = 1, 2, 3, 4
VERSION = 2
_HDR = struct.Struct(">BBHIIII")
MAX_URL = 8000  # a datagram stays well under 64 KiB


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


class IcpAgent:
    """One node's ICP socket: answers siblings' queries, asks them its own."""

    def __init__(self, has: Callable[[str], bool], host: str = "127.0.0.1", port: int = 0) -> None:
        self.has, self.host, self.port = has, host, port
        self.sock: UDPSocket | None = None
        self._sending = anyio.Lock()
        self._pending: dict[int, tuple[set[tuple[str, int]], anyio.Event, list[tuple[str, int]]]] = {}
        self._numbers = itertools.count(1)
        self.answered = self.bad = self.lost = 0

    async def start(self) -> None:
        self.sock = await anyio.create_udp_socket(family=socket.AF_INET, local_host=self.host, local_port=self.port)

    async def _send(self, msg: bytes, addr: tuple[str, int]) -> None:
        assert self.sock is not None
        async with self._sending:  # the socket takes one writer at a time
            try:
                await self.sock.sendto(msg, *addr)
            except OSError:
                self.lost += 1  # as UDP may: the asker's timeout covers it

    async def serve(self) -> None:
        assert self.sock is not None
        async for data, addr in self.sock:
            msg = decode(data)
            if msg is None:
                self.bad += 1
                continue
            opcode, reqnum, url = msg
            if opcode == QUERY:
                self.answered += 1
                await self._send(encode(HIT if self.has(url) else MISS, reqnum, url), addr)
                continue
            wait = self._pending.get(reqnum)
            if wait is None or addr not in wait[0]:
                continue  # late, or not from a sibling we asked
            wait[0].discard(addr)
            if opcode == HIT:
                wait[2].append(addr)
            if opcode == HIT or not wait[0]:
                wait[1].set()

    async def ask(
        self, siblings: list[tuple[str, int]], url: str, wait_s: float
    ) -> tuple[tuple[str, int] | None, bool]:
        """(the first sibling that has ``url`` or None, whether some did not answer in time)."""
        if not siblings or len(url) > MAX_URL:
            return None, False
        n = next(self._numbers) & 0xFFFFFFFF
        waiting, done = set(siblings), anyio.Event()
        hits: list[tuple[str, int]] = []
        self._pending[n] = (waiting, done, hits)
        try:
            msg = encode(QUERY, n, url)
            for addr in siblings:
                await self._send(msg, addr)
            with anyio.move_on_after(wait_s):
                await done.wait()
        finally:
            del self._pending[n]
        return (hits[0] if hits else None), bool(waiting) and not hits

    async def aclose(self) -> None:
        if self.sock is not None:
            await self.sock.aclose()
