"""The peer channel in-process (no Redis): concurrent requests over several
connections each get their own answer."""

from __future__ import annotations

import anyio

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
