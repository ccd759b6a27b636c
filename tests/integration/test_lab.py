"""The multi-host lab for real: namespaces, links through the delay switch, a 3+3
cluster formed by compose's init command, middlebox hosts using it; and nothing left
behind afterwards, also after `cogs lab up` is killed -9 half way. Needs root (CI
runs as root); only lab addresses (198.18.0.0/15) and loopback are ever used."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cogs.cluster import LocalCluster
from cogs.lab import Lab, lab_tag, teardown
from cogs.lab.netns import ETC_NETNS, missing_privileges, namespaces
from cogs.ports import free_port_base
from tests.conftest import load_default_catalog

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_privileges()), reason="the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"),
]
COGS = [sys.executable, "-m", "cogs.cli"]
RTT_MS = 1.0

PROXY_PROBE = """
import json, os, anyio
from cogs.proxy import StateProxy
async def go():
    async with StateProxy(os.environ["COGS_URL"]) as p:
        for port in ("22", "80", "443"):
            await p.syn_up("scan_ports", "lab-probe>198.18.9.9", "add", port)
        hosts = sorted({n.host for n in p.coord.topology.nodes})
        print(json.dumps({"hosts": hosts, "ports": sorted(await p.syn_retrieve("scan_ports", "lab-probe>198.18.9.9"))}))
