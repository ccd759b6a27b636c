"""The flow-inspection NFs on a real cluster: synthetic traces with ground truth, the
global-state property (same alerts for any N; local state alone misses split
attacks), and the real third-party captures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cogs.cli import main
from cogs.nf.runner import RunResult, counters, run_nf
from cogs.nf.synth import Synth
from tests.conftest import Standalone, captures, load_default_catalog

NFS = ("portscan", "dnstunnel", "sidejack")


@pytest.fixture(scope="module")
def coordinator(standalone: Standalone) -> str:
    """The default catalog on a Redis of its own (the session cluster runs the test one)."""
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    return standalone.url


@pytest.fixture(scope="module")
def synth_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    # 30 probed ports: twice the port-scan threshold, ~7 per box once split over 4
    s = Synth(seed=11, benign_flows=400, scans=2, scan_ports=30, tunnels=1, sidejacks=2).build()
    pcap, truth = s.write(tmp_path_factory.mktemp("trace") / "synth.pcap")
    return pcap, json.loads(truth.read_text())["alerts"]


def _keys(r: RunResult) -> set[tuple[str, str]]:
    return {(a["nf"], a["key"]) for a in r.alerts}


@pytest.mark.slow
@pytest.mark.parametrize("nf", NFS)
def test_global_state_same_alerts_for_any_n(
    nf: str, coordinator: str, synth_trace: tuple[Path, list[dict[str, str]]]
) -> None:
    pcap, truth = synth_trace
    want = {(t["nf"], t["key"]) for t in truth if t["nf"] == nf}
    assert want
    for n in (1, 2, 4, 8):
        got = run_nf(nf, pcap, n, coordinator)
        assert _keys(got) == want, f"{nf} with {n} middleboxes"
        assert sum(b.packets for b in got.boxes) == got.trace.packets


@pytest.mark.slow
def test_local_state_misses_split_attacks(coordinator: str, synth_trace: tuple[Path, list[dict[str, str]]]) -> None:
    pcap, _truth = synth_trace
    for nf, state in (("portscan", "scan_ports"), ("dnstunnel", "dns_subdomains"), ("dnstunnel", "dns_qtypes")):
        whole = run_nf(nf, pcap, 1, coordinator, local_only=True)
        split = run_nf(nf, pcap, 4, coordinator, local_only=True)
        glob = run_nf(nf, pcap, 4, coordinator)
        caught = {a["key"] for a in whole.alerts if a["state"] == state}
        assert caught, f"one box alone sees the whole {nf} attack"
        assert caught <= {a["key"] for a in glob.alerts if a["state"] == state}, "cogs catches it split over 4"
        assert not {a["key"] for a in split.alerts if a["state"] == state}, f"local {state} must miss the split attack"


def test_trace_synth_cli(tmp_path: Path) -> None:
    out = tmp_path / "t.pcap"
    r = CliRunner().invoke(main, ["trace", "synth", "--out", str(out), "--benign-flows", "20", "--scans", "3"])
    assert r.exit_code == 0, r.output
    truth = json.loads(out.with_name("t.pcap.truth.json").read_text())
    assert [a["nf"] for a in truth["alerts"]].count("portscan") == 3
    import dpkt

    with out.open("rb") as fh:
        assert sum(1 for _ in dpkt.pcap.Reader(fh)) == truth["frames"]


def test_nf_run_cli_json(coordinator: str, tmp_path: Path) -> None:
    out = tmp_path / "t.pcap"
    Synth(seed=3, benign_flows=30, scans=1, tunnels=0, sidejacks=0).build().write(out)
    r = CliRunner().invoke(
        main, ["nf", "run", "portscan", "--trace", str(out), "-n", "2", "--coordinator", coordinator, "--json"]
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["key"] for row in rows] == ["203.0.113.10"]
    assert set(rows[0]) >= {"nf", "key", "value", "time"}
    assert "packets/s" in r.stderr


def test_nf_run_refuses_a_non_capture(coordinator: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a capture at all\n" * 10)
    r = CliRunner().invoke(main, ["nf", "run", "portscan", "--trace", str(bad), "--coordinator", coordinator])
    assert r.exit_code == 1
    assert "not a pcap or pcapng capture" in r.output


# -- real captures (../shared/captures) -------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_synscan_flags_the_scanner(coordinator: str, n: int) -> None:
    r = run_nf("portscan", captures("ndpi__synscan.pcap"), n, coordinator)
    assert _keys(r) == {("portscan", "172.16.0.8")}
    assert r.trace.packets == 2011


@pytest.mark.parametrize("n", [1, 3])
def test_iodine_flags_the_tunnel_domain(coordinator: str, n: int) -> None:
    r = run_nf("dnstunnel", captures("ndpi__dns-tunnel-iodine.pcap"), n, coordinator)
    assert ("dnstunnel", "pirate.sea") in _keys(r)
    assert {a["state"] for a in r.alerts if a["key"] == "pirate.sea"} >= {"dns_subdomains"}
    # 41 of its 222 queries carry 8-bit labels (iodine's raw mode), which a full-message
    # parser (dpkt) rejected, letting them pass unseen: they are names too
    assert counters(r)["queries"] == 222
    assert r.trace.skipped == {"not IP": 4}


@pytest.mark.parametrize("name", ["zeek__wikipedia.pcap", "ndpi__alexa-app.pcapng", "zeek__cooper-grill-dvwa.pcapng"])
@pytest.mark.parametrize("nf", NFS)
def test_no_alert_on_benign_captures(coordinator: str, nf: str, name: str) -> None:
    r = run_nf(nf, captures(name), 2, coordinator)
    assert r.alerts == []
    assert r.trace.packets > 0


def test_cookie_reused_by_its_own_client_is_not_sidejacking(coordinator: str) -> None:
    r = run_nf("sidejack", captures("zeek__cooper-grill-dvwa.pcapng"), 1, coordinator)
    assert counters(r)["session cookies"] == 3  # the session cookie is seen, from one client
    assert r.alerts == []


# -- the synchronous example NF ---------------------------------------------------------


def test_sync_example_nf(coordinator: str, standalone: Standalone) -> None:
    from cogs.nf.packets import ACK, SYN, TCP, read_trace

    r = standalone.client()
    for k in r.scan_iter(match="cogs:scan_ports:*"):  # a clean slate for this state
        r.delete(k)
    cap = captures("ndpi__synscan.pcap")
    ports: dict[str, set[int]] = {}
    for p in read_trace(cap):  # what it should find, counted here independently
        if p.proto == TCP and p.flags & SYN and not p.flags & ACK:
            ports.setdefault(f"{p.src}>{p.dst}", set()).add(p.dport)
    expected = sorted(f"port scan: {k} probed {len(v)} ports" for k, v in ports.items() if len(v) >= 15)
    assert expected  # the capture has a scan
    script = Path(__file__).resolve().parents[2] / "examples" / "sync_portscan.py"
    out = subprocess.run([sys.executable, str(script), "--url", coordinator, str(cap)],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    assert sorted(line.split(" (")[0] for line in out.splitlines()) == expected
    benign = subprocess.run([sys.executable, str(script), "--url", coordinator, str(captures("zeek__wikipedia.pcap"))],
                            capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    assert benign == ""
