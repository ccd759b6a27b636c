"""The faults of issue 20, injected into a lab (:class:`cogs.lab.Lab`) under load.

Each scenario marks when its fault began (``fault``) and when it was healed
(``heal``: the partition removed, the link restored, the node thawed or restarted);
recovery is measured from the heal. The load runs on ``mb1`` and ``mb2``; ``mb1``
owns the indirect values. Scenarios pick their victim among the primaries of the
moment (an earlier failover may have moved them).

1. ``minority-primary``: a primary and ``mb1`` cut from every other host until the
   primary's replica is promoted, then healed (the old primary's unreplicated
   writes are lost: default mode reports them, durable mode never acknowledged them).
2. ``host-cut``: ``mb1`` cut from every coordinator node, then healed.
3. ``discard-cut``: only ``mb1``'s pub/sub connections cut, silently (nftables drops
   their packets; connections opened meanwhile are cut too); the data path works.
4. ``loss-jitter``: 10% frame loss and 5 ms jitter on every link.
5. ``freeze-primary``: a primary SIGSTOPped, then resumed; ``kill-primary``: a primary
   killed -9, restarted once its replica took over.
6. ``cluster-restart``: every node stopped (SIGTERM: AOF written) and started again.
7. ``owner-cut``: ``mb1`` (the indirect owner) cut from the other middlebox and every
   node, long enough for its heartbeat to lapse, then healed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from cogs.lab import Lab, LabError

OWNER, READER = "mb1", "mb2"
NFT_TABLE = "cogs_faults"  # apart from the lab's own (cogs_lab), so heal() of either leaves the other


@dataclass
class Ctx:
    """What a scenario works with: the lab, its hold time, and what it records."""

    lab: Lab
    hold_s: float
    marks: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()


@dataclass(frozen=True)
class Scenario:
    name: str
    number: int  # in issue 20's list
    title: str
    inject: Callable[[Ctx], None]
    hold_s: float  # how long the fault lasts (a full run; --quick shortens it)
    quick_hold_s: float
    #: before the load starts: what the load must do differently (LoadConfig fields)
    setup: Callable[[Ctx], dict[str, Any]] | None = None


# -- the cluster as its nodes see it -------------------------------------------------------------


def node_info(lab: Lab, name: str) -> dict[str, str]:
    """INFO replication + CLUSTER INFO of one node (empty when it does not answer)."""
    port = lab.deployment.node(name).port

    def probe() -> dict[str, str]:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1) as c:
            info = {}
            for k, v in c.info("replication").items():  # redis-py parses "slave0:ip=..,port=.." into a dict
                info[str(k)] = str(v["ip"]) if isinstance(v, dict) and "ip" in v else str(v)
            raw = c.execute_command("CLUSTER", "INFO")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            for line in text.split():
                name, _, value = line.partition(":")
                if value:
                    info[name] = value
            return info

    try:
        return lab.call(name, probe)
    except (redis.RedisError, OSError):
        return {}


def nodes(lab: Lab) -> list[str]:
    return [h.name for h in lab.hosts.values() if h.role == "node"]


def primaries(lab: Lab) -> dict[str, str]:
    """Each primary -> its replica (by host name), as the primaries say."""
    by_addr = {h.addr: h.name for h in lab.hosts.values()}
    out = {}
    for n in nodes(lab):
        info = node_info(lab, n)
        if info.get("role") == "master":
            out[n] = by_addr.get(info.get("slave0", ""), "")
    return out


def healthy(lab: Lab) -> str:
    """Why the cluster is not fit for the next scenario ("" when it is): every node
    answering with cluster_state ok, and every primary's replica linked to it (durable
    writes need one)."""
    expected = lab.deployment.masters
    masters = 0
    for n in nodes(lab):
        info = node_info(lab, n)
        if info.get("cluster_state") != "ok":
            return f"{n}: cluster_state {info.get('cluster_state', 'no answer')}"
        if info.get("role") == "master":
            masters += 1
            if lab.deployment.replicas and int(info.get("connected_slaves", "0")) < 1:
                return f"{n}: a primary without a replica"
        elif info.get("master_link_status") != "up":
            return f"{n}: replica link {info.get('master_link_status', '?')}"
    return "" if masters == expected else f"{masters} primaries, expected {expected}"


def wait_healthy(lab: Lab, timeout: float = 90.0) -> float:
    """Wait until :func:`healthy`; the seconds it took."""
    t0 = time.monotonic()
    while why := healthy(lab):
        if time.monotonic() - t0 > timeout:
            raise LabError(f"the lab cluster did not become healthy within {timeout:.0f} s: {why}")
        time.sleep(0.25)
    return time.monotonic() - t0


def _victim(ctx: Ctx) -> tuple[str, str]:
    """A primary and its replica (the first primary by name)."""
    prim = primaries(ctx.lab)
    name = min(prim)
    if not prim[name]:
        raise LabError(f"{name} has no replica to promote")
    ctx.facts |= {"victim": name, "replica": prim[name]}
    return name, prim[name]


def _wait_promoted(ctx: Ctx, replica: str, timeout: float = 30.0) -> bool:
    """Until ``replica`` says it is a primary; records how long after the fault."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node_info(ctx.lab, replica).get("role") == "master":
            ctx.facts["promoted_after_s"] = round(time.monotonic() - ctx.marks["fault"], 2)
            return True
        time.sleep(0.1)
    ctx.facts["promoted_after_s"] = None
    return False