anyio.run(go)
"""


def leftovers(d: Path) -> dict[str, list[str]]:
    """What of the lab in ``d`` still exists: namespaces, /etc/netns entries, links
    in this namespace, processes whose command line or working dir is in ``d``."""
    tag, pre = lab_tag(d), f"cogs-{lab_tag(d)}-"
    procs = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if str(d) in cmd or cwd.startswith(str(d)):
            procs.append(f"{p.name}: {cmd}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {
        "namespaces": namespaces(pre),
        "etc": sorted(x.name for x in ETC_NETNS.glob(pre + "*")) if ETC_NETNS.exists() else [],
        "links": [line for line in links.splitlines() if f"cl{tag}" in line],
        "processes": procs,
    }


NOTHING: dict[str, list[str]] = {"namespaces": [], "etc": [], "links": [], "processes": []}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    d = tmp_path_factory.mktemp("lab")
    try:
        with Lab.up(d, nodes=6, middleboxes=2, rtt=f"{RTT_MS}ms") as lb:
            yield lb
        assert leftovers(d) == NOTHING
    finally:
        teardown(d)


def _ping_ms(lab: Lab, src: str, dst: str, n: int = 15) -> list[float]:
    r = lab.exec(src, ["ping", "-n", "-c", str(n), "-i", "0.02", "-W", "2", lab.hosts[dst].addr], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]


def test_hosts_have_their_address_and_no_route_out(lab: Lab) -> None:
    for name in ("node1", "node6", "mb2"):
        h = lab.hosts[name]
        r = lab.exec(name, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"], check=True)
        assert f"inet {h.addr}/16" in r.stdout
        routes = [r.split() for r in lab.exec(name, ["ip", "-4", "route"], check=True).stdout.splitlines()]
        assert routes == [f"198.18.0.0/16 dev eth0 proto kernel scope link src {h.addr}".split()]  # no default
    # nothing outside the lab is reachable: refused locally, no packet ever leaves
    r = lab.exec("mb1", ["ip", "route", "get", "192.0.2.1"])
    assert r.returncode != 0
    assert "unreachable" in r.stderr.lower()
    probe = "import socket,errno\ntry: socket.create_connection(('192.0.2.1', 9), timeout=2)\nexcept OSError as e: print(e.errno == errno.ENETUNREACH)"
    assert lab.exec("mb1", [sys.executable, "-c", probe], check=True).stdout.strip() == "True"


def test_round_trip_is_what_was_asked_and_changes_live(lab: Lab) -> None:
    """The switch never delivers early (a property: the minimum is at least the RTT
    asked), a live change of one link shows up in the round trips through it only."""
    base = _ping_ms(lab, "mb1", "node1")
    assert min(base) >= RTT_MS
    assert statistics.median(base) < RTT_MS + 50  # generous: a busy 2-core box; not a timing goal
    lab.netem("node1", delay="5ms")  # one way, each direction: +2 x (5 - 0.25) ms per round trip
    try:
        slow = _ping_ms(lab, "mb1", "node1")
        assert min(slow) >= RTT_MS / 2 + 10
        assert min(_ping_ms(lab, "mb1", "mb2", 5)) < min(slow)  # other links unchanged
    finally:
        lab.netem("node1", delay=f"{RTT_MS / 4}ms")


def test_cli_exec_and_status(lab: Lab) -> None:
    r = subprocess.run(
        [*COGS, "lab", "exec", "--dir", str(lab.dir), "mb2", "--", "sh", "-c", 'echo "$COGS_URL $COGS_PEER_HOST"; exit 7'],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 7  # the command's own status
    assert r.stdout.split() == [lab.url, lab.hosts["mb2"].addr]
    r = subprocess.run(
        [*COGS, "lab", "status", "--dir", str(lab.dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["up"]
    assert st["cluster"] == {"state": "ok", "primaries": 3, "replicas": 3, "answering": 6, "nodes": 6}
    by_name = {h["name"]: h for h in st["hosts"]}
    assert by_name["mb1"]["addr"] == "198.18.2.1"
    assert by_name["node1"]["link"]["delay_us"] == pytest.approx(RTT_MS * 1000 / 4)
    assert by_name["node1"]["link"]["rx_frames"] > 0  # the cluster bus crossed it
    r = subprocess.run(
        [*COGS, "lab", "status", "--dir", str(lab.dir)], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0
    assert "3 primaries, 3 replicas, 6/6 answering" in r.stderr


def test_a_proxy_on_a_middlebox_uses_the_lab_cluster(lab: Lab) -> None:
    r = lab.exec("mb1", [sys.executable, "-c", PROXY_PROBE], timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["hosts"] == [lab.hosts[f"node{i}"].addr for i in (1, 2, 3)]  # the announced lab addresses
    assert out["ports"] == ["22", "443", "80"]  # written and read over the lab links


def test_the_keeper_counts_from_the_first_nodes_host_as_compose_runs_it(lab: Lab) -> None:
    """compose's keeper command line (cogs/deployment.py), started by `lab up` in node1's host."""
    log = lab.dir / "keeper.log"
    deadline = time.monotonic() + 30
    while "counting usage on redis://node1:" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no keeper.log"
        time.sleep(0.2)
    r = lab.exec("node1", ["pgrep", "-f", "keeper --url redis://node1:"])
    assert r.returncode == 0, "the keeper is not running in node1's host"


def _alerts(stdout: str) -> set[tuple[str, str, str]]:
    return {(a["state"], a["key"], a["state_key"]) for a in map(json.loads, stdout.splitlines())}


def test_portscan_from_a_middlebox_alerts_as_on_loopback(lab: Lab, tmp_path: Path) -> None:
    trace = tmp_path / "t.pcap"
    subprocess.run([*COGS, "trace", "synth", "--out", str(trace)], check=True, capture_output=True, timeout=120)
    run = ["cogs", "nf", "run", "portscan", "--trace", str(trace), "-n", "2", "--json"]
    in_lab = lab.exec("mb1", run, timeout=180)
    assert in_lab.returncode == 0, in_lab.stderr
    local = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "loopback")
    try:
        load_default_catalog(local.up())
        r = subprocess.run(
            [*COGS, *run[1:], "--coordinator", local.url], capture_output=True, text=True, timeout=180, check=False
        )
    finally:
        local.down()
    assert r.returncode == 0, r.stderr
    assert _alerts(in_lab.stdout) == _alerts(r.stdout)
    assert ("scan_ports", "203.0.113.10", "203.0.113.10>10.0.1.10") in _alerts(in_lab.stdout)


def test_partition_and_heal(lab: Lab) -> None:
    lab.partition(["mb1"], ["mb2", "node2"])
    try:
        cut = lab.exec("mb1", ["ping", "-n", "-c", "1", "-W", "1", lab.hosts["mb2"].addr], timeout=30)
        assert cut.returncode != 0
        back = lab.exec("node2", ["ping", "-n", "-c", "1", "-W", "1", lab.hosts["mb1"].addr], timeout=30)
        assert back.returncode != 0  # both ways
        assert (
            lab.exec("mb1", ["ping", "-n", "-c", "1", "-W", "2", lab.hosts["node1"].addr], timeout=30).returncode == 0
        )
        assert {h.name: h.blocked for h in lab.status().hosts}["mb2"] == (lab.hosts["mb1"].addr,)
    finally:
        lab.heal()
    assert lab.exec("mb1", ["ping", "-n", "-c", "1", "-W", "2", lab.hosts["mb2"].addr], timeout=30).returncode == 0


def _node(lab: Lab, name: str) -> tuple[str, str]:
    st = {h.name: h for h in lab.status().hosts}[name]
    return st.process, st.cluster_state


def _myid(lab: Lab, name: str) -> str:
    r = lab.exec(name, ["redis-cli", "-p", str(lab.deployment.node(name).port), "cluster", "myid"], timeout=30)
    return r.stdout.strip()


def test_freeze_kill_and_restart_a_node(lab: Lab) -> None:
    node = "node6"  # a replica: the primaries keep serving meanwhile
    before = _myid(lab, node)
    assert len(before) == 40
    lab.freeze(node)
    try:
        assert _node(lab, node) == ("frozen", "no answer")
    finally:
        lab.thaw(node)
    assert _node(lab, node) == ("running", "ok")
    lab.kill(node)
    assert _node(lab, node)[0] == "down"
    assert lab.node_pid(node) is None
    lab.restart(node)
    assert _myid(lab, node) == before  # same identity (nodes.conf in its data dir)
    deadline = time.monotonic() + 30
    while _node(lab, node) != ("running", "ok") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _node(lab, node) == ("running", "ok")


def test_down_after_up_was_killed(tmp_path: Path) -> None:
    """kill -9 of `cogs lab up` half way (nodes started, cluster not formed), then
    `cogs lab down`: nothing left; a second down is a no-op."""
    d = tmp_path / "crash"
    up = subprocess.Popen(
        [*COGS, "lab", "up", "--dir", str(d), "--nodes", "3", "--replicas", "0", "--middleboxes", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(d.glob("node*/redis.pid")) and time.monotonic() < deadline and up.poll() is None:
            time.sleep(0.02)
        assert up.poll() is None, "up ended before it could be killed"
        up.send_signal(signal.SIGKILL)
        up.wait()
        assert leftovers(d)["namespaces"]  # it did leave things behind
        for _ in range(2):
            r = subprocess.run(
                [*COGS, "lab", "down", "--dir", str(d)], capture_output=True, text=True, timeout=120, check=False
            )
            assert r.returncode == 0, r.stderr
            assert leftovers(d) == NOTHING
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        teardown(d)
