"""The evasions of attacks 20-22 (tests/evasions.py) through `cogs nf run` on a real
coordinator: every attack a server would still accept is reported; the two the
detectors cannot see are counted, not reported. And a junk alert entry with an id
from the future (attack 13) hides none of a later run's alerts."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cogs.coordinator.client import Coordinator
from cogs.nf.frames import HELD, TOO_MANY_EXT
from cogs.nf.runner import counters, run_nf
from tests.conftest import Standalone, load_default_catalog
from tests.evasions import Evasions


@pytest.fixture(scope="module")
def coordinator(standalone: Standalone) -> str:
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    return standalone.url


@pytest.fixture(scope="module")
def evasions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Evasions]:
    ev = Evasions().build()
    return ev.write(tmp_path_factory.mktemp("evasions") / "evasions.pcap"), ev


@pytest.mark.parametrize("nf", ["portscan", "dnstunnel", "sidejack"])
def test_evasions_are_reported_or_counted(nf: str, coordinator: str, evasions: tuple[Path, Evasions]) -> None:
    pcap, ev = evasions
    r = run_nf(nf, pcap, 2, coordinator)
    keys = {a["key"] for a in r.alerts}
    assert ev.expected[nf] <= keys
    assert not keys & ev.missed[nf]
    assert r.trace.reassembled == 300
    assert r.trace.skipped == {HELD: 300, TOO_MANY_EXT: 30}  # the scan behind 40 headers: counted
    c = counters(r)
    assert not [k for k in c if k.startswith(("packets skipped", "updates refused"))], c
    if nf == "dnstunnel":
        assert c["queries"] == 5 * 120
        assert not [k for k in c if k.startswith("dns tcp")], c  # nothing lost, nothing evicted
    if nf == "sidejack":
        assert c["cookies over the limit"] == 300 + 1 - 256  # the session cookie among them
        assert c["http request heads continued in a later segment"] == 1


def test_a_future_alert_id_hides_no_later_report(coordinator: str, evasions: tuple[Path, Evasions]) -> None:
    """`XADD <stream> 9999999999999-0 junk 1` made every later `cogs nf run` exit 1; and
    ids of later alerts of that stream follow it into the future."""

    async def poison(undo: bool) -> None:
        async with Coordinator(url=coordinator) as co:
            stream, client = co.alert_stream(0), co.node_client(0)
            if undo:
                await client.delete(stream)  # its ids stay in the future otherwise
            else:
                await client.execute_command("XADD", stream, "9999999999999-0", "junk", "1")

    pcap, ev = evasions
    anyio.run(poison, False)
    try:
        r = run_nf("portscan", pcap, 1, coordinator)
    finally:
        anyio.run(poison, True)
    assert ev.expected["portscan"] <= {a["key"] for a in r.alerts}
