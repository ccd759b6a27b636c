"""NFs on a network interface (issue 21), in a namespace of the test's own: a veth pair
(one end replayed into with tcpreplay, the other captured by the workers) and a
redis-server on the namespace's loopback. Needs root; the lab's multi-host tests are
in test_live_lab.py."""

from __future__ import annotations

import json
import os
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

from cogs.nf.frames import HELD
from cogs.nf.runner import run_nf
from cogs.nf.synth import Synth
from tests.conftest import CAPTURES, Standalone, load_default_catalog
from tests.evasions import Evasions
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
    assert summary["replay"]["failed"] > 0  # frames too short to send: left out and counted


@pytest.mark.parametrize("nf", NFS)
def test_live_and_capture_modes_agree_on_evasions(
    nf: str, lan: Lan, coordinator: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Fragmented SYNs and queries (IPv4: the kernel reassembles them; IPv6: the decoder),
    IPv6 header chains, DNS over TCP cut anywhere, requests servers read however they
    come: the same alerts live as from the capture file, every evasion's among them."""
    ev = Evasions().build()
    pcap = ev.write(tmp_path_factory.mktemp("evasions") / "evasions.pcap")
    want = run_nf(nf, pcap, 2, coordinator)
    got, summary = live(lan, nf, pcap)
    assert _keys(got) == _keys(want.alerts)
    assert ev.expected[nf] <= {a["key"] for a in got}
    assert summary["failed"] == {}
    assert [w["kernel_dropped"] for w in summary["workers"]] == [0, 0]
    held = sum(w["skipped"].get(HELD, 0) for w in summary["workers"])
    assert held == 30 + 120  # only IPv6 fragments wait in the decoder: IPv4 came whole from the kernel


@pytest.mark.parametrize("mode", ["ring", "recv"])
def test_fanout_keeps_both_directions_of_a_flow_on_one_worker(lan: Lan, mode: str) -> None:
    """4 sockets in one group (read through a TPACKET_V3 ring, or one recv per frame);
    300 flows sent both ways (TCP and UDP, a third of them VLAN-tagged)."""
    probe = [str(BIN / "python"), "-m", "tests.live_probe", lan.rx, lan.tx, "4", "300", mode]
    r = lan.ns.run(probe, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert sum(got["received"]) >= 600  # the kernel's count per socket (IPv6 chatter of the link aside)
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


# -- NAT: translate on one interface, emit on another ------------------------------------


def _l4key(ip: Any) -> tuple[Any, ...]:
    """What identifies one packet whatever the NAT rewrote (addresses and ports apart)."""
    l4 = ip.data
    return (ip.p, bytes(l4.data), getattr(l4, "seq", None), getattr(l4, "flags", None))


def _checksums_ok(ip: Any) -> bool:
    again = dpkt.ip.IP(bytes(ip))
    again.sum = 0
    again.data.sum = 0
    fixed = dpkt.ip.IP(bytes(again))
    return bool(fixed.sum == ip.sum and fixed.data.sum == ip.data.sum)


def _tcpdump(lan: Lan, interface: str, out: Path, *expr: str) -> subprocess.Popen[str]:
    """tcpdump writing what ``interface`` receives to ``out``, once it listens."""
    p = lan.ns.popen(["tcpdump", "-i", interface, "-U", "-w", str(out), *expr], stderr=subprocess.PIPE)
    assert p.stderr is not None
    while "listening on" not in (line := p.stderr.readline()):
        assert line, "tcpdump ended before listening"
    return p


def _seen(path: Path) -> int:
    """IPv4 frames in a capture tcpdump is still writing (0 until its header is there)."""
    try:
        return len(_ipv4(path))
    except (OSError, ValueError, dpkt.dpkt.NeedData):
        return 0


def _ipv4(path: Path) -> list[Any]:
    from cogs.nf.packets import TraceStats, read_frames

    out = []
    for _link, _ts, f in read_frames(path, TraceStats()):
        eth = dpkt.ethernet.Ethernet(f)
        if isinstance(eth.data, dpkt.ip.IP):
            out.append(eth.data)
    return out


def test_nat_translates_both_ways_between_two_interfaces(lan: Lan, tmp_path: Path) -> None:
    """300 flows out of an inside network, then their replies to the external addresses
    the NAT gave them (and 5 unsolicited ones): every packet comes out of the second
    interface translated, checksums right, one external port per flow, replies back to
    their inside host; the unsolicited dropped."""
    ns = lan.ns
    emit, tap = ns.veth("o", "p")
    s = Synth(seed=4, benign_flows=0, scans=0, tunnels=0, sidejacks=0, nat_flows=300).build()
    frames = [(1_700_000_000.0 + t, f) for t, f in s.frames]
    out_frames = [(t, f) for t, f in frames if dpkt.ethernet.Ethernet(f).data.src[:2] == b"\x0a\x01"]
    replies = [dpkt.ethernet.Ethernet(f) for t, f in frames if dpkt.ethernet.Ethernet(f).data.dst[:2] == b"\x0a\x01"]
    outbound = _write(tmp_path / "out.pcap", out_frames)
    dump = tmp_path / "emitted.pcap"
    tcpdump = _tcpdump(lan, tap, dump)
    argv = [str(BIN / "cogs"), "nf", "run", "nat", "--interface", lan.rx, "--out-interface", emit, "--workers", "2",
            "--coordinator", lan.url, "--json"]  # fmt: skip
    p = ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stderr is not None
        while "capturing" not in (line := p.stderr.readline()):
            assert line, "the NAT run ended before capturing"
        assert ns.run([str(BIN / "cogs"), "trace", "replay", str(outbound), "-i", lan.tx, "--topspeed"]).returncode == 0
        time.sleep(1.5)
        sent = {_l4key(dpkt.ethernet.Ethernet(f).data): dpkt.ethernet.Ethernet(f).data for _, f in out_frames}
        mapping: dict[tuple[int, bytes, int], tuple[bytes, int]] = {}
        for ip in _ipv4(dump):
            orig = sent.pop(_l4key(ip))
            assert _checksums_ok(ip)
            assert (ip.dst, ip.data.dport) == (orig.dst, orig.data.dport)
            ext = (ip.src, ip.data.sport)
            assert mapping.setdefault((ip.p, orig.src, orig.data.sport), ext) == ext, "one mapping per flow"
        assert not sent, f"{len(sent)} outbound packets did not come out"
        assert len(set(mapping.values())) == len(mapping) == 300, "no external port shared"
        assert {e[0] for e in mapping.values()} <= {bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])}
        # the replies, as they arrive from outside: to the flow's external address
        inbound, back = [], {}
        for eth in replies:
            ip = eth.data
            ext_ip, ext_port = mapping[(ip.p, ip.dst, ip.data.dport)]
            back[_l4key(ip)] = (ip.dst, ip.data.dport)
            ip.dst, ip.data.dport, ip.sum, ip.data.sum = ext_ip, ext_port, 0, 0
            inbound.append((0.0, bytes(eth)))
        for i in range(5):  # unsolicited: to an external port no flow holds
            eth = replies[i]
            eth.data.dst, eth.data.data.dport, eth.data.sum, eth.data.data.sum = (
                bytes([198, 51, 100, 1]),
                1030 + i,
                0,
                0,
            )
            eth.data.data.data = b"unsolicited %d" % i
            inbound.append((0.0, bytes(eth)))
        n_out = len(_ipv4(dump))
        assert ns.run([str(BIN / "cogs"), "trace", "replay", str(_write(tmp_path / "in.pcap", inbound)), "-i", lan.tx,
                       "--topspeed"]).returncode == 0  # fmt: skip
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        for proc in (p, tcpdump):
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=10)  # reaps it, closes its pipes
    assert p.returncode == 0, err[-3000:]
    came_in = _ipv4(dump)[n_out:]
    assert len(came_in) == len(replies)
    for ip in came_in:
        assert _checksums_ok(ip)
        assert (ip.dst, ip.data.dport) == back[_l4key(ip)], "a reply went back to its inside host"
    summary = json.loads(out.splitlines()[-1])
    c = summary["counters"]
    assert c["translated outbound"] == len(out_frames)
    assert c["translated inbound"] == len(replies)
    assert c["dropped: unsolicited (no mapping)"] == 5
    assert summary["failed"] == {}


