"""Which coordinator node serves which slot: Redis Cluster's slot map, or one node.

A standalone Redis is a topology of one node owning every slot, so the rest of cogs
never asks which kind it talks to.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

from cogs.errors import CoordinatorUnavailable
from cogs.keys import SLOTS


@dataclass(frozen=True)
class NodeInfo:
    """A primary and the slot ranges it serves (inclusive)."""

    host: str
    port: int
    node_id: str
    slots: tuple[tuple[int, int], ...]
    replicas: tuple[tuple[str, int], ...] = ()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def first_slot(self) -> int:
        return min(a for a, _ in self.slots)

    def owned_slots(self) -> list[int]:
        return [s for a, b in self.slots for s in range(a, b + 1)]


@dataclass(frozen=True)
class Topology:
    cluster: bool
    nodes: tuple[NodeInfo, ...]
    #: node index for every slot (array of 16384 unsigned shorts)
    owner: array[int] = field(repr=False)

    def node_of(self, slot: int) -> int:
        return self.owner[slot]

    @classmethod
    def standalone(cls, host: str, port: int) -> Topology:
        node = NodeInfo(host, port, "standalone", ((0, SLOTS - 1),))
        return cls(False, (node,), array("H", bytes(2 * SLOTS)))

    @classmethod
    def from_cluster_slots(cls, reply: list[Any], seed_host: str) -> Topology:
        """Build from a raw ``CLUSTER SLOTS`` reply."""
        by_id: dict[str, dict[str, Any]] = {}
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = _s(primary[0]) or seed_host
            port, node_id = int(primary[1]), _s(primary[2])
            rec = by_id.setdefault(node_id, {"host": host, "port": port, "slots": [], "replicas": set()})
            rec["slots"].append((start, end))
            for rep in entry[3:]:
                rec["replicas"].add((_s(rep[0]) or seed_host, int(rep[1])))
        nodes = tuple(
            NodeInfo(r["host"], r["port"], nid, tuple(sorted(r["slots"])), tuple(sorted(r["replicas"])))
            for nid, r in sorted(by_id.items(), key=lambda kv: min(kv[1]["slots"]))
        )
        owner = array("H", [0xFFFF]) * SLOTS
        for i, n in enumerate(nodes):
            for a, b in n.slots:
                for s in range(a, b + 1):
                    owner[s] = i
        missing = owner.count(0xFFFF)
        if missing:
            raise CoordinatorUnavailable(
                f"the cluster serves only {SLOTS - missing} of {SLOTS} slots; "
                "is it still forming or did a primary fail without a replica?"
            )
        return cls(True, nodes, owner)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
