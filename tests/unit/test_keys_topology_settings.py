"""Key naming, slot math, topology parsing, settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from cogs.coordinator.topology import Topology
from cogs.errors import ConfigError, CoordinatorUnavailable
from cogs.keys import SLOTS, alert_stream, escape, slot, slot_tag, state_key, unescape
from cogs.settings import load_settings


@given(st.text(min_size=1, max_size=60))
def test_escape_round_trip_and_slot_is_redis_slot(key: str) -> None:
    e = escape(key)
    assert "}" not in e
    assert unescape(e) == key
    full = state_key("s", e)
    assert slot(e) == key_slot(full.encode())  # the tag decides, as Redis computes it
    assert key_slot((full + ":alerted").encode()) == slot(e)


def test_slot_tags_cover_every_slot() -> None:
    for s in (0, 1, 5460, 5461, 16383):
        assert slot(slot_tag(s)) == s
        assert key_slot(alert_stream(s).encode()) == s
    assert len({slot_tag(s) for s in range(SLOTS)}) == SLOTS


def _slots_reply(ranges: list[tuple[int, int, int]]) -> list[object]:
    return [
        [a, b, [b"127.0.0.1", port, f"id{port}".encode()], [b"127.0.0.1", port + 100, b"r"]] for a, b, port in ranges
    ]


def test_topology_from_cluster_slots() -> None:
    t = Topology.from_cluster_slots(_slots_reply([(0, 99, 7001), (100, 16383, 7000)]), "h")
    assert [n.port for n in t.nodes] == [7001, 7000]
    assert t.node_of(0) == 0
    assert t.node_of(16383) == 1
    assert t.nodes[1].first_slot == 100
    assert t.nodes[0].replicas == (("127.0.0.1", 7101),)


def test_topology_with_uncovered_slots_is_refused() -> None:
    with pytest.raises(CoordinatorUnavailable, match="serves only 100 of 16384"):
        Topology.from_cluster_slots(_slots_reply([(0, 99, 7000)]), "h")


def test_standalone_topology_owns_everything() -> None:
    t = Topology.standalone("h", 1)
    assert not t.cluster
    assert {t.node_of(s) for s in range(0, SLOTS, 97)} == {0}


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGS_URL", "rediss://n1:7000")
    monkeypatch.setenv("COGS_USERNAME", "proxy")
    monkeypatch.setenv("COGS_PASSWORD", "s3cret")
    monkeypatch.setenv("COGS_TLS_CA_FILE", "/etc/ca.pem")
    s = load_settings()
    kw = s.connection_kwargs()
    assert s.url == "rediss://n1:7000"
    assert kw["username"] == "proxy"
    assert kw["password"] == "s3cret"
    assert kw["ssl_ca_certs"] == "/etc/ca.pem"
    assert "s3cret" not in repr(s)
    assert s.max_owned_bytes == 1 << 30  # the default budget of owned indirect values
    monkeypatch.setenv("COGS_MAX_OWNED_BYTES", "65536")
    assert load_settings().max_owned_bytes == 65536


def test_explicit_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COGS_URL", "redis://env:1")
    assert load_settings(url="redis://given:2").url == "redis://given:2"
    assert load_settings(url=None).url == "redis://env:1"


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("COGS_URL", "http://x", "not a Redis URL"),
        ("COGS_CONNECT_TIMEOUT_S", "-1", "CONNECT_TIMEOUT_S"),
        ("COGS_MAX_OWNED_BYTES", "0", "COGS_MAX_OWNED_BYTES"),
        ("COGS_MAX_OWNED_BYTES", "lots", "COGS_MAX_OWNED_BYTES"),
        ("COGS_REROUTE_TIMEOUT_S", "0", "COGS_REROUTE_TIMEOUT_S"),
    ],
)
def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=needle):
        load_settings()
