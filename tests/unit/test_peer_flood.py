"""A stranger without the peer secret floods a peer server with connections (real
sockets, real flooding processes: cogs/benchmarks/peer_flood.py), and real peers
still read.

Before: 2 processes churning idle connections from one address (~10,000 evictions/s)
made most fresh readers' requests time out, and the owner's own work waited behind
the accepts and evictions.
"""

from __future__ import annotations

import anyio

from cogs.benchmarks.peer_flood import flooders
from cogs.proxy.peer import PeerClient, PeerServer


async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
    return 1, b"body"


async def _read_through_flood(server: PeerServer, addr: str, flood_min: int) -> tuple[int, list[str]]:
    """Fresh clients (each a new connection) read one after another until the server
    has dealt with ``flood_min`` flood connections since the first read (10 reads at
    least): (reads, failures)."""
    start = server.limited + server.evicted
    reads, failures = 0, []
    with anyio.fail_after(120):  # a guard against a hang, not a timing claim
        while reads < 10 or server.limited + server.evicted - start < flood_min:
            client = PeerClient("reader", b"k", timeout=2)
            try:
                assert await client.request(addr, "get", "s", "k") == (1, b"body")
            except Exception as e:  # every failure is counted and shown
                failures.append(f"{type(e).__name__}: {e}"[:200])
            finally:
                await client.aclose()
            reads += 1
    return reads, failures


async def _flooded(server: PeerServer, least: int) -> None:
    with anyio.fail_after(60):
        while server.limited + server.evicted < least:  # noqa: ASYNC110 - counters, no event
            await anyio.sleep(0.05)


async def _under_flood(server: PeerServer, addr: str, *, sources: int) -> tuple[int, list[str]]:
    """Reads through a flood of 2 processes from ``sources`` addresses (once 2000 flood
    connections came), until 5000 more did; the flooders and the server end after."""
    procs = flooders(int(addr.rpartition(":")[2]), procs=2, sources=sources, seconds=60)
    try:
        await _flooded(server, 2000)
        return await _read_through_flood(server, addr, 5000)
    finally:
        for p in procs:
            p.kill()
            p.communicate()  # closes its pipe too
        await server.aclose()


def test_a_connection_flood_from_one_address_starves_no_peer() -> None:
    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20)
        addr = await server.start()
        reads, failures = await _under_flood(server, addr, sources=1)
        assert failures == [], f"{len(failures)} of {reads} reads failed: {failures[:3]}"
        assert server.gate.refused_source >= 5000  # reset at accept, before any handshake work
        assert server.gate.refused_strangers == 0  # one source never drains the shared rate
        assert server.evicted <= 3 * server.max_pending  # so the pending pool was left alone

    anyio.run(go)


def test_a_flood_from_many_addresses_starves_no_known_peer() -> None:
    """Eight addresses in turn: each stays under its own rate for a while, together
    they drain the strangers' one; a reader whose address proved the secret before
    still gets in. (A reader new to the server then competes with the strangers.)"""

    async def go() -> None:
        server = PeerServer("owner", b"k", handler, lambda _s: 1 << 20)
        addr = await server.start()
        client = PeerClient("reader", b"k", timeout=2)
        assert await client.request(addr, "get", "s", "k") == (1, b"body")  # 127.0.0.1 is known now
        await client.aclose()
        reads, failures = await _under_flood(server, addr, sources=8)
        assert failures == [], f"{len(failures)} of {reads} reads failed: {failures[:3]}"
        # each address under its own rate (a refused one keeps its token): the shared one refuses
        assert server.gate.refused_strangers >= 5000

    anyio.run(go)
