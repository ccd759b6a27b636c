"""Releasing a NAT mapping drops this proxy's cached copy at once (issue 15, attack pass).

A proxy caches both directions of a mapping it used (``o|<flow>`` and
``i|<ip>|<port>``). Its own release of the mapping frees the port at the
coordinator; another proxy may hand the port to a new flow right after. The
releasing proxy's copies must go with its release, not when the discard it sent
itself comes back on the pub/sub link: until then its cache named the old flow for
the port, shadowing the new allocation (a reply to the new flow would be sent to
the old one's host).
"""

from __future__ import annotations

import pytest

from cogs.cluster import LocalCluster
from cogs.nf.nat_table import NatTable, flow_id
from cogs.proxy import MISS, StateProxy

pytestmark = pytest.mark.anyio


async def test_a_release_drops_both_cached_directions_at_once(cluster: LocalCluster) -> None:
    stale = 0
    async with StateProxy(cluster.url) as a, StateProxy(cluster.url) as b:
        na, nb = NatTable(a, "natpool"), NatTable(b, "natpool")
        for i in range(40):
            f = (6, "10.7.0.1", 20_000 + i)
            ext = await na.outbound(*f)
            assert ext is not None
            assert await na.inbound(6, *ext) == (f[1], f[2])  # both directions cached
            assert a.cached("natpool", f"i|{ext[0]}|{ext[1]}") != MISS
            assert await na.release(*f)
            # at once, in the same step as the release's reply: no copy left
            if a.cached("natpool", "o|" + flow_id(*f)) is not MISS:
                stale += 1
            if a.cached("natpool", f"i|{ext[0]}|{ext[1]}") is not MISS:
                stale += 1
            # another proxy takes the freed port for a new flow of the same block
            g = next(
                (6, "10.8.0.1", p)
                for p in range(1, 60_000)
                if nb.block_of_flow(flow_id(6, "10.8.0.1", p)) == na.block_of_flow(flow_id(*f))
                and p not in _taken
            )
            _taken.add(g[2])
            got = await nb.outbound(*g)
            assert got == ext  # the port freed by the release is the next one handed out
            assert await na.inbound(6, *ext) == (g[1], g[2])  # never the released flow
            assert await nb.release(*g)
    assert stale == 0, f"{stale} cached copies outlived their release"


_taken: set[int] = set()
