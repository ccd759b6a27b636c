"""An owner's heartbeat written outside cogs, as a reader of its indirect values finds
it (anyone with the NF's proxy credentials can SET it), on a real cluster: the read
fails with a bounded PeerError, and works again once the owner beats."""

from __future__ import annotations

import json

import anyio
import pytest
import redis

from cogs.benchmarks.peer_flood import flooders
from cogs.cluster import LocalCluster
from cogs.errors import CogsError, PeerError
from cogs.keys import escape, proxy_key, state_key
from cogs.proxy import StateProxy
from cogs.settings import load_settings

pytestmark = pytest.mark.anyio
SECRET = "cluster-shared-secret"


def _proxy(url: str) -> StateProxy:
    # a beat every 20 s: what the test writes stays there while it reads
    return StateProxy(settings=load_settings(url=url), peer_secret=SECRET, heartbeat_ttl_s=60.0)


@pytest.mark.parametrize(
    "beat",
    [b"not json", b"[1, 2]", b'{"stats": ' * 5000, None, b'{"inc": "x", "pad": "' + b"A" * (2 << 20) + b'"}'],
    ids=["not JSON", "a list", "nested beyond reason", "a peer address that is none", "2 MB (not read)"],
)
async def test_an_unreadable_owner_heartbeat_fails_the_read_plainly(cluster: LocalCluster, beat: bytes | None) -> None:
    """Before: json.loads raised JSONDecodeError (a ValueError, not a cogs error) out of
    the reader's syn_retrieve, and a peer address without a port raised ValueError."""
    r = redis.RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        async with _proxy(cluster.url) as owner, _proxy(cluster.url) as reader:
            key = f"hp-{len(beat or b'')}"
            await owner.syn_up("objects", key, "create", b"value")
            assert owner._indirect is not None
            good = r.get(proxy_key(owner.id))
            assert isinstance(good, bytes)
            forged = beat if beat is not None else json.dumps({"inc": owner._indirect.inc, "peer": "nowhere"})
            r.set(proxy_key(owner.id), forged, px=60_000)
            with pytest.raises(PeerError) as got:
                await reader.syn_retrieve("objects", key)
            assert len(str(got.value)) < 300
            r.set(proxy_key(owner.id), good, px=60_000)  # as the owner's next beat does
            try:
                got_value = await reader.syn_retrieve("objects", key)
            except PeerError:  # the bad address it had cached: read anew after this failure
                got_value = await reader.syn_retrieve("objects", key)
            assert got_value == b"value"
    finally:
        r.close()


async def test_a_locator_naming_no_proxy_fails_the_read_plainly(cluster: LocalCluster) -> None:
    """The state reference table is the NF's data: a locator whose owner is bytes that
    are not UTF-8. Before: UnicodeDecodeError out of syn_retrieve (with or without a
    read-through). Now: no live owner, so no value (a read-through that cannot take the
    key over says so with a PeerError)."""
    r = redis.RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        r.hset(state_key("objects", escape("hp-loc")), mapping={b"owner": b"\xff\xfe", b"inc": b"i1"})
        async with _proxy(cluster.url) as reader:
            assert await reader.syn_retrieve("objects", "hp-loc") is None

            async def load() -> bytes:
                return b"from the origin"

            try:
                got = await reader.syn_retrieve("objects", "hp-loc", load=load)
            except CogsError as e:
                assert len(str(e)) < 300
            else:
                assert got == b"from the origin"
    finally:
        r.close()


async def test_a_connection_flood_on_the_owner_starves_no_reader(cluster: LocalCluster) -> None:
    """Two processes churn idle connections to the owner's peer port from one address
    (no secret): fresh reader proxies (each a first peer connection) all get the value,
    and the owner reset the flood as it was accepted. Before: most reads timed out
    (PeerError) and the owner's own ops waited behind the accepts and evictions."""
    async with _proxy(cluster.url) as owner:
        await owner.syn_up("objects", "hp-flood", "create", b"value")
        server = owner._indirect.server if owner._indirect is not None else None
        assert server is not None
        port = int(server.address.rpartition(":")[2])
        procs = flooders(port, procs=2, sources=1, seconds=60)
        try:
            with anyio.fail_after(60):
                while server.limited < 2000:  # noqa: ASYNC110 - a counter, no event
                    await anyio.sleep(0.05)
            got = []
            for _ in range(5):
                async with _proxy(cluster.url) as reader:
                    got.append(await reader.syn_retrieve("objects", "hp-flood"))
                await owner.syn_up("objects", "hp-flood", "set", b"value")  # the owner's own work goes on
            limited = server.limited
        finally:
            for p in procs:
                p.kill()
                p.communicate()  # closes its pipe too
        assert got == [b"value"] * 5
        assert limited >= 2000
        assert server.gate.refused_source >= 2000
