"""NFs on interfaces in the lab (issue 21): 2 middlebox hosts x 2 capture workers, the
capture split between the hosts by the symmetric flow hash (the load balancer in front
of an NF cluster) and replayed into each host's eth0 with `cogs lab replay`: the
alerts are those of `cogs nf run --trace` on the whole capture, for each detector.
Needs root (CI runs as root)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

from cogs import runtime
from cogs.lab import Lab
from cogs.lab.netns import missing_privileges
from cogs.nf.frames import decode
from cogs.nf.report import collect_alerts
from cogs.nf.runner import run_nf
from cogs.nf.splitter import middlebox_of
from tests.conftest import CAPTURES, Standalone, load_default_catalog
from tests.hostile import Hostile

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(bool(missing_privileges()), reason="the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"),
]

HOSTS = ("mb1", "mb2")
SHARED = ("ndpi__synscan.pcap", "ndpi__dns-tunnel-iodine.pcap", "zeek__cooper-grill-dvwa.pcapng")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab.up(tmp_path_factory.mktemp("livelab"), nodes=3, replicas=0, middleboxes=2, rtt="200us") as lb:
        yield lb


@pytest.fixture(scope="module")
def coordinator(standalone: Standalone) -> str:
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    return standalone.url


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], dict[str, set[str]]]:
    """Synthetic traffic with attacks and junk (frames up to the links' MTU), then the
    shared captures present; the whole file and each host's share of it."""
    from cogs.nf.packets import TraceStats, read_frames

    h = Hostile(seed=8, max_frame=1514).build()
    frames = [(1_700_000_000.0 + t, f) for t, f in h.synth.frames]
    for name in SHARED:
        if (CAPTURES / name).exists():
            part = [(ts, f) for _link, ts, f in read_frames(CAPTURES / name, TraceStats())]
            shift = frames[-1][0] + 1.0 - part[0][0]
            frames += [(ts + shift, f) for ts, f in part]
    d = tmp_path_factory.mktemp("split")
    shares: list[list[tuple[float, bytes]]] = [[], []]
    for ts, f in frames:
        p = decode(f, ts)
        box = 0 if isinstance(p, str) else middlebox_of(2, p.proto, p.src, p.sport, p.dst, p.dport)
        shares[box].append((ts, f))
    paths = [_write(d / f"{HOSTS[i]}.pcap", shares[i]) for i in range(2)]
    return _write(d / "whole.pcap", frames), paths, h.expected


def _write(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with path.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535)
        for ts, f in frames:
            w.writepkt(f, ts=ts)
    return path


def _started(lab: Lab, host: str, nf: str, ns: str) -> subprocess.Popen[str]:
    p = lab.popen(host, ["cogs", "nf", "run", nf, "--interface", "eth0", "--workers", "2", "--json", "--namespace", ns],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stderr is not None
    while "capturing" not in (line := p.stderr.readline()):
        assert line, f"{nf} on {host} ended before capturing"
    return p


@pytest.mark.parametrize("nf", ["portscan", "dnstunnel", "sidejack"])
def test_two_hosts_two_workers_raise_the_alerts_of_the_capture_mode(
    nf: str, lab: Lab, coordinator: str, capture: tuple[Path, list[Path], dict[str, set[str]]]
) -> None:
    from cogs.nf.replay import Rate, replay_in_lab

    whole, shares, expected = capture
    want = {(a["state"], a["key"]) for a in run_nf(nf, whole, 2, coordinator).alerts}
    ns, since = f"lab{secrets.token_hex(3)}|", int(time.time() * 1000) - 1000
    procs = {h: _started(lab, h, nf, ns) for h in HOSTS}
    summaries: dict[str, Any] = {}
    try:
        for host, share in zip(HOSTS, shares, strict=True):
            sent = replay_in_lab(lab, host, share, Rate(topspeed=True))
            assert sent.packets > 0
        time.sleep(0.5)
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for host, p in procs.items():
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, f"{host}: {err[-3000:]}"
            summaries[host] = json.loads(out.splitlines()[-1])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    got = lab.call("mb1", lambda: runtime.run(collect_alerts, lab.url, nf, ns, since))
    assert {(a["state"], a["key"]) for a in got} == want
    assert expected[nf] <= {a["key"] for a in got}
    for host, s in summaries.items():
        assert s["failed"] == {}, host
        assert [w["kernel_dropped"] for w in s["workers"]] == [0, 0], host
        assert all(w["frames"] > 0 for w in s["workers"]), f"{host}: the flows spread over both workers"


def test_lab_replay_cli_feeds_one_host(lab: Lab, capture: tuple[Path, list[Path], dict[str, set[str]]]) -> None:
    from click.testing import CliRunner

    from cogs.cli import main

    r = CliRunner().invoke(main, ["lab", "replay", str(capture[1][0]), "--dir", str(lab.dir), "--to", "mb1",
                                  "--pps", "5000", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["packets"] > 0
    bad = CliRunner().invoke(main, ["lab", "replay", str(capture[1][0]), "--dir", str(lab.dir), "--to", "node1"])
    assert bad.exit_code == 2
    assert "node1 is a coordinator node" in bad.output


@pytest.mark.slow
def test_bench_live_smoke(tmp_path: Path) -> None:
    """One round of the live bench (port scan, 1 worker): a lab of its own, the packet
    mix at the replayer's top speed, the figures a results file carries."""
    from cogs.benchmarks.live import main as live_main
    from cogs.nf.frames import RST, SYN, TCP
    from cogs.nf.mix import Mix

    out = tmp_path / "live.json"
    data = live_main(quick=True, out=out, rounds=1, nfs=("portscan",), workers=(1,))
    s = data["summary"]
    assert 585 <= s["mix_mean_bytes"] <= 597
    assert s["redis_incr_p64_per_s"] > 0
    assert len(data["environment"]["commit"]) >= 7
    e = s["portscan"]["1"]
    assert e["rounds"] == 1
    assert e["rounds_with_a_zero_drop_rate"] in (0, 1)  # a busy machine may drop at every step: reported as such
    run = data["runs"][0]
    top = run["steps"][0]
    assert top["asked"] == "topspeed"
    assert top["sent"] > 0
    assert top["workers_cpu"]["cpu_s"] <= top["workers_cpu"]["cores"] * top["workers_cpu"]["wall_s"]
    # the kernel filter passed the SYNs and RSTs of what was sent (counted here from the mix itself),
    # and a few of the host's own: SYN-ACKs of its proxy's connections to the coordinator
    frames = Mix(seed=1).build(100_000).frames
    syn_rst = sum(1 for f in frames if f[23] == TCP and f[47] & (SYN | RST))
    if top["dropped"] == 0 and top["not_sent"] == 0:
        assert 0 <= top["captured"] - top["sent"] // len(frames) * syn_rst < 100
    assert out.with_suffix(".md").read_text().startswith("# Live capture")
