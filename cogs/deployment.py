"""The coordinator deployment every launcher shares: compose.yaml, ``cogs cluster up``
(cogs/cluster.py) and the multi-host lab (cogs/lab).

Node *i* (1-based) is named ``node<i>`` (compose's service, the lab's host), serves
clients on ``port + i - 1`` and the cluster bus on that port + 10000, and runs the
shared config file (cogs/redis.conf) with :meth:`Deployment.node_args` on its
command line: its ports, its bind address, the address it announces, its data
directory. The first ``masters`` nodes are primaries, the rest replicate them in
turn (what :func:`cogs.cluster.form_cluster` does with the order of ``--node``s).
Nodes announce an address every client can reach, so a middlebox on another host
is sent (MOVED, CLUSTER SLOTS) to an address it can use:

* compose: each node in its own container on a bridge network, ports published on
  the Docker host, announcing the host's address (``COGS_ANNOUNCE_IP``);
* ``cogs cluster up``: every node on 127.0.0.1;
* the lab: every node on its own host (network namespace) and lab address.

The cluster is formed by :meth:`Deployment.init_argv` (``cogs cluster create`` with
the nodes by name), run by compose's init service and inside the lab alike.
tests/unit/test_compose.py checks compose.yaml against this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cogs.errors import ConfigError
from cogs.settings import DEFAULT_PORT

CONFIG_PATH = Path(__file__).with_name("redis.conf")
BUS_OFFSET = 10000  # Redis' own default: bus port = client port + 10000


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    primary: bool

    @property
    def bus_port(self) -> int:
        return self.port + BUS_OFFSET


@dataclass(frozen=True)
class Deployment:
    """``masters`` primaries with ``replicas`` replicas each, on ports from ``port``."""

    masters: int = 3
    replicas: int = 1
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if self.masters < 1 or self.replicas < 0:
            raise ConfigError("a deployment needs at least 1 primary and 0 or more replicas per primary")
        if not 1024 <= self.port <= 65535 - BUS_OFFSET - self.size:
            raise ConfigError(f"port {self.port} out of range (cluster bus ports are port+{BUS_OFFSET})")

    @classmethod
    def of_size(cls, nodes: int, replicas: int = 1, port: int = DEFAULT_PORT) -> Deployment:
        masters, rem = divmod(nodes, 1 + replicas)
        if rem or masters < 1:
            raise ConfigError(f"{nodes} nodes cannot make primaries with {replicas} replica(s) each")
        return cls(masters, replicas, port)

    @property
    def size(self) -> int:
        return self.masters * (1 + self.replicas)

    @property
    def nodes(self) -> list[Node]:
        return [Node(f"node{i + 1}", self.port + i, i < self.masters) for i in range(self.size)]

    def node_at(self, i: int) -> Node:
        """Node ``i`` (0-based) of this deployment's numbering, also past its size: a node
        being added or removed by ``cogs cluster scale`` (cogs/scale.py)."""
        return Node(f"node{i + 1}", self.port + i, i < self.masters)

    def node(self, name_or_port: str | int) -> Node:
        for n in self.nodes:
            if name_or_port in (n.name, n.port):
                return n
        raise ConfigError(f"no node {name_or_port!r} in this deployment ({', '.join(n.name for n in self.nodes)})")

    @staticmethod
    def node_args(node: Node, *, announce_ip: str, bind: str, data_dir: str, tls: bool = False) -> list[str]:
        """What follows the config file on the node's ``redis-server`` command line.
        ``bind`` may list several addresses (space-separated, as redis.conf's bind);
        with ``tls`` the client port serves TLS only (the bus too, per the TLS args)."""
        ports = (
            ["--port", "0", "--tls-port", str(node.port), "--cluster-announce-tls-port", str(node.port)]
            if tls
            else ["--port", str(node.port), "--cluster-announce-port", str(node.port)]
        )
        addrs = bind.split()
        # Protected mode refuses every client not on loopback while the default user has
        # no password: a node that serves other hosts turns it off, explicitly, on its
        # command line (protect it with ACL users, TLS and a private network instead).
        remote = ["--protected-mode", "no"] if any(not _loopback(a) for a in addrs) else []
        return [
            *ports, "--bind", *addrs, *remote, "--cluster-announce-ip", announce_ip,
            "--cluster-announce-bus-port", str(node.bus_port), "--dir", data_dir,
        ]  # fmt: skip

    def init_argv(self, catalog: str | None = None) -> list[str]:
        """Forms the cluster from running nodes (found by name) and loads the library."""
        argv = ["cogs", "cluster", "create", "--replicas", str(self.replicas)]
        for n in self.nodes:
            argv += ["--node", f"{n.name}:{n.port}"]
        return [*argv, "--catalog", catalog] if catalog else argv

    def keeper_argv(self) -> list[str]:
        """Counts every NF's usage for its limits (cogs/keeper.py), reaching the first node by name."""
        first = self.nodes[0]
        return ["cogs", "keeper", "--url", f"redis://{first.name}:{first.port}"]


#: compose.yaml's topology, and the lab's with ``--nodes 6``: 3 primaries + 3 replicas on 7000-7005
STANDARD = Deployment()


def _loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "-::1", "localhost")
