"""The peer channel in-process (no Redis): concurrent requests over several
connections each get their own answer; stalled, idle and pipelining peers, a
handler's bug, a client's timeout."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import time
from typing import Any

import anyio
import pytest

from cogs.errors import PeerError
from cogs.proxy import peer
from cogs.proxy.peer import PeerClient, PeerRefusal, PeerServer


def test_concurrent_requests_on_several_connections() -> None:
    store = {f"k{i}": f"value {i}".encode() * (i + 1) for i in range(40)}

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        await anyio.sleep(0.001 * (hash(key) % 5))  # answers come back in another order
        if key not in store:
            raise PeerRefusal("NOT_FOUND", key)
        return 1, store[key] if op == "get" else None

    async def go() -> None:
        server = PeerServer("owner", b"s3cret", handler, lambda _s: 1 << 20)
        addr = await server.start()
        client = PeerClient("reader", b"s3cret", per_peer=4)
        got: dict[str, bytes | None] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)

            async def one(key: str) -> None:
                _, got[key] = await client.request(addr, "get", "s", key)

            async with anyio.create_task_group() as inner:
                for k in store:
                    inner.start_soon(one, k)
            assert got == store
            assert client.requests == len(store)
            assert await client.request(addr, "has", "s", "k3") == (1, None)
            await client.aclose()
            await server.aclose()
            tg.cancel_scope.cancel()

    anyio.run(go)


def _frame(obj: dict[str, Any], kind: bytes = b"J") -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body) + 1) + kind + body


def _read(s: socket.socket) -> dict[str, Any]:
    n, kind = struct.unpack(">IB", s.recv(5, socket.MSG_WAITALL))
    body = s.recv(n - 1, socket.MSG_WAITALL)
    assert kind == ord("J")
    out: dict[str, Any] = json.loads(body)
    return out


def _authed(addr: str, secret: bytes) -> socket.socket:
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    hello = _read(s)
    mac = hmac.new(secret, f"cogs-peer-v1|{hello['nonce']}|raw|owner".encode(), hashlib.sha256).hexdigest()
    s.sendall(_frame({"t": "auth", "id": "raw", "mac": mac}))
    assert _read(s) == {"t": "ok"}
    return s


def test_server_cuts_stalled_frames_and_idle_peers_and_survives_handler_bugs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peer, "FRAME_TIMEOUT", 0.3)
    monkeypatch.setattr(peer, "IDLE_TIMEOUT", 0.6)

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        if key == "bug":
            raise RuntimeError("a bug in the handler")
        return 7, key.encode()

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20)
        addr = await server.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)

            def raw() -> None:
                with _authed(addr, b"k") as s:  # half a frame, then nothing: cut, without a word
                    s.sendall(b"\x00\x00")
                    t = time.monotonic()
                    assert s.recv(1) == b""
                    assert 0.2 < time.monotonic() - t < 3
                with _authed(addr, b"k") as s:  # two requests in one write: answered in order
                    req = {"t": "req", "op": "get", "state": "s", "size": 0}
                    s.sendall(_frame({**req, "n": 1, "key": "a"}) + _frame({**req, "n": 2, "key": "bb"}))
                    for n, key in ((1, b"a"), (2, b"bb")):
                        res = _read(s)
                        assert (res["n"], res["ok"], res["version"], res["size"]) == (n, True, 7, len(key))
                        size, kind = struct.unpack(">IB", s.recv(5, socket.MSG_WAITALL))
                        assert (kind, s.recv(size - 1, socket.MSG_WAITALL)) == (ord("B"), key)
                    t = time.monotonic()  # then idle past IDLE_TIMEOUT: dropped
                    assert s.recv(1) == b""
                    assert 0.4 < time.monotonic() - t < 3
                with _authed(addr, b"k") as s:  # a handler's bug costs its connection only
                    s.sendall(_frame({"t": "req", "n": 1, "op": "get", "state": "s", "key": "bug", "size": 0}))
                    assert s.recv(1) == b""

            await anyio.to_thread.run_sync(raw)
            client = PeerClient("reader", b"k")
            assert await client.request(addr, "get", "s", "fine") == (7, b"fine")
            await client.aclose()
            await server.aclose()

    anyio.run(go)


def test_client_times_out_drops_the_connection_and_recovers() -> None:
    slow = {"k": True}

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        if slow["k"]:
            await anyio.sleep(5)
        return 1, b"v"

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20)
        addr = await server.start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            client = PeerClient("reader", b"k", timeout=0.3)
            with pytest.raises(PeerError, match="no answer within"):
                await client.request(addr, "get", "s", "k")
            slow["k"] = False  # the late answer to the first request must not reach the next one
            assert await client.request(addr, "get", "s", "k") == (1, b"v")
            with pytest.raises(PeerError, match=r"peer 127\.0\.0\.1:1: ConnectionRefusedError"):
                await client.request("127.0.0.1:1", "get", "s", "k")
            await client.aclose()
            await server.aclose()

    anyio.run(go)
