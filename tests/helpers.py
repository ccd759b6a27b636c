"""Test helpers shared by the unit and integration tiers."""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from typing import Any

import fakeredis

from cogs.catalog import Catalog
from cogs.coordinator.client import BatchReply, parse_reply
from cogs.coordinator.frames import runs
from cogs.coordinator.ops import wire_arg
from cogs.errors import UnknownState, refuse
from cogs.keys import DEFAULT, escape
from cogs.library import Library, assemble, library_spec
from cogs.proxy.batcher import Batcher
from cogs.proxy.cache import ReplicaCache
from cogs.proxy.lanes import Lane, coalesce_kinds
from cogs.proxy.requests import RequestTable

TEST_CATALOG = """
[states.cnt]
class = "trigger"
type = "int"

[states.hits]
class = "trigger"
type = "int"
checker = "threshold"
params = { threshold = 10 }

[states.ports]
class = "trigger"
type = "set"
window = "5m"
checker = "cardinality"
params = { threshold = 3 }

[states.tags]
class = "trigger"
type = "set"
max_items = 4
max_member_bytes = 64

[states.note]
class = "trigger"
type = "string"
max_bytes = 10

[states.qtypes]
class = "trigger"
type = "map"
checker = "ratio"
params = { numerator = "odd", denominator = "all", threshold = 0.5, min_denominator = 4 }

[states.fields]
class = "trigger"
type = "map"
max_items = 3

[states.distinct]
class = "trigger"
type = "hll"
checker = "cardinality"
params = { threshold = 50 }

[states.rate]
class = "trigger"
type = "int"
window = "10s"
checker = "rate"
params = { threshold = 5.0, min_count = 3 }

[states.mapping]
class = "direct"
type = "string"
ttl = "1m"

[states.nat]
class = "direct"
type = "int"
mode = "replica"

[states.natttl]
class = "direct"
type = "string"
mode = "replica"
ttl = "1m"

[states.pmap]
class = "direct"
type = "portmap"
mode = "replica"
ttl = "1s"
params = { external = "192.0.2.1 192.0.2.2", port_min = 1000, port_max = 1009, block = 4 }

[states.pmap1]
class = "direct"
type = "portmap"
params = { external = "192.0.2.9", port_min = 2000, port_max = 2099, block = 50 }

[states.natpool]
class = "direct"
type = "portmap"
mode = "replica"
ttl = "5m"
params = { external = "198.51.100.7", port_min = 1024, port_max = 65535, block = 256 }

[states.natsmall]
class = "direct"
type = "portmap"
ttl = "5m"
params = { external = "198.51.100.8", port_min = 5000, port_max = 5099, block = 50 }

[states.objects]
class = "indirect"
mode = "replica"
max_bytes = 4194304

[states.brief]
class = "direct"
type = "string"
mode = "replica"
ttl = "1s"
"""

ALERT_STREAM = "cogs:alerts:{0}"


def make_catalog() -> Catalog:
    return Catalog.from_toml(TEST_CATALOG)


class LuaHarness:
    """The assembled library loaded into a Redis (fakeredis or real), driven by FCALL."""

    def __init__(self, r: Any, catalog: Catalog | None = None) -> None:
        self.r = r
        self.catalog = catalog or make_catalog()
        spec = library_spec()
        self.lib: Library = assemble(spec, self.catalog.json, self.catalog.digest)
        r.function_load(self.lib.source, replace=True)

    def op(self, mode: int, state: str, key: str, op: str, arg: Any = None) -> list[Any]:
        sidx = self.catalog.index(state) if state in self.catalog else 999
        spec = self.catalog.get(state) if state in self.catalog else self.catalog.states[0]
        return [mode, sidx, op, escape(key), wire_arg(arg, spec, op)]

    def raw(
        self,
        payload: str,
        token: str | None = None,
        stream: str = ALERT_STREAM,
        pid: str | None = None,
        numbered: tuple[str, int, int] | None = None,
        resync: bool = False,
    ) -> Any:
        """One cogs_batch call; ``numbered`` = (session, seq, ack) makes it a numbered batch."""
        extra: list[Any] = [pid] if pid is not None else []
        if numbered is not None:
            extra += [numbered[0], str(numbered[1]), str(numbered[2])] + (["R"] if resync else [])
        return self.r.fcall("cogs_batch", 0, token or self.lib.token, stream, payload, *extra)

    def batch(self, *ops: list[Any], pid: str | None = None) -> BatchReply:
        return parse_reply(self.raw(json.dumps(runs(ops)), pid=pid))

    def one(self, mode: int, state: str, key: str, op: str, arg: Any = None, pid: str | None = None) -> Any:
        reply = self.batch(self.op(mode, state, key, op, arg), pid=pid)
        if reply.errors:
            raise AssertionError(reply.errors[0])
        return reply.results.get(0)

    def error(self, mode: int, state: str, key: str, op: str, arg: Any = None, pid: str | None = None) -> str:
        reply = self.batch(self.op(mode, state, key, op, arg), pid=pid)
        assert reply.applied == 0, reply
        return reply.errors[0]

    def alerts(self) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in self.r.xrange(ALERT_STREAM)]


def fake_harness() -> LuaHarness:
    return LuaHarness(fakeredis.FakeRedis(server=fakeredis.FakeServer()))


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until true: for effects that arrive on another connection."""
    import anyio

    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - the effect has no event to wait on
            await anyio.sleep(0.005)


def make_batcher(owner: array[int] | None = None) -> Batcher:
    """A proxy's batcher without Redis (nothing is sent): lanes for the test catalog's
    states (an unknown one refused as the proxy does), slots spread over 3 nodes."""

    class Topo:
        def __init__(self, owner: array[int]) -> None:
            self.owner = owner

    class Coord:
        def __init__(self, owner: array[int]) -> None:
            self.topology = Topo(owner)
            self.ns = DEFAULT

    cat = make_catalog()
    coord = Coord(owner if owner is not None else array("H", [s % 3 for s in range(16384)]))
    requests = RequestTable(ReplicaCache(), {}, print)
    b = Batcher(coord, "t", "p", requests, batch_max_ops=10**6, delay=1, max_pending=10**6,  # type: ignore[arg-type]
                on_error=print)  # fmt: skip

    def lane(name: str) -> Lane:
        if name not in cat:
            raise refuse(UnknownState, "not in the catalog", state=name)
        st = cat.get(name)
        ts = cat.spec.types[st.type]
        lane = b.lanes[name] = Lane(name, cat.index(name), coalesce_kinds(ts.coalesce, ts.update), st)
        return lane

    b.lane_factory = lane
    return b