# -- ending a run; replaying ---------------------------------------------------------


def _start(lan: Lan, *extra: str) -> subprocess.Popen[str]:
    argv = [str(BIN / "cogs"), "nf", "run", "portscan", "--interface", lan.rx, "--coordinator", lan.url, "--json",
            "--namespace", f"t{secrets.token_hex(4)}|", *extra]  # fmt: skip
    p = lan.ns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert p.stderr is not None
    while "capturing" not in (line := p.stderr.readline()):
        assert line, "the run ended before capturing"
    return p


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_duration_and_ctrl_c_end_the_run_with_a_summary(lan: Lan) -> None:
    p = _start(lan, "--workers", "2", "--duration", "2")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert len(json.loads(out.splitlines()[-1])["workers"]) == 2
    assert _group_gone(p.pid), "a worker outlived the run"
    p = _start(lan, "--workers", "2")
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group gets it
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["failed"] == {}
    assert "portscan on" in err  # the summary table
    assert _group_gone(p.pid)


def test_a_dead_worker_is_reported_and_the_others_go_on(lan: Lan, mixed: tuple[Path, dict[str, set[str]]]) -> None:
    p = _start(lan, "--workers", "2")
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    workers = [int(c) for c in children if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    time.sleep(1.5)
    assert lan.ns.run([str(BIN / "cogs"), "trace", "replay", str(mixed[0]), "-i", lan.tx, "--topspeed"]).returncode == 0
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "worker 1 ended early: exited with code -9" in err
    summary = json.loads(out.splitlines()[-1])
    assert summary["workers"][0]["frames"] > 0  # the kernel gave the dead worker's flows to the other
    assert _group_gone(p.pid)


def test_trace_replay_python_engine_paces_loops_and_adds_ethernet(lan: Lan, tmp_path: Path) -> None:
    """A raw-IP capture (no link header): 100 packets, twice, at 2,000 packets/s."""
    from cogs.nf.nat import write_pcap

    raw = tmp_path / "raw.pcap"
    write_pcap(raw, [(float(i), i, bytes(dpkt.ethernet.Ethernet(f).data)) for i, (_t, f) in
                     enumerate(Synth(seed=2, benign_flows=30).build().frames[:100])])  # fmt: skip
    dump = tmp_path / "seen.pcap"
    tcpdump = _tcpdump(lan, lan.rx, dump, "ip")
    try:
        r = lan.ns.run([str(BIN / "cogs"), "trace", "replay", str(raw), "-i", lan.tx, "--pps", "2000", "--loop", "2",
                        "--json"])  # fmt: skip
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10  # tcpdump writes each frame (-U); on a busy box, later
        while _seen(dump) < 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        tcpdump.terminate()
        tcpdump.communicate(timeout=10)
    got = json.loads(r.stdout)
    assert (got["engine"], got["packets"], got["failed"]) == ("python", 200, 0)
    assert got["seconds"] >= 0.09  # paced: the 200th packet leaves 0.1 s after the first
    assert len(_ipv4(dump)) == 200
    bad = lan.ns.run([str(BIN / "cogs"), "trace", "replay", str(raw), "-i", "nosuch0"])
    assert bad.returncode == 2
    assert "no network interface 'nosuch0'" in bad.stderr
