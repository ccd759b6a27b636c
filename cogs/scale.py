"""Grow or shrink a running coordinator: ``cogs cluster scale --masters M --replicas R``
(the local launcher) and ``cogs lab scale`` (the lab), while proxies keep working.

The deployment's nodes are numbered (cogs/deployment.py: ``node<i>`` on port
``port + i - 1``); a deployment of M primaries with R replicas each is its first
M x (1 + R) nodes. Scaling to it:

1. starts the nodes it lacks (the shared config; the launcher's ``Hosts``) with the
   ACL users of a running node as their aclfile (a locked cluster's default password
   too: a new node never opens its port unlocked), sets its ``masteruser``/
   ``masterauth`` on them and has them meet the cluster;
2. loads the function libraries of a running primary (``FUNCTION DUMP`` /
   ``RESTORE``: every library, as loaded) on each new primary **before** it gets a slot;
3. moves slots (cogs/reshard.py) so the M primaries hold 16384/M each: nodes leaving
   give all of theirs;
4. points replicas at their primaries (R each), then has every remaining node
   ``CLUSTER FORGET`` the nodes leaving, and stops those;
5. waits until every node agrees on the slot map.

Primaries are kept where they are (the lowest-numbered first); new primaries are the
lowest-numbered new nodes. A replica that must become a primary (e.g. 3+3 -> 6+0) is
taken out and added back empty. A run cut off half way is finished by running it
again: slots left half moved are moved on first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

from cogs.deployment import Deployment
from cogs.errors import ClusterError
from cogs.keys import SLOTS
from cogs.reshard import Addr, Admin, Member, Mover, plan, ranges, wait

Progress = Callable[[str], None]
MAX_NODES = 250


def _quiet(_: str) -> None:
    pass


class Hosts(Protocol):
    """Where a launcher runs node ``i`` (0-based) of its deployment."""

    def addr(self, i: int) -> Addr:
        """The address node ``i`` announces (its clients and other nodes use it)."""
        ...

    def start(self, i: int, acl: str) -> None:
        """Start node ``i`` empty (no data, no cluster config) with ``acl`` as its aclfile
        (``ACL LIST`` lines: its users from the start) and wait until it answers (NOAUTH
        is an answer)."""
        ...

    def remove(self, i: int) -> None:
        """Stop node ``i`` and delete its data (and whatever the launcher made for it)."""
        ...


@dataclass(frozen=True)
class ScaleReport:
    before: tuple[int, int]  # primaries, nodes
    after: tuple[int, int]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    slots_moved: int
    keys_moved: int
    seconds: float


class Scaler:
    def __init__(self, hosts: Hosts, admin: Admin, *, progress: Progress = _quiet, timeout: float = 60.0) -> None:
        self.hosts, self.admin, self.progress, self.timeout = hosts, admin, progress, timeout
        self.mover = Mover(admin, progress=progress)

    # -- reading the cluster -------------------------------------------------------------

    def _index(self, members: Sequence[Member]) -> dict[int, Member]:
        where = {self.hosts.addr(i): i for i in range(MAX_NODES)}
        out = {}
        for m in members:
            if m.addr not in where:
                raise ClusterError(f"node {m.name} ({m.id[:8]}) is not one of this deployment's nodes")
            out[where[m.addr]] = m
        return out

    def _members(self, at: Addr) -> dict[int, Member]:
        try:
            nodes = self._index(self.admin.members(at))
        except (redis.RedisError, OSError) as e:
            raise ClusterError(f"reading the cluster at {at[0]}:{at[1]}: {e}") from e
        self.mover.names.update({m.id: f"node{i + 1}" for i, m in nodes.items()})
        return nodes

    def _n(self, m: Member) -> str:
        return self.mover.name(m)

    def _check_healthy(self, nodes: dict[int, Member]) -> None:
        bad = [m.name for m in nodes.values() if m.failed]
        if bad:
            raise ClusterError(f"node(s) {', '.join(bad)} are failing or unreachable: fix the cluster before scaling")
        owned = sum(len(m.slots) for m in nodes.values() if m.primary)
        if owned != SLOTS:
            raise ClusterError(f"the cluster serves {owned} of {SLOTS} slots: fix it before scaling")

    # -- the whole operation -------------------------------------------------------------

    def scale(self, target: Deployment, seed: int = 0) -> ScaleReport:
        t0 = time.monotonic()
        nodes = self._members(self.hosts.addr(seed))
        self._finish_open_slots(nodes)
        nodes = self._members(self.hosts.addr(seed))
        self._check_healthy(nodes)
        before = (sum(1 for m in nodes.values() if m.primary and m.slots), len(nodes))
        keep = sorted(i for i in nodes if i < target.size)
        leaving = sorted(i for i in nodes if i >= target.size)
        if not keep:
            raise ClusterError("scaling would remove every node that holds the cluster (node1 must stay)")
        primaries = [i for i in keep if nodes[i].primary]
        tp = primaries[: target.masters]
        demote = primaries[target.masters :]
        new = [i for i in range(target.size) if i not in nodes]
        short = target.masters - len(tp)
        tp += new[:short]
        short -= len(new[:short])
        recycle: list[int] = []
        if short > 0:  # replicas must become primaries: out and back in, empty
            recycle = sorted((i for i in keep if not nodes[i].primary), reverse=True)[:short]
            tp += sorted(recycle)
        self.progress(
            f"scaling {before[0]} primaries / {before[1]} nodes to {target.masters} primaries x "
            f"{target.replicas} replica(s) ({target.size} nodes)"
        )
        if recycle:
            self._remove([nodes[i] for i in recycle], [nodes[i] for i in keep if i not in recycle], recycle)
            for i in recycle:
                del nodes[i]
            new = sorted([*new, *recycle])
        self._add(new, nodes, seed)
        nodes = self._members(self.hosts.addr(seed))
        self._copy_library([nodes[i] for i in tp if not nodes[i].slots], [m for m in nodes.values() if m.slots])
        for i in leaving + demote:  # emptied, they stay primaries (no full sync from a new owner)
            self._config(nodes[i], "cluster-allow-replica-migration", "no")
        self._reshard(nodes, tp)
        nodes = self._members(self.hosts.addr(seed))
        self._attach(nodes, tp, [i for i in range(target.size) if i not in tp], target.replicas)
        if leaving:
            self._remove([nodes[i] for i in leaving], [nodes[i] for i in range(target.size)], leaving)
        self._settle(target.size, seed)
        self.progress(f"cluster ok: {target.masters} primaries, {target.size} nodes")
        return ScaleReport(
            before=before, after=(target.masters, target.size),
            added=tuple(f"node{i + 1}" for i in new), removed=tuple(f"node{i + 1}" for i in leaving),
            slots_moved=self.mover.stats.slots, keys_moved=self.mover.stats.keys, seconds=time.monotonic() - t0,
        )  # fmt: skip

    # -- steps ---------------------------------------------------------------------------

    def _add(self, new: Sequence[int], nodes: dict[int, Member], seed: int) -> None:
        if not new:
            return
        donor = self.hosts.addr(seed)
        acl = _acl_file(self.admin(donor))
        cfg = _replication_auth(self.admin(donor))
        for i in new:
            self.hosts.start(i, acl)
            c = self.admin(self.hosts.addr(i))  # the admin's credentials work at once: same users
            for k, v in cfg.items():  # also when the launcher's config does not carry them
                c.config_set(k, v)
        names = ", ".join(f"node{i + 1}" for i in new)
        users = acl.count("\n")
        locked = " (locked: the default user's password)" if _locked(acl) else ""
        self.progress(f"started {names} with {users} ACL user(s){locked}")
        ip, port = donor
        for i in new:
            self.admin(self.hosts.addr(i)).execute_command("CLUSTER", "MEET", _ipv4(ip), port)
        total = len(nodes) + len(new)
        addrs = [self.hosts.addr(i) for i in [*nodes, *new]]
        wait(f"{names} to join the cluster", lambda: all(_known(self.admin(a)) >= total for a in addrs), self.timeout)
        # a node that just joined serves nothing (CLUSTERDOWN, even to MIGRATE) until it
        # has learnt the owner of every slot
        wait(f"{names} to learn the slot map", lambda: all(_ok(self.admin(a)) for a in addrs), self.timeout)
        self.progress(f"{names} joined ({total} nodes)")

    def _copy_library(self, to: Sequence[Member], sources: Sequence[Member]) -> None:
        if not to:
            return
        dump = self.admin(sources[0].addr).execute_command("FUNCTION", "DUMP")
        libs = self.admin(sources[0].addr).execute_command("FUNCTION", "LIST")
        if not libs:
            self.progress("no function library on the cluster to copy (load one with `cogs catalog load`)")
            return
        for m in to:
            self.admin(m.addr).execute_command("FUNCTION", "RESTORE", dump, "REPLACE")
        self.progress(f"function libraries ({len(libs)}) loaded on {', '.join(map(self._n, to))} before any slot")

    def _reshard(self, nodes: dict[int, Member], tp: Sequence[int]) -> None:
        by_id = {m.id: m for m in nodes.values()}
        owners = {m.id: m.slots for m in nodes.values() if m.primary}
        moves = plan(owners, [nodes[i].id for i in tp])
        if not moves:
            self.progress("slots already spread evenly")
            return
        total = sum(len(s) for _, _, s in moves)
        self.progress(f"moving {total} slots in {len(moves)} move(s)")
        primaries = [m for m in nodes.values() if m.primary]
        for src, dst, slots in moves:
            s, d = by_id[src], by_id[dst]
            self.progress(f"moving slots {ranges(slots)} ({len(slots)}) {self._n(s)} -> {self._n(d)}")
            self.mover.move(s, d, slots, [m for m in primaries if m.id not in (src, dst)])

    def _attach(self, nodes: dict[int, Member], tp: Sequence[int], others: Sequence[int], per: int) -> None:
        """Each target primary gets ``per`` replicas; replicas stay with theirs where they can."""
        count = {nodes[i].id: 0 for i in tp}
        assign: dict[int, str] = {}
        rest = []
        for i in others:
            m = nodes[i]
            if not m.primary and m.master in count and count[m.master] < per:
                assign[i] = m.master
                count[m.master] += 1
            else:
                rest.append(i)
        for i in rest:
            to = min(count, key=lambda k: (count[k], k))
            assign[i] = to
            count[to] += 1
        by_id = {m.id: m for m in nodes.values()}
        for i, mid in sorted(assign.items()):
            m = nodes[i]
            if m.master == mid and not m.primary:
                continue
            c = self.admin(m.addr)
            wait(f"{m.name} to know {by_id[mid].name}", _knows(c, mid), self.timeout)
            c.execute_command("CLUSTER", "REPLICATE", mid)
            self.progress(f"{self._n(m)} replicates {self._n(by_id[mid])}")

    def _remove(self, gone: Sequence[Member], stay: Sequence[Member], idx: Sequence[int]) -> None:
        for m in stay:
            p = self.admin(m.addr).pipeline(transaction=False)
            for g in gone:
                p.execute_command("CLUSTER", "FORGET", g.id)
            for g, r in zip(gone, p.execute(raise_on_error=False), strict=True):
                if isinstance(r, Exception) and "Unknown node" not in str(r):
                    raise ClusterError(f"{m.name} would not forget {g.name}: {r}")
        for g, i in zip(gone, idx, strict=True):
            self.admin.drop(g.addr)
            self.hosts.remove(i)
        self.progress(f"removed {', '.join(map(self._n, gone))} (forgotten by {len(stay)} node(s))")

    def _settle(self, size: int, seed: int) -> None:
        addrs = [self.hosts.addr(i) for i in range(size)]

        def agreed() -> bool:
            views = set()
            for a in addrs:
                ms = self.admin.members(a)
                if len(ms) != size or any(m.failed for m in ms):
                    return False
                views.add(frozenset((m.id, m.slots) for m in ms if m.primary and m.slots))
                if _info(self.admin(a)).get("cluster_state") != "ok":
                    return False
            return len(views) == 1

        wait("every node to agree on the slot map", agreed, self.timeout)

        def synced() -> bool:
            for a in addrs:
                rep = self.admin(a).info("replication")
                if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                    return False
            return True

        wait("replicas to sync", synced, self.timeout)

    def _finish_open_slots(self, nodes: dict[int, Member]) -> None:
        """Slots an earlier run left half moved: move them on (each node shows its own)."""
        by_id = {m.id: m for m in nodes.values()}
        for m in nodes.values():
            mine = self.admin.members(m.addr)
            me = next((x for x in mine if x.addr == m.addr), None)
            if me is None:
                continue
            for s, dst in sorted(me.migrating.items()):
                self.progress(f"slot {s} was left half moved {self._n(m)} -> {self._n(by_id[dst])}: moving it on")
                self.mover.resume(me, by_id[dst], s)
            for s, src in sorted(me.importing.items()):
                owner = next((x for x in nodes.values() if s in x.slots), None)
                if owner is not None and owner.id == src and not self._migrating(owner, s):
                    self.admin(m.addr).execute_command("CLUSTER", "SETSLOT", s, "STABLE")
                    self.progress(f"slot {s}: import into {self._n(m)} that never started, cleared")

    def _migrating(self, m: Member, s: int) -> bool:
        me = next((x for x in self.admin.members(m.addr) if x.addr == m.addr), None)
        return me is not None and s in me.migrating

    def _config(self, m: Member, key: str, value: str) -> None:
        self.admin(m.addr).config_set(key, value)


def _knows(c: redis.Redis, node_id: str) -> Callable[[], bool]:
    def test() -> bool:
        raw = c.execute_command("CLUSTER", "NODES")
        return node_id in (raw.decode() if isinstance(raw, bytes) else str(raw))

    return test


def _info(c: redis.Redis) -> dict[str, str]:
    raw = c.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _ok(c: redis.Redis) -> bool:
    info = _info(c)
    return info.get("cluster_state") == "ok" and int(info.get("cluster_slots_assigned", 0)) == SLOTS


def _known(c: redis.Redis) -> int:
    return int(_info(c)["cluster_known_nodes"])


def _ipv4(host: str) -> str:
    import socket

    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError as e:
        raise ClusterError(f"cannot resolve node {host!r}: {e}") from e


def acl_tokens(line: str) -> list[str]:
    """The words of an ``ACL LIST`` line, a selector ``(...)`` as one word."""
    out: list[str] = []
    depth = 0
    for w in line.split():
        if depth:
            out[-1] += " " + w
        else:
            out.append(w)
        depth += w.count("(") - w.count(")")
    return out


def _acl_file(c: redis.Redis) -> str:
    """An aclfile recreating every user of a node exactly: ``ACL LIST``'s lines are the
    aclfile's format (passwords as their hashes)."""
    lines = [_str(raw) for raw in c.execute_command("ACL", "LIST")]
    return "".join(f"{line}\n" for line in lines if line.startswith("user "))


def _locked(acl: str) -> bool:
    """The default user of this aclfile needs a password (``nopass`` absent)."""
    default = next((line for line in acl.splitlines() if acl_tokens(line)[1:2] == ["default"]), "")
    return bool(default) and "nopass" not in acl_tokens(default)


def _replication_auth(c: redis.Redis) -> dict[str, str]:
    """What a replica needs to authenticate to its primary, if the deployment set it."""
    got = c.config_get("masteruser")
    got.update(c.config_get("masterauth"))
    return {_str(k): _str(v) for k, v in got.items() if v}


def _str(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
