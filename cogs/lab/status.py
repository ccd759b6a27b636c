"""What ``cogs lab status`` shows: hosts, addresses, links and the cluster's health."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis

from cogs import adminauth
from cogs.deployment import Deployment
from cogs.errors import ConfigError
from cogs.lab import netns
from cogs.lab.netns import LabError

T = TypeVar("T")


class Lab(Protocol):
    """What the status reads of a lab (cogs.lab.lab.Lab), without importing it."""

    dir: Path
    deployment: Deployment

    @property
    def lab_netns(self) -> str: ...
    @property
    def hosts(self) -> Mapping[str, Any]: ...
    @property
    def url(self) -> str: ...
    @property
    def state(self) -> dict[str, Any]: ...
    def switch(self, req: dict[str, Any]) -> dict[str, Any]: ...
    def node_pid(self, node: str) -> int | None: ...
    def client_kwargs(self) -> dict[str, Any]: ...
    def call(self, host: str, fn: Callable[[], T]) -> T: ...


@dataclass(frozen=True)
class HostStatus:
    name: str
    role: str
    addr: str
    netns: str
    up: bool  # its namespace exists
    link: dict[str, Any]  # delay_us, jitter_us, loss, rate_bps (one way, each direction) + frame counters
    process: str = "-"  # nodes: running | frozen | down
    pid: int | None = None
    redis_role: str = "-"  # master | slave, as the node says
    cluster_state: str = "-"  # ok | fail | no answer
    blocked: tuple[str, ...] = ()  # addresses this host's nftables drops (partitions)


@dataclass(frozen=True)
class LabStatus:
    dir: str
    tag: str
    up: bool  # every namespace is there and the switch answers
    ready: bool  # `up` completed
    url: str
    hosts: list[HostStatus]
    switch: dict[str, Any]  # pid, uptime, queued, max_late_us, unknown_dst; {} when it does not answer
    cluster: dict[str, Any]  # state, primaries, replicas, nodes answering

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lab_status(lab: Lab) -> LabStatus:
    present = set(netns.namespaces(lab.lab_netns[: -len("lab")]))
    try:
        sw = lab.switch({"op": "stats"})
        ports = {p["name"]: p for p in sw.pop("ports")}
        sw.pop("ok", None)
    except LabError:
        sw, ports = {}, {}
    hosts = []
    for h in lab.hosts.values():
        params = lab.state["links"].get(h.name, {})
        link = {**params, **{k: v for k, v in ports.get(h.name, {}).items() if k not in ("name", "ifname", "mac")}}
        extra: dict[str, Any] = {}
        if h.role == "node" and h.netns in present:
            extra = _node(lab, h.name)
        hosts.append(
            HostStatus(
                h.name,
                h.role,
                h.addr,
                h.netns,
                h.netns in present,
                link,
                blocked=tuple(lab.state["blocked"].get(h.name, ())),
                **extra,
            )
        )
    nodes = [s for s in hosts if s.role == "node"]
    cluster = {
        "state": "ok"
        if nodes and all(s.cluster_state == "ok" for s in nodes if s.process == "running")
        else "degraded",
        "primaries": sum(s.redis_role == "master" for s in nodes),
        "replicas": sum(s.redis_role == "slave" for s in nodes),
        "answering": sum(s.cluster_state not in ("-", "no answer") for s in nodes),
        "nodes": len(nodes),
    }
    if not any(s.cluster_state == "ok" for s in nodes):
        cluster["state"] = "down"
    up = bool(sw) and lab.lab_netns in present and all(s.up for s in hosts)
    return LabStatus(str(lab.dir), lab.state["tag"], up, bool(lab.state.get("ready")), lab.url, hosts, sw, cluster)


def _node(lab: Lab, name: str) -> dict[str, Any]:
    pid = lab.node_pid(name)
    if not pid:
        return {"process": "down"}
    out: dict[str, Any] = {"pid": pid, "process": "frozen" if _stopped(pid) else "running"}
    if out["process"] == "frozen":
        return out | {"cluster_state": "no answer"}
    port = lab.deployment.node(name).port
    try:
        kw = lab.client_kwargs()
    except ConfigError as e:  # a locked lab's auth.conf unreadable: the node is up, unread
        return out | {"cluster_state": f"no answer ({e})"}

    def probe() -> tuple[str, str]:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1, **kw) as c:
            role = str(c.info("replication")["role"])
            raw = c.execute_command("CLUSTER", "INFO")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            info = dict(line.split(":", 1) for line in text.split() if ":" in line)
            return role, info.get("cluster_state", "?")

    try:
        role, state = lab.call(name, probe)
    except redis.AuthenticationError as e:  # locked: answers, but not to us
        return out | {"cluster_state": f"no answer ({adminauth.refused(adminauth.path_in(lab.dir), e)})"}
    except (redis.RedisError, OSError):
        return out | {"cluster_state": "no answer"}
    return out | {"redis_role": role, "cluster_state": state}


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] in ("T", "t")
    except (OSError, IndexError):
        return False
