"""Bad input, property-based: the Lua library, the frame decoder, catalog files and
the proxy's update() take random input and answer with clear errors, never a crash
and never a touched state. bench/fuzz.py runs the same cases much longer."""

from __future__ import annotations

from array import array

from cogs.proxy.batcher import Batcher, Lane, coalesce_kinds
from tests import fuzz_cases
from tests.helpers import fake_harness, make_catalog

EXAMPLES = 300


def test_random_ops_applied_or_refused_untouched() -> None:
    assert fuzz_cases.lua_ops(fake_harness(), EXAMPLES) == EXAMPLES


def test_random_frames_never_crash() -> None:
    assert fuzz_cases.lua_frames(fake_harness(), EXAMPLES) == EXAMPLES


def test_random_catalog_documents() -> None:
    assert fuzz_cases.catalogs(EXAMPLES) == EXAMPLES


def test_random_updates_at_the_proxy() -> None:
    class Topo:
        owner = array("H", bytes(2 * 16384))

    class Coord:
        topology = Topo()

    cat = make_catalog()
    b = Batcher(Coord(), "t", "p", batch_max_ops=10**6, delay=1, max_pending=10**6,  # type: ignore[arg-type]
                on_error=print, on_result=print, on_failed=print)  # fmt: skip

    def lane(name: str) -> Lane:
        from cogs.errors import UnknownState, refuse

        if name not in cat:
            raise refuse(UnknownState, "not in the catalog", state=name)
        st = cat.get(name)
        ts = cat.spec.types[st.type]
        lane = b.lanes[name] = Lane(name, cat.index(name), coalesce_kinds(ts.coalesce, ts.update), st)
        return lane

    b.lane_factory = lane
    assert fuzz_cases.proxy_updates(b.update, EXAMPLES) == EXAMPLES


def test_random_peer_frames() -> None:
    assert fuzz_cases.peer_frames(EXAMPLES) == EXAMPLES
