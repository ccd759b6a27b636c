"""An authenticated hostile peer (it knows COGS_PEER_SECRET), over real sockets: the
server must not buffer without bound for it, nor the client for a hostile server.

* pipelined requests for a 1 MiB value, never reading the answers;
* requests sent without end while one is served;
* an answer left unread: the connection is cut after WRITE_TIMEOUT;
* more authenticated connections than the server admits;
* a server announcing a value larger than its state allows, or a version that is
  no number.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import anyio
import pytest

from cogs.errors import PeerError
from cogs.proxy.peer import PeerClient, PeerRefusal, PeerServer
from cogs.proxy.peer import server as peer_server
from cogs.proxy.peer.wire import VERSION, Frames, header, mac, message
from tests.unit.test_peer import _authed, _frame, _read

VALUE = b"v" * (1 << 20)
GET = {"t": "req", "op": "get", "state": "s", "key": "k", "size": 0}


def _session(server: PeerServer) -> Any:
    [s] = server.sessions
    return s


def test_a_peer_that_never_reads_holds_one_answer_and_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: 300 pipelined gets of a 1 MiB value, none read, were all answered into
    the transport's buffer: 310 MB held for one connection (and more with each get)."""
    monkeypatch.setattr(peer_server, "WRITE_TIMEOUT", 1.0)

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 1, VALUE

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 4 << 20)
        addr = await server.start()
        sock = await anyio.to_thread.run_sync(_authed, addr, b"k")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            flood = b"".join(_frame({**GET, "n": i}) for i in range(300))
            await anyio.to_thread.run_sync(sock.sendall, flood)
            await anyio.sleep(0.5)  # the server does what it will with them
            s = _session(server)
            assert s.transport.get_write_buffer_size() <= 2 * len(VALUE)  # one answer (and a bit)
            assert len(s.frames.buf) <= peer_server.IN_BUDGET + (256 << 10)
            assert server.served <= 5  # the rest wait for the peer to read
            with anyio.fail_after(10):  # the answer stays unread: cut
                while server.sessions:  # noqa: ASYNC110 - the cut has no event to wait on
                    await anyio.sleep(0.05)
            client = PeerClient("reader", b"k", timeout=5)  # everyone else is served as before
            assert await client.request(addr, "get", "s", "k") == (1, VALUE)
            await client.aclose()
        finally:
            sock.close()
            await server.aclose()

    anyio.run(go)


def test_requests_sent_without_end_while_one_is_served_are_not_all_read() -> None:
    """Before: a peer writing requests while its first one was served had them all read
    into the connection's buffer (20 MB here), without bound."""
    release = threading.Event()

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        while not release.is_set():  # noqa: ASYNC110 - set from the sending thread
            await asyncio.sleep(0.01)
        return 1, b"ok"

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 4 << 20)
        addr = await server.start()
        sock = await anyio.to_thread.run_sync(_authed, addr, b"k")
        sent = 0

        def flood() -> None:
            nonlocal sent
            chunk = b"".join(_frame({**GET, "n": i}) for i in range(1000))
            sock.settimeout(1.0)
            try:
                while sent < 20 << 20:
                    sent += sock.send(chunk)
            except TimeoutError:
                pass  # the server stopped reading: TCP holds the sender

        try:
            await anyio.to_thread.run_sync(flood)
            s = _session(server)
            assert len(s.frames.buf) <= peer_server.IN_BUDGET + (256 << 10)
            assert sent < 20 << 20  # it could not send it all
        finally:
            release.set()
            sock.close()
            await server.aclose()

    anyio.run(go)


def test_authenticated_connections_past_the_cap_are_refused_busy() -> None:
    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 1, b"ok"

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20, max_connections=8)
        addr = await server.start()

        def connect_all() -> list[socket.socket]:
            return [_authed(addr, b"k") for _ in range(8)]

        socks = await anyio.to_thread.run_sync(connect_all)
        try:

            def one_more() -> dict[str, Any]:
                with socket.create_connection(_hostport(addr), timeout=5) as s:
                    hello = _read(s)
                    args = (hello["nonce"], "c" * 32, "raw", hello["id"], hello["inc"])
                    s.sendall(_frame({"t": "auth", "id": "raw", "nonce": "c" * 32, "mac": mac(b"k", "client", *args)}))
                    return _read(s)

            refused = await anyio.to_thread.run_sync(one_more)
            assert (refused["t"], refused["code"]) == ("error", "BUSY")
            socks.pop().close()
            await anyio.sleep(0.2)
            client = PeerClient("reader", b"k", timeout=5)
            assert await client.request(addr, "get", "s", "k") == (1, b"ok")  # room again
            await client.aclose()
        finally:
            for s in socks:
                s.close()
            await server.aclose()

    anyio.run(go)


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def _hostile_owner(answer: dict[str, Any]) -> tuple[asyncio.Server, str, list[int], asyncio.Event]:
    """A server that knows the secret and answers every request with ``answer``, then
    (if it announced a value) sends value chunks without end: the bytes it got out."""
    sent = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = "s" * 32
        writer.write(message({"t": "hello", "v": VERSION, "id": "owner", "inc": "i1", "nonce": nonce}))
        frames = Frames()
        try:
            while data := await reader.read(65536):
                frames.buf += data
                while (f := frames.next()) is not None:
                    obj = header(*f)
                    if obj["t"] == "auth":
                        args = (nonce, obj["nonce"], obj["id"], "owner", "i1")
                        writer.write(message({"t": "ok", "mac": mac(b"k", "server", *args)}))
                        continue
                    writer.write(message({**answer, "n": obj["n"]}))
                    for _ in range(400 if answer.get("size") else 0):  # 100 MB, unless the client hangs up
                        writer.write(message_chunk)
                        sent[0] += len(message_chunk)
                        await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()
            done.set()

    done = asyncio.Event()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}", sent, done


message_chunk = struct.pack(">IB", (256 << 10) + 1, ord("B")) + b"x" * (256 << 10)


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        ({"t": "res", "ok": True, "version": 1, "size": 1 << 40}, PeerError, "announced, over 1048576"),
        ({"t": "res", "ok": True, "version": "abc", "size": 0}, PeerError, "version abc: no 64-bit count"),
        ({"t": "res", "ok": False, "code": "X" * 3000, "msg": "y"}, PeerRefusal, r"^X{200}\.\.\. y$"),
    ],
    ids=["a value over its state's limit", "a version that is no number", "a long refusal"],
)
def test_a_hostile_owner_gets_a_bounded_error(answer: dict[str, Any], error: type[Exception], match: str) -> None:
    """Before: the client took any announced size (and read value chunks until its
    timeout: 100 MB here), and int() of a version that is no number raised ValueError
    out of the request."""

    async def go() -> None:
        server, addr, sent, done = await _hostile_owner(answer)
        async with server:
            client = PeerClient("reader", b"k", timeout=5, max_value=lambda _s: 1 << 20)
            with pytest.raises(error, match=match) as got:
                await client.request(addr, "get", "s", "k")
            await client.aclose()
            with anyio.fail_after(5):
                await done.wait()  # the owner saw the client hang up
        assert len(str(got.value)) < 400
        assert sent[0] < 20 << 20  # cut as soon as announced, not read to its end

    anyio.run(go)