# -- the scenarios ---------------------------------------------------------------------------------


def on_victim(ctx: Ctx) -> dict[str, Any]:
    """The load goes to the victim's keys only: proxies on its side write there."""
    victim, _ = _victim(ctx)
    return {"only_node": f"{ctx.lab.hosts[victim].addr}:{ctx.lab.deployment.node(victim).port}"}


def minority_primary(ctx: Ctx) -> None:
    lab = ctx.lab
    victim, replica = ctx.facts["victim"], ctx.facts["replica"]
    side = [victim, OWNER]
    rest = [h for h in lab.hosts if h not in side]
    ctx.mark("fault")
    lab.partition(side, rest)
    try:
        _wait_promoted(ctx, replica)
        time.sleep(ctx.hold_s)
    finally:
        ctx.mark("heal")
        lab.heal()


def host_cut(ctx: Ctx) -> None:
    ctx.mark("fault")
    ctx.lab.partition([OWNER], nodes(ctx.lab))
    try:
        time.sleep(ctx.hold_s)
    finally:
        ctx.mark("heal")
        ctx.lab.heal()


def _nft(lab: Lab, host: str, rules: str) -> None:
    r = lab.exec(host, ["nft", "-f", "-"], input=rules, timeout=30)
    if r.returncode != 0:
        raise LabError(f"nftables in {host}: {r.stderr.strip()[:300]}")


def discard_cut(ctx: Ctx) -> None:
    """Drop the packets of every pub/sub connection of OWNER, in both directions, for
    the hold time: the subscriptions go silent while the data connections work. A
    subscription opened meanwhile is found (CLIENT LIST TYPE pubsub on the primaries)
    and cut too, within a fraction of a second."""
    lab = ctx.lab
    addr = lab.hosts[OWNER].addr
    prim = list(primaries(lab))
    _nft(lab, OWNER, (
        f"table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n  set subs {{ type inet_service; }}\n"
        "  chain input { type filter hook input priority -10; tcp dport @subs drop; }\n"
        "  chain output { type filter hook output priority -10; tcp sport @subs drop; }\n}\n"
    ))  # fmt: skip
    targets = [(lab.hosts[n].addr, lab.deployment.node(n).port) for n in prim]

    def subscribers() -> set[str]:
        """Local ports of OWNER's pub/sub connections, as the primaries list them."""
        ports = set()
        for host, port in targets:
            try:
                with redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1) as c:
                    clients = c.client_list(_type="pubsub")
            except (redis.RedisError, OSError):
                continue
            ports |= {c["addr"].rsplit(":", 1)[1] for c in clients if c["addr"].rsplit(":", 1)[0] == addr}
        return ports

    cut: set[str] = set()
    ctx.mark("fault")
    try:
        end = time.monotonic() + ctx.hold_s
        while time.monotonic() < end:
            new = lab.call(prim[0], subscribers) - cut
            if new:
                _nft(lab, OWNER, f"add element inet {NFT_TABLE} subs {{ {', '.join(sorted(new))} }}\n")
                cut |= new
            time.sleep(0.05)
    finally:
        ctx.mark("heal")
        _nft(lab, OWNER, f"delete table inet {NFT_TABLE}\n")
        ctx.facts["connections_cut"] = len(cut)


