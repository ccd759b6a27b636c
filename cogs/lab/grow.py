"""``cogs lab scale``: coordinator hosts join or leave a running lab while the cluster
is grown or shrunk (cogs/scale.py) under load.

A new node ``node<i>`` is a host like those ``up`` made: its own namespace, a veth to
the lab namespace (the switch takes it as a new port, with node1's link parameters),
address 198.18.1.i, its name in every host's ``/etc/hosts``, redis-server with the
shared config announcing its lab address. A node that leaves is stopped, its port
taken off the switch, its namespace (and link) deleted, its data removed. The
cluster work runs on a thread inside node1's namespace, where every lab address
is reachable.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cogs.cluster import redis_server, write_acl
from cogs.deployment import Deployment
from cogs.errors import ClusterError, ConfigError
from cogs.lab import netns
from cogs.lab.netns import LabError

if TYPE_CHECKING:
    from cogs.lab.lab import Host, Lab
    from cogs.scale import ScaleReport

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class LabHosts:
    """Where cogs/scale.py finds, starts and removes a lab's coordinator nodes."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def addr(self, i: int) -> tuple[str, int]:
        return (f"198.18.1.{i + 1}", self.lab.deployment.port + i)

    def start(self, i: int, acl: str) -> None:
        lab = self.lab
        name = f"node{i + 1}"
        if name in lab.hosts:  # one a run cut off left behind
            self.remove(i)
        from cogs.lab.lab import wire

        h = _plan(lab, i)
        link = dict(lab.state["links"].get("node1") or next(iter(lab.state["links"].values())))
        netns.ip(lab.lab_netns, "link", "del", h.link, what=f"stale link of {h.name}", check=False)
        netns.add_namespace(h.netns)
        lab.hosts[name] = h
        lab.state["hosts"][name] = asdict(h)
        lab.state["links"][name] = link
        lab._save()
        wire(lab.lab_netns, h)
        lab.switch({"op": "add", "port": {"name": h.name, "ifname": h.link, "mac": h.mac, **link}})
        _write_hosts(lab)
        shutil.rmtree(lab.dir / name, ignore_errors=True)
        write_acl(lab.dir / name, acl)
        lab._start_node(lab.deployment.node_at(i), redis_server())

    def remove(self, i: int) -> None:
        lab = self.lab
        name = f"node{i + 1}"
        h = lab.hosts.get(name)
        if h is None:
            return
        netns.kill_all_in([h.netns])
        try:
            lab.switch({"op": "remove", "port": name})
        except LabError as e:
            if "KeyError" not in str(e):  # not a port (a cut-off run): nothing to take off
                raise
        # deleting one end of a veth deletes both now; a namespace's own teardown (and
        # with it its links) finishes later, in the kernel's time
        netns.ip(lab.lab_netns, "link", "del", h.link, what=f"link of {h.name}", check=False)
        netns.delete_namespace(h.netns)
        del lab.hosts[name]
        for part in ("hosts", "links", "blocked"):
            lab.state[part].pop(name, None)
        lab._save()
        _write_hosts(lab)
        shutil.rmtree(lab.dir / name, ignore_errors=True)


def _plan(lab: Lab, i: int) -> Host:
    from cogs.lab.lab import Host, lab_tag, prefix_of

    if not 0 <= i < 250:
        raise LabError("a lab has at most 250 nodes")
    n = i + 1
    return Host(
        f"node{n}", "node", f"198.18.1.{n}", f"02:c6:12:00:01:{n:02x}", prefix_of(lab.dir) + f"node{n}",
        f"cl{lab_tag(lab.dir)}n{n}",
    )  # fmt: skip


def _write_hosts(lab: Lab) -> None:
    text = "127.0.0.1 localhost\n" + "".join(f"{h.addr} {h.name}\n" for h in lab.hosts.values())
    for h in lab.hosts.values():
        netns.write_etc(h.netns, "hosts", text)  # in place: processes already running see it


def scale(
    lab: Lab, masters: int, replicas: int | None = None, *, progress: Progress = _quiet, timeout: float = 60.0
) -> ScaleReport:
    """Grow or shrink the lab's cluster to ``masters`` primaries with ``replicas`` each
    (default: as now), adding or removing node hosts."""
    from cogs.reshard import Admin
    from cogs.scale import Scaler

    try:
        target = Deployment(masters, lab.deployment.replicas if replicas is None else replicas, lab.deployment.port)
    except ConfigError as e:
        raise ClusterError(str(e)) from e
    if target.size > 250:
        raise LabError("a lab has at most 250 nodes")
    if "node1" not in lab.hosts or not lab.node_pid("node1"):
        raise LabError("node1's redis-server is not running: the lab's cluster is not up")
    if target.size > lab.deployment.size:
        _set(lab, target)  # `down` and `status` cover the new nodes from the start

    kw = lab.client_kwargs()  # a locked lab: the admin's credentials (auth.conf)

    def run() -> ScaleReport:
        admin = Admin(kw)
        try:
            return Scaler(LabHosts(lab), admin, progress=progress, timeout=timeout).scale(target)
        finally:
            admin.close()

    report: ScaleReport = lab.call("node1", run)
    _set(lab, target)
    return report


def _set(lab: Lab, d: Deployment) -> None:
    state: dict[str, Any] = lab.state
    state["masters"], state["replicas"] = d.masters, d.replicas
    lab.deployment = d
    lab._save()
