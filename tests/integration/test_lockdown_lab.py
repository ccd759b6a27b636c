"""A locked coordinator in the lab: `cogs acl apply --admin-password --cluster-dir LAB`
run on node1; strangers on a middlebox host get NOAUTH from every node; `cogs lab`
keeps working on it (status, a restarted replica resyncs, scale adds locked node
hosts); a proxy on a middlebox runs as cogs-proxy. Needs root."""

from __future__ import annotations

import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from cogs.lab import Lab, scale_lab
from cogs.lab.netns import missing_privileges
from tests.helpers import TEST_CATALOG

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_privileges()), reason="the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"),
]
COGS = [sys.executable, "-m", "cogs.cli"]
PROXY_PW, MONITOR_PW, ADMIN_PW = "proxy-secret-123", "monitor-secret-456", "lab-admin-secret-789"
PROXY = """
import os, anyio
from cogs.proxy import StateProxy
async def go():
    async with StateProxy(os.environ["COGS_URL"]) as p:
        await p.syn_up("cnt", "lab-locked", "add", 5)
        print(await p.syn_retrieve("cnt", "lab-locked"))
anyio.run(go)
"""


def _raw(host: str, port: int, *cmd: str) -> bytes:
    wire = f"*{len(cmd)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in cmd)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(wire)
        return s.recv(4096)


def _strangers_refused(lab: Lab) -> dict[str, bytes]:
    """What each node answers a stranger on mb1: GET without AUTH."""
    out = {}
    for n in lab.deployment.nodes:
        addr = lab.hosts[n.name].addr
        out[n.name] = lab.call("mb1", partial(_raw, addr, n.port, "GET", "x"))[:7]
    return out


def _link(lab: Lab, node: str) -> Any:
    port = lab.deployment.node(node).port

    def read() -> Any:
        with redis.Redis(port=port, username="default", password=ADMIN_PW, socket_timeout=2) as r:
            return r.info("replication").get("master_link_status")

    return lab.call(node, read)


def _until(test: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_locked_lab_keeps_working(tmp_path: Path) -> None:
    cat = tmp_path / "catalog.toml"
    cat.write_text(TEST_CATALOG)
    with Lab.up(tmp_path / "lab", nodes=4, replicas=1, middleboxes=1, rtt="200us", catalog=cat) as lab:
        r = lab.exec(
            "node1",
            [*COGS, "acl", "apply", "--proxy-password", PROXY_PW, "--monitor-password", MONITOR_PW,
             "--admin-password", ADMIN_PW, "--cluster-dir", str(lab.dir)],
            timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "locked: 4 node(s)" in r.stdout, r.stdout
        assert _strangers_refused(lab) == {f"node{i}": b"-NOAUTH" for i in range(1, 5)}

        st = lab.status()  # read as the admin of the lab's auth.conf
        assert (st.cluster["state"], st.cluster["primaries"], st.cluster["replicas"]) == ("ok", 2, 2), st.cluster

        lab.restart("node4")  # a replica: resyncs with the masterauth of the included auth.conf
        _until(lambda: _link(lab, "node4") == "up")

        grow = scale_lab(lab, 3)  # 2+1 -> 3+1: node5 and node6 join as hosts, locked from their start
        assert grow.added == ("node5", "node6"), grow
        assert _strangers_refused(lab) == {f"node{i}": b"-NOAUTH" for i in range(1, 7)}
        _until(lambda: _link(lab, "node6") == "up")
        st = lab.status()
        assert (st.cluster["state"], st.cluster["primaries"], st.cluster["replicas"]) == ("ok", 3, 3), st.cluster

        url = lab.url.replace("redis://", f"redis://cogs-proxy:{PROXY_PW}@")
        r = lab.exec("mb1", [sys.executable, "-c", PROXY], env={"COGS_URL": url}, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "5"
