"""A bench in the lab (`cogs bench coordinator --lab`): the coordinator's 3+3 nodes and
each simulated proxy on hosts of their own, every count still read back exactly, the
calibration run on a node's own host, the round trip the links add recorded beside the
figures, and nothing left behind. Needs root (CI runs as root); only lab addresses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cogs.lab.netns import missing_privileges

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_privileges()), reason="the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"),
]


def test_coordinator_bench_in_the_lab(tmp_path: Path) -> None:
    from cogs.benchmarks.coordinator import main as coordinator_main

    out = tmp_path / "coordinator-lab.json"
    data = coordinator_main(quick=True, rounds=1, lab_rtt="500us", out=out)
    env, s = data["environment"], data["summary"]
    place = env["placement"]
    assert place["kind"] == "lab"
    assert place["rtt"] == "500us"
    assert place["ping_mb1_node1_us"]["min"] >= 500  # the links add the round trip (and the switch its own)
    assert env["primaries"] == 3
    assert env["replicas_per_primary"] == 1
    assert env["proxy_processes_net_namespaces"] == 2  # each simulated proxy on a host of its own
    assert all(n.startswith("198.18.") for n in env["coordinator_nodes"])
    assert data["calibration"]["node"].startswith("198.18.1.")
    assert s["read_back_exact"] is True
    assert s["physically_possible"] is True
    assert s["applied_ops_per_s"]["median"] > 0
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(s))
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"cogs-{place['tag']}-" not in left  # the bench's lab is gone
