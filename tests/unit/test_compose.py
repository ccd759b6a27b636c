"""compose.yaml cannot run here (no Docker engine): check statically that it starts the
same cluster as the local launcher, from the same Redis config file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import ACL_FILE, CONFIG_PATH, LocalCluster
from cogs.settings import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def _redis_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if n.startswith("redis-")}


def test_nodes_use_the_launchers_config_file() -> None:
    for name, svc in _redis_services().items():
        conf_arg = svc["command"][1]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
        assert (ROOT / mounts[conf_arg]).resolve() == CONFIG_PATH, name


def test_ports_match_the_launcher_with_one_replica_each() -> None:
    launcher = LocalCluster(port=DEFAULT_PORT, masters=3, replicas=1, dir=ROOT / ".never-created")
    ports = []
    for name, svc in _redis_services().items():
        cmd = svc["command"]
        port = int(cmd[cmd.index("--port") + 1])
        assert name == f"redis-{port}"
        assert svc["environment"]["REDIS_PORT"] == str(port)
        ports.append(port)
    assert sorted(ports) == launcher.ports


def test_init_forms_the_same_cluster() -> None:
    init = _compose()["services"]["init"]
    cmd = " ".join(init["command"])
    nodes = [int(p) for p in re.findall(r"--node 127\.0\.0\.1:(\d+)", cmd)]
    launcher = LocalCluster(port=DEFAULT_PORT, masters=3, replicas=1, dir=ROOT / ".never-created")
    assert nodes == launcher.ports  # primaries first, then replicas, as form_cluster expects
    assert "--replicas 1" in cmd
    assert set(init["depends_on"]) == set(_redis_services())


def test_launcher_defaults_are_the_compose_ports() -> None:
    out = CliRunner().invoke(main, ["cluster", "up", "--help"]).output
    assert re.search(rf"--port INTEGER\s+First node's port.\s+\[default: {DEFAULT_PORT}\]", out)
    assert re.search(r"--masters INTEGER\s+Number of primaries.\s+\[default: 3\]", out)


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


def test_both_launchers_create_the_aclfile_in_the_node_dir() -> None:
    """Redis refuses to start when its aclfile is missing: compose touches it in the
    data dir before the image's entrypoint runs the node (the launcher: start_node)."""
    for name, svc in _redis_services().items():
        cmd = svc["command"]
        data_dir = cmd[cmd.index("--dir") + 1]
        entry = svc["entrypoint"]
        assert entry[:2] == ["sh", "-c"], name
        assert entry[2].startswith(f"touch {data_dir}/{ACL_FILE} && exec docker-entrypoint.sh "), name
        assert entry[2].endswith('"$$@"'), name  # the command's args, intact
        assert entry[3] == "--", name