def loss_jitter(ctx: Ctx) -> None:
    lab = ctx.lab
    before = {h: dict(lab.state["links"][h]) for h in lab.hosts}
    ctx.mark("fault")
    try:
        for h in lab.hosts:
            lab.netem(h, loss="10%", jitter="5ms")
        time.sleep(ctx.hold_s)
    finally:
        ctx.mark("heal")
        for h, link in before.items():
            lab.netem(h, loss=link["loss"], jitter=f"{link['jitter_us']}us")


def freeze_primary(ctx: Ctx) -> None:
    victim, replica = _victim(ctx)
    ctx.mark("fault")
    ctx.lab.freeze(victim)
    try:
        time.sleep(ctx.hold_s)
    finally:
        ctx.facts["promoted"] = node_info(ctx.lab, replica).get("role") == "master"
        ctx.mark("heal")
        ctx.lab.thaw(victim)


def kill_primary(ctx: Ctx) -> None:
    victim, replica = _victim(ctx)
    ctx.mark("fault")
    ctx.lab.kill(victim)
    try:
        ctx.facts["promoted"] = _wait_promoted(ctx, replica)
        time.sleep(ctx.hold_s)
    finally:
        ctx.lab.restart(victim)
        ctx.mark("heal")


def cluster_restart(ctx: Ctx) -> None:
    """SIGTERM to every node at once (each writes its AOF), then each started again."""
    lab = ctx.lab
    pids = {n: lab.node_pid(n) for n in nodes(lab)}
    ctx.mark("fault")
    try:
        for pid in pids.values():
            if pid:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(lab.node_pid(n) for n in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        ctx.facts["stopped_after_s"] = round(time.monotonic() - ctx.marks["fault"], 2)
        time.sleep(ctx.hold_s)
    finally:
        for n in pids:
            lab.restart(n)  # kills what did not stop, starts it on its data dir
        ctx.mark("heal")


def owner_cut(ctx: Ctx) -> None:
    lab = ctx.lab
    ctx.mark("fault")
    lab.partition([OWNER], [h for h in lab.hosts if h != OWNER])
    try:
        time.sleep(ctx.hold_s)
    finally:
        ctx.mark("heal")
        lab.heal()


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("minority-primary", 1, "a primary and its proxies' host cut off until its replica is promoted",
                 minority_primary, 5.0, 2.0, on_victim),
        Scenario("host-cut", 2, "a proxy host cut from every coordinator node", host_cut, 30.0, 10.0),
        Scenario("discard-cut", 3, "only a proxy host's pub/sub connections cut", discard_cut, 20.0, 8.0),
        Scenario("loss-jitter", 4, "10% loss and 5 ms jitter on every link", loss_jitter, 60.0, 10.0),
        Scenario("freeze-primary", 5, "a primary frozen (SIGSTOP), then resumed", freeze_primary, 20.0, 8.0),
        Scenario("kill-primary", 5, "a primary killed -9, restarted once replaced", kill_primary, 2.0, 1.0),
        Scenario("cluster-restart", 6, "every node stopped and started again (AOF)", cluster_restart, 2.0, 1.0),
        Scenario("owner-cut", 7, "the indirect owner's host cut from readers and coordinator", owner_cut, 20.0, 12.0),
    )
}  # fmt: skip
