"""The peer channel in-process (no Redis): concurrent requests over several
connections each get their own answer; stalled, idle and pipelining peers, a
handler's bug, a client's timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from typing import Any

import anyio
import pytest

from cogs.errors import PeerError
from cogs.proxy.peer import PeerClient, PeerRefusal, PeerServer
from cogs.proxy.peer import server as peer_server
from cogs.proxy.peer.gate import AcceptGate
from cogs.proxy.peer.wire import mac


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


def _authed(addr: str, secret: bytes, nonce: str = "c" * 32) -> socket.socket:
    host, _, port = addr.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    hello = _read(s)
    args = (hello["nonce"], nonce, "raw", hello["id"], hello["inc"])
    s.sendall(_frame({"t": "auth", "id": "raw", "nonce": nonce, "mac": mac(secret, "client", *args)}))
    assert _read(s) == {"t": "ok", "mac": mac(secret, "server", *args)}  # the server proved the secret too
    return s


def test_server_cuts_stalled_frames_and_idle_peers_and_survives_handler_bugs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peer_server, "FRAME_TIMEOUT", 0.3)
    monkeypatch.setattr(peer_server, "IDLE_TIMEOUT", 0.6)

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


# -- hostile peers: impostors, replays, strangers that hold connections ---------------------


class _Fake:
    """A TCP server running ``script(reader, writer)`` for each connection (an impostor)."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.done = asyncio.Event()

    async def _run(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await self.script(r, w)
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            self.done.set()

    async def __aenter__(self) -> str:
        self.srv = await asyncio.start_server(self._run, "127.0.0.1", 0)
        return f"127.0.0.1:{self.srv.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self.done.wait(), 5)
        self.srv.close()
        await self.srv.wait_closed()


async def _read_async(r: asyncio.StreamReader) -> dict[str, Any]:
    n, _ = struct.unpack(">IB", await r.readexactly(5))
    out: dict[str, Any] = json.loads(await r.readexactly(n - 1))
    return out


def test_a_server_that_does_not_know_the_secret_is_refused() -> None:
    """A process without the secret that took a dead owner's port: it answers the
    handshake with anything it likes, and the reader never sends it a request."""
    asked: list[dict[str, Any]] = []

    async def impostor(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(_frame({"t": "hello", "v": 2, "id": "owner", "inc": "i1", "nonce": "n" * 32}))
        await _read_async(r)  # the auth
        w.write(_frame({"t": "ok", "mac": "0" * 64}))
        with contextlib.suppress(Exception):
            asked.append(await _read_async(r))

    async def go() -> None:
        async with _Fake(impostor) as addr:
            client = PeerClient("reader", b"k", timeout=2)
            with pytest.raises(PeerError, match="impostor"):
                await client.request(addr, "get", "s", "key", owner=("owner", "i1"))
            await client.aclose()
        assert not asked  # no request ever went to it

    anyio.run(go)


def test_a_replayed_server_proof_is_refused() -> None:
    """An attacker who recorded a real server's hello and proof replays them: the
    proof covers the client's fresh nonce, so it no longer fits."""

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 1, b"real"

    async def go() -> None:
        real = PeerServer("owner", b"k", handler, lambda _s: 1 << 20, inc="i1")
        real_addr = await real.start()
        # replay a real proof: the server's ok to the overheard nonce "d"*32
        host, _, port = real_addr.rpartition(":")
        r, w = await asyncio.open_connection(host, int(port))
        hello = await _read_async(r)
        args = (hello["nonce"], "d" * 32, "raw", "owner", "i1")
        w.write(_frame({"t": "auth", "id": "raw", "nonce": "d" * 32, "mac": mac(b"k", "client", *args)}))
        ok = await _read_async(r)
        w.close()
        await w.wait_closed()

        async def replayer(rr: asyncio.StreamReader, ww: asyncio.StreamWriter) -> None:
            ww.write(_frame(hello))  # the real server's hello, nonce and all
            await _read_async(rr)
            ww.write(_frame(ok))  # and its real proof, made for another client nonce
            await rr.read()  # until the client hangs up

        async with _Fake(replayer) as addr:
            client = PeerClient("reader", b"k", timeout=2)
            with pytest.raises(PeerError, match="impostor"):
                await client.request(addr, "get", "s", "key", owner=("owner", "i1"))
            await client.aclose()
        await real.aclose()

    anyio.run(go)


def test_an_answer_from_another_incarnation_is_refused() -> None:
    """The owner restarted (same id, new incarnation) on the same port: a reader
    holding the old locator must not take the new process's value for the old one's."""

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 2**60, b"not yours"

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20, inc="new")
        addr = await server.start()
        client = PeerClient("reader", b"k", timeout=2)
        with pytest.raises(PeerError, match="not the owner"):
            await client.request(addr, "get", "s", "key", owner=("owner", "old"))
        assert await client.request(addr, "get", "s", "key", owner=("owner", "new")) == (2**60, b"not yours")
        await client.aclose()
        await server.aclose()

    anyio.run(go)


def test_idle_strangers_never_starve_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 idle unauthenticated connections (a Slowloris) from one address: each new
    one evicts the oldest pending one, a real peer is still served at once, and a
    stranger that never authenticates is cut after the handshake deadline. (The
    accept rates are opened wide: this is the pool's test, test_peer_flood.py the
    rates'.)"""
    monkeypatch.setattr(peer_server, "HANDSHAKE_TIMEOUT", 0.5)

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 1, b"ok"

    async def go() -> None:
        wide = AcceptGate(rate_per_source=1e6, burst_per_source=1e6, rate=1e6, burst=1e6)
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20, inc="i1", gate=wide)
        addr = await server.start()
        host, _, port = addr.rpartition(":")
        idle = [await anyio.connect_tcp(host, int(port)) for _ in range(300)]
        await anyio.sleep(0.2)
        client = PeerClient("reader", b"k", timeout=2)
        assert await client.request(addr, "get", "s", "k", owner=("owner", "i1")) == (1, b"ok")
        assert server.evicted >= 300 - server.max_pending
        assert len(server._pending) <= server.max_pending
        t = time.monotonic()
        with anyio.fail_after(3):  # the hello, then the cut at the handshake deadline
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await idle[-1].receive()
        assert time.monotonic() - t < 3
        for s in idle:
            await s.aclose()
        await client.aclose()
        await server.aclose()

    anyio.run(go)


@pytest.mark.parametrize(
    "payload",
    [b"[" * 3000 + b"]" * 3000, b'{"t": "auth", "pad": "' + b"x" * 5000 + b'"}'],
    ids=["deeply nested", "oversize header"],
)
def test_hostile_headers_get_an_error_frame(payload: bytes) -> None:
    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 1, b"ok"

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20, inc="i1")
        addr = await server.start()

        def attack() -> None:
            host, _, port = addr.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=5) as s:
                _read(s)
                s.sendall(struct.pack(">I", len(payload) + 1) + b"J" + payload)
                err = _read(s)
                assert err["t"] == "error"
                assert err["code"] == "BAD_FRAME"
                assert len(err["msg"]) < 300
                assert s.recv(1) == b""

        await anyio.to_thread.run_sync(attack)
        client = PeerClient("reader", b"k", timeout=2)
        assert await client.request(addr, "get", "s", "k") == (1, b"ok")
        await client.aclose()
        await server.aclose()

    anyio.run(go)
