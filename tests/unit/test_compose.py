"""compose.yaml cannot run here (no Docker engine): check statically that it is the
shared deployment (cogs/deployment.py: node names, ports, command lines, init
command, the shared redis.conf) on a bridge network with the nodes announcing an
address other hosts reach. tests/integration/test_wheel.py runs its command lines."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import ACL_FILE, LocalCluster
from cogs.deployment import CONFIG_PATH, STANDARD, Deployment
from cogs.settings import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
ANNOUNCE = re.compile(r"^\$\{COGS_ANNOUNCE_IP:\?[^}]+\}$")  # required: compose stops with the message


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def _nodes() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if n not in ("init", "keeper")}


def test_services_are_the_standard_deployments_nodes() -> None:
    assert list(_nodes()) == [n.name for n in STANDARD.nodes]
    assert Deployment(masters=3, replicas=1, port=DEFAULT_PORT) == STANDARD


def test_node_command_lines_are_the_shared_ones() -> None:
    for node in STANDARD.nodes:
        svc = _nodes()[node.name]
        cmd = svc["command"]
        announce = cmd[cmd.index("--cluster-announce-ip") + 1]
        assert ANNOUNCE.match(announce), announce
        want = Deployment.node_args(node, announce_ip=announce, bind="0.0.0.0", data_dir="/data")
        assert cmd == ["redis-server", "/etc/cogs/redis.conf", *want], node.name
        assert "--protected-mode" in want  # serves other hosts
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
        assert (ROOT / mounts["/etc/cogs/redis.conf"]).resolve() == CONFIG_PATH
        assert mounts["/data"] == node.name  # a named volume per node
        assert svc["environment"]["REDIS_PORT"] == str(node.port)  # the healthcheck's port


def test_nodes_are_reachable_from_other_hosts() -> None:
    """A bridge network (not the host's), each node's client and bus ports published."""
    data = _compose()
    assert data["networks"]["cogs"]["driver"] == "bridge"
    for node in STANDARD.nodes:
        svc = _nodes()[node.name]
        assert "network_mode" not in svc
        assert svc["networks"] == ["cogs"]
        assert svc["ports"] == [f"{node.port}:{node.port}", f"{node.bus_port}:{node.bus_port}"]


def test_init_runs_the_shared_init_command_from_a_base_install() -> None:
    init = _compose()["services"]["init"]
    script = " ".join(init["command"][2:])
    assert init["command"][:2] == ["sh", "-c"]
    install, create = (" ".join(part.split()) for part in script.split("&&"))
    assert install == "pip install --quiet /src"  # no extras
    assert shlex.split(create) == STANDARD.init_argv()
    assert init["networks"] == ["cogs"]  # reaches the nodes by service name
    assert set(init["depends_on"]) == set(_nodes())
    assert all(d["condition"] == "service_healthy" for d in init["depends_on"].values())


def test_the_keeper_runs_the_shared_keeper_command_after_init() -> None:
    keeper = _compose()["services"]["keeper"]
    install, run = (" ".join(part.split()) for part in " ".join(keeper["command"][2:]).split("&&"))
    assert install == "pip install --quiet /src"
    assert shlex.split(run) == ["exec", *STANDARD.keeper_argv()]
    assert keeper["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert keeper["networks"] == ["cogs"]
    assert keeper["restart"] == "unless-stopped"


def test_launcher_uses_the_same_deployment() -> None:
    lc = LocalCluster(port=DEFAULT_PORT, masters=3, replicas=1, dir=ROOT / ".never-created")
    assert lc.deployment == STANDARD
    assert lc.ports == [n.port for n in STANDARD.nodes]
    out = CliRunner().invoke(main, ["cluster", "up", "--help"]).output
    assert re.search(rf"--port INTEGER\s+First node's port \(default: what --dir's cluster was\s+started with, else {DEFAULT_PORT}\)", out)
    assert re.search(r"--masters INTEGER\s+Number of primaries.\s+\[default: 3\]", out)


def test_loopback_nodes_keep_protected_mode() -> None:
    node = STANDARD.nodes[0]
    args = Deployment.node_args(node, announce_ip="127.0.0.1", bind="127.0.0.1", data_dir="/d")
    assert "--protected-mode" not in args
    assert args[args.index("--cluster-announce-bus-port") + 1] == str(node.port + 10000)


def test_shared_config_enables_cluster_and_aof() -> None:
    conf = dict(
        line.split(None, 1)
        for line in CONFIG_PATH.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["cluster-enabled"] == "yes"
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    assert "port" not in conf  # per-node settings come from each launcher's command line
    assert conf["aclfile"] == ACL_FILE  # relative: in each node's --dir


def test_compose_creates_the_aclfile_in_the_node_dir() -> None:
    """Redis refuses to start when its aclfile is missing: compose touches it in the
    data dir before the image's entrypoint runs the node (the launcher: start_node)."""
    for name, svc in _nodes().items():
        cmd = svc["command"]
        data_dir = cmd[cmd.index("--dir") + 1]
        entry = svc["entrypoint"]
        assert entry[:2] == ["sh", "-c"], name
        assert entry[2].startswith(f"touch {data_dir}/{ACL_FILE} && exec docker-entrypoint.sh "), name
        assert entry[2].endswith('"$$@"'), name  # the command's args, intact
        assert entry[3] == "--", name
