"""The peer server's accept rates (gate.py), as numbers: buckets per source and for all
strangers, known sources preferred, IPv6 counted by /64, tables bounded."""

from __future__ import annotations

from cogs.proxy.peer.gate import SOURCE, STRANGERS, AcceptGate, source_key


def test_a_source_gets_its_burst_then_its_rate() -> None:
    gate = AcceptGate(rate_per_source=10, burst_per_source=5, rate=1000, burst=1000)
    assert [gate.admit("10.0.0.1", 0.0) for _ in range(6)] == [None] * 5 + [SOURCE]
    assert gate.admit("10.0.0.2", 0.0) is None  # another source: its own bucket
    assert gate.admit("10.0.0.1", 0.05) == SOURCE  # half a token since
    assert gate.admit("10.0.0.1", 0.1) is None  # one
    assert gate.admit("10.0.0.1", 0.1) == SOURCE
    assert gate.refused_source == 3


def test_many_sources_share_the_strangers_rate_and_a_known_source_passes_it() -> None:
    gate = AcceptGate(rate_per_source=10, burst_per_source=5, rate=10, burst=20)
    gate.known("192.0.2.7")
    got = [gate.admit(f"10.0.{i}.1", 0.0) for i in range(30)]
    assert got.count(None) == 20
    assert got[20:] == [STRANGERS] * 10
    assert gate.refused_strangers == 10
    assert gate.admit("192.0.2.7", 0.0) is None  # proved the secret before: not a stranger
    assert gate.admit("10.0.99.1", 0.0) == STRANGERS
    # a source refused for the strangers' rate kept its own token
    assert [gate.admit("10.0.25.1", 10.0) for _ in range(6)] == [None] * 5 + [SOURCE]


def test_a_known_source_has_a_larger_bucket_of_its_own() -> None:
    gate = AcceptGate(rate_per_source=1, burst_per_source=2, known_rate_per_source=1, known_burst_per_source=50)
    gate.known("10.0.0.1")
    assert [gate.admit("10.0.0.1", 0.0) for _ in range(51)] == [None] * 50 + [SOURCE]


def test_ipv6_sources_count_by_their_64() -> None:
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("not an address:") == "not an address:"  # what accept() gave: its own bucket
    gate = AcceptGate(rate_per_source=1, burst_per_source=3)
    assert [gate.admit(f"2001:db8::{i}", 0.0) for i in range(1, 5)] == [None] * 3 + [SOURCE]


def test_the_tables_stay_bounded() -> None:
    gate = AcceptGate(max_sources=100, max_known=10, rate=1e9, burst=1e9)
    for i in range(1000):
        gate.admit(f"10.{i >> 8}.{i & 255}.1", 0.0)
        gate.known(f"10.{i >> 8}.{i & 255}.1")
    assert len(gate._buckets) == 100
    assert len(gate._known) == 10
