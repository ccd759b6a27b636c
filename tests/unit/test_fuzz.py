"""Bad input, property-based: the Lua library, the frame decoder, catalog files and
the proxy's update() take random input and answer with clear errors, never a crash
and never a touched state. `python -m tests.fuzz_long` runs the same cases much longer."""

from __future__ import annotations

from array import array

from tests import fuzz_cases
from tests.helpers import fake_harness, make_batcher

EXAMPLES = 300


def test_random_ops_applied_or_refused_untouched() -> None:
    assert fuzz_cases.lua_ops(fake_harness(), EXAMPLES) == EXAMPLES


def test_random_frames_never_crash() -> None:
    assert fuzz_cases.lua_frames(fake_harness(), EXAMPLES) == EXAMPLES


def test_random_catalog_documents() -> None:
    assert fuzz_cases.catalogs(EXAMPLES) == EXAMPLES


def test_random_updates_at_the_proxy() -> None:
    assert fuzz_cases.proxy_updates(make_batcher(array("H", bytes(2 * 16384))).update, EXAMPLES) == EXAMPLES


def test_random_peer_frames() -> None:
    assert fuzz_cases.peer_frames(EXAMPLES) == EXAMPLES
