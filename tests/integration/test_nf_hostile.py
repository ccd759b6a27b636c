"""Detectors that cannot be blinded (issue 16, item 5), on a real coordinator: a hostile
capture leaves every middlebox running and its real attacks reported; a packet whose
update the proxy refuses costs that packet only; a full proxy buffer loses nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cogs.cluster import LocalCluster
from cogs.errors import ConfigError
from cogs.nf.feed import Feeder
from cogs.nf.packets import SYN, TCP, Packet
from cogs.nf.payloads import MAX_SESSION_COOKIES
from cogs.nf.runner import counters, run_nf
from cogs.proxy import StateProxy
from tests.conftest import Standalone, load_default_catalog
from tests.hostile import LONG_COOKIE, Hostile

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def coordinator(standalone: Standalone) -> str:
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    return standalone.url


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    h = Hostile().build()
    return h.write(tmp_path_factory.mktemp("hostile") / "hostile.pcap"), h.expected


@pytest.mark.parametrize("nf", ["portscan", "dnstunnel", "sidejack"])
def test_hostile_capture_attacks_still_reported(
    nf: str, coordinator: str, hostile: tuple[Path, dict[str, set[str]]]
) -> None:
    pcap, expected = hostile
    r = run_nf(nf, pcap, 2, coordinator)
    assert {a["key"] for a in r.alerts} == expected[nf]
    assert sum(b.packets for b in r.boxes) == r.trace.packets  # every box ran to the end
    assert sum(r.trace.skipped.values()) > 300  # the junk frames: counted, skipped
    c = counters(r)
    assert not [k for k in c if k.startswith(("packets skipped", "updates refused"))], c
    if nf == "dnstunnel":
        assert c["dns questions over the limit"] == 65535 - 4
        assert c["dns bad compression pointer"] >= 2
        assert c["dns name too long"] >= 1
    if nf == "sidejack":
        assert c["session cookies over the limit"] == 100 - MAX_SESSION_COOKIES
        long_alert = next(a for a in r.alerts if a["key"].startswith("PHPSESSID=00000000"))
        assert long_alert["clients"] == ["192.168.3.50", "198.51.100.50"]


async def test_a_refused_update_costs_its_packet_only(
    coordinator: str, caplog: pytest.LogCaptureFixture, anyio_backend: Any
) -> None:
    """What blinded sidejack before: the raw 700-byte cookie as the key. The proxy
    refuses it (BadKey); the feeder counts that packet and goes on."""

    async with StateProxy(coordinator) as proxy:
        feeder = Feeder(proxy, "sidejack", "t-refused|")

        def unbounded(p: Packet) -> None:  # the old keying: name=value as sent
            cookie = p.payload.split(b"Cookie: ", 1)[1].split(b"\r\n", 1)[0]
            feeder.detector.update("sidejack_clients", cookie.decode(), "add", p.src)

        feeder.detector.packet = unbounded  # type: ignore[method-assign]
        reqs = [
            Packet(0.0, "192.168.3.50", "10.0.0.80", TCP, 1000, 80, 0, b"GET / HTTP/1.1\r\nCookie: " + LONG_COOKIE + b"\r\n"),
            Packet(1.0, "192.168.3.51", "10.0.0.80", TCP, 1001, 80, 0, b"GET / HTTP/1.1\r\nCookie: sid=a\r\n"),
            Packet(2.0, "192.168.3.52", "10.0.0.80", TCP, 1002, 80, 0, b"GET / HTTP/1.1\r\nCookie: sid=a\r\n"),
        ]  # fmt: skip
        with caplog.at_level(logging.WARNING, "cogs.nf"):
            feeder.feed(reqs)
        assert feeder.detector.counters == {"packets skipped (BadKey)": 1}
        assert "BadKey" in caplog.text
        assert len(caplog.text) < 2000  # a bounded line, not the cookie
        await proxy.flush()
        assert sorted(await proxy.syn_retrieve("sidejack_clients", "t-refused|sid=a")) == [
            "192.168.3.51",
            "192.168.3.52",
        ]


async def test_full_buffer_loses_no_update(coordinator: str, anyio_backend: Any) -> None:
    """A scan of 3,000 ports through a proxy that buffers at most 100 ops: the updates
    past it wait in the feeder's backlog, none is lost, the order per key is kept."""
    async with StateProxy(coordinator, batch_max_ops=50, max_pending=100) as proxy:
        feeder = Feeder(proxy, "portscan", "t-full|")
        probes = [Packet(i * 1e-4, "203.0.113.99", "10.9.9.9", TCP, 20000 + i, i + 1, SYN, b"") for i in range(3000)]
        for i in range(0, len(probes), 1000):
            feeder.feed(probes[i : i + 1000])
            await feeder.settle(10)
        feeder.finish()  # all 3,000 attempts fail at once: 6,000 updates
        assert len(feeder.backlog) > 1000
        await feeder.settle(0)
        await proxy.flush()
        ports = await proxy.syn_retrieve("scan_ports", "t-full|203.0.113.99>10.9.9.9")
        assert sorted(map(int, ports)) == list(range(1, 3001))
        assert await proxy.syn_retrieve("scan_hosts", "t-full|203.0.113.99>3000") == {"10.9.9.9"}


async def test_missing_states_fail_before_any_packet(cluster: LocalCluster, anyio_backend: Any) -> None:
    async with StateProxy(cluster.url) as proxy:  # the test catalog: no NF states
        with pytest.raises(ConfigError, match=r"portscan needs the state\(s\) scan_ports, scan_hosts"):
            Feeder(proxy, "portscan")


async def test_a_middlebox_outlives_a_coordinator_outage_longer_than_the_bound(
    standalone: Standalone, coordinator: str, anyio_backend: Any
) -> None:
    """The coordinator frozen for 3 delivery bounds while the feeder's backlog waits for
    room: each bound that passes is counted, the feeder keeps waiting (it ended with
    Backpressure once waits for room became bounded), and once the coordinator is back
    every update applies, in order."""
    import os
    import signal

    import anyio

    from cogs.settings import load_settings

    settings = load_settings(url=coordinator, delivery_timeout_s=0.5)
    async with StateProxy(settings=settings, batch_max_ops=50, max_pending=100) as proxy:
        feeder = Feeder(proxy, "portscan", "t-outage|")
        probes = [Packet(i * 1e-4, "203.0.113.98", "10.9.9.8", TCP, 20000 + i, i + 1, SYN, b"") for i in range(600)]
        os.kill(standalone.proc.pid, signal.SIGSTOP)
        try:
            feeder.feed(probes)
            feeder.finish()
            async with anyio.create_task_group() as tg:
                tg.start_soon(feeder.settle, 0)
                await anyio.sleep(1.6)
                waited = feeder.detector.counters["waits for room past the delivery bound"]
                os.kill(standalone.proc.pid, signal.SIGCONT)
        finally:
            os.kill(standalone.proc.pid, signal.SIGCONT)
        assert waited >= 2  # bounds passed while frozen, counted; the feeder did not end
        assert not feeder.backlog
        await proxy.flush()
        ports = await proxy.syn_retrieve("scan_ports", "t-outage|203.0.113.98>10.9.9.8")
        assert sorted(map(int, ports)) == list(range(1, 601))
