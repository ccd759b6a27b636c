"""NFs on a network interface (issue 21), in a namespace of the test's own: a veth pair
(one end replayed into with tcpreplay, the other captured by the workers) and a
redis-server on the namespace's loopback. Needs root; the lab's multi-host tests are
in test_live_lab.py."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest

from cogs.nf.runner import run_nf
from tests.conftest import CAPTURES, Standalone, load_default_catalog
from tests.hostile import Hostile
from tests.netns import Netns, netns_or_skip

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NFS = ("portscan", "dnstunnel", "sidejack")
SHARED = ("ndpi__synscan.pcap", "ndpi__dns-tunnel-iodine.pcap", "zeek__wikipedia.pcap",
          "ndpi__alexa-app.pcapng", "zeek__cooper-grill-dvwa.pcapng")  # fmt: skip


@dataclass
class Lan:
    ns: Netns
    tx: str  # replay into this end
    rx: str  # the workers capture this one
    url: str


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    netns_or_skip()
    ns = Netns()
    try:
        tx, rx = ns.veth("t", "c", mtu=9000)  # jumbo: the oversized frames reach the workers
        url = ns.redis(7000, tmp_path_factory.mktemp("nsredis"))
        load = f"from tests.conftest import load_default_catalog; load_default_catalog({url!r})"
        r = ns.run([str(BIN / "python"), "-c", load], cwd=REPO)
        assert r.returncode == 0, r.stderr
        yield Lan(ns, tx, rx, url)
    finally:
        ns.close()


@pytest.fixture(scope="module")
def coordinator(standalone: Standalone) -> str:
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    return standalone.url


def _write(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535)
        for ts, f in frames:
            w.writepkt(f, ts=ts)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """The hostile capture (synthetic traffic, attacks, junk) followed by every shared
    capture present, one after the other, as one Ethernet pcap."""
    from cogs.nf.packets import TraceStats, read_frames

    h = Hostile(max_frame=9014).build()
    frames = [(1_700_000_000.0 + t, f) for t, f in h.synth.frames]
    for name in SHARED:
        if (CAPTURES / name).exists():
            part = [(ts, f) for _link, ts, f in read_frames(CAPTURES / name, TraceStats())]
            shift = frames[-1][0] + 1.0 - part[0][0]
            frames += [(ts + shift, f) for ts, f in part]
    return _write(tmp_path_factory.mktemp("mixed") / "mixed.pcap", frames), h.expected


def live(
    lan: Lan, nf: str, capture: Path, workers: int = 2, *extra: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``nf`` on the capture end, replay ``capture`` at top speed into the other,
    stop the run with SIGTERM: (alerts, summary) from its --json output."""
    argv = [str(BIN / "cogs"), "nf", "run", nf, "--interface", lan.rx, "--workers", str(workers),
            "--coordinator", lan.url, "--json", "--namespace", f"t{secrets.token_hex(4)}|", *extra]  # fmt: skip
    p = lan.ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stderr is not None
        seen = []
        while "capturing" not in (line := p.stderr.readline()):
            seen.append(line)
            assert line, f"the run ended before capturing: {''.join(seen)[-2000:]}"
        r = lan.ns.run([str(BIN / "cogs"), "trace", "replay", str(capture), "--interface", lan.tx, "--topspeed",
                        "--json"])  # fmt: skip
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)  # the last frames through the veth's backlog
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = next(r for r in rows if "workers" in r)
    summary["replay"] = json.loads(r.stdout)
    return [r for r in rows if "workers" not in r], summary


def _keys(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a["state"], a["key"]) for a in alerts}


@pytest.mark.parametrize("nf", NFS)
def test_live_raises_the_alerts_of_the_capture_mode(
    nf: str, lan: Lan, coordinator: str, mixed: tuple[Path, dict[str, set[str]]]
) -> None:
    """Replayed at top speed with truncated, oversized, malformed and random frames mixed
    in: both workers run to the end, nothing is dropped, and the alerts are those of
    ``cogs nf run --trace`` on the same capture, the attacks among them."""
    pcap, expected = mixed
    want = run_nf(nf, pcap, 2, coordinator)
    got, summary = live(lan, nf, pcap)
    assert _keys(got) == _keys(want.alerts)
    assert expected[nf] <= {a["key"] for a in got}
    workers = summary["workers"]
    assert summary["failed"] == {}
    assert [w["kernel_dropped"] for w in workers] == [0, 0]
    assert all(w["frames"] > 0 for w in workers), "the kernel split the flows over both workers"
    sent = summary["replay"]["packets"]
    assert 0 < sum(w["frames"] for w in workers) < sent, "the pre-filter kept some frames out of Python"


def test_fanout_keeps_both_directions_of_a_flow_on_one_worker(lan: Lan) -> None:
    """4 sockets in one group; 300 flows sent both ways (TCP and UDP)."""
    r = lan.ns.run([str(BIN / "python"), "-m", "tests.live_probe", lan.rx, lan.tx, "4", "300"], cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    flows: dict[str, list[int]] = got["flows"]
    assert len(flows) == 300
    assert all(len(where) == 2 for where in flows.values())  # both directions arrived
    assert all(len(set(where)) == 1 for where in flows.values()), "a flow was split over two sockets"
    used = {where[0] for where in flows.values()}
    assert used == {0, 1, 2, 3}, "the flows spread over all the sockets"


def test_unknown_interface_is_a_clear_error(lan: Lan) -> None:
    r = lan.ns.run([str(BIN / "cogs"), "nf", "run", "portscan", "--interface", "nosuch0", "--coordinator", lan.url])
    assert r.returncode == 2, r.stderr
    assert "no network interface 'nosuch0'" in r.stderr
