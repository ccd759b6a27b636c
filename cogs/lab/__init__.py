"""The multi-host lab: coordinator nodes and middleboxes as separate hosts on one machine.

Every host (``node1..`` for the Redis nodes, ``mb1..`` for middleboxes) is a network
namespace with one interface ``eth0`` at a lab address (198.18.1.i for nodes,
198.18.2.i for middleboxes, in 198.18.0.0/16 of the benchmarking range) and no route
anywhere else. Its link is a veth pair to the lab namespace, where a switch forwards
frames with the link's one-way delay, jitter, rate and loss (see
:mod:`cogs.lab.switch`: this kernel has no ``sch_netem``). The nodes run the shared
config (cogs/redis.conf) with the deployment's command lines (cogs/deployment.py, as
compose.yaml), announce their lab addresses, and the cluster is formed by the
deployment's init command (compose's) run on node1. Needs root (CAP_NET_ADMIN and
CAP_SYS_ADMIN).

Python API (what benches and fault tests build on)::

    from cogs.lab import Lab, scale_lab

    with Lab.up("/tmp/lab", nodes=6, middleboxes=2, rtt="200us", jitter="20us", rate="1gbit") as lab:
        lab.hosts["mb1"].addr              # "198.18.2.1"; .netns, .role, .mac, .link
        lab.url                            # "redis://198.18.1.1:7000" (valid inside the lab)
        lab.exec("mb1", ["cogs", "nf", "run", "portscan", "--trace", t])  # COGS_URL set; CompletedProcess
        p = lab.popen("mb2", ["python", "my_nf.py"], stdout=subprocess.PIPE)
        lab.call("mb1", fn)                # fn() on a thread inside mb1's namespace (its sockets stay there)
        lab.netem("node1", delay="1ms", jitter="100us", loss="1%", rate="100mbit")  # node1's link, live
        lab.partition(["node1", "node4"], ["node2", "node3", "mb1"]); lab.heal()  # nftables in the hosts
        lab.freeze("node2"); lab.thaw("node2")   # SIGSTOP / SIGCONT its redis-server
        lab.kill("node3"); lab.restart("node3")  # SIGKILL; same data dir, node id and data
        lab.status()                       # LabStatus: hosts, links, counters, cluster health
        scale_lab(lab, 6)                  # 6 primaries: node hosts join, slots move (cogs lab scale)
    # leaving the block tears everything down (lab.down(), idempotent)

    lab = Lab.from_dir("/tmp/lab")         # a lab another process made (`cogs lab up --dir /tmp/lab`)
    teardown("/tmp/lab")                   # remove it whatever its state (after a crash too)

Names: namespaces ``cogs-<tag>-lab``, ``cogs-<tag>-<host>``, lab-side links
``cl<tag>n<i>``/``cl<tag>m<i>``, where ``<tag>`` is 6 hex digits of the lab dir's path:
labs in different dirs never collide. Teardown finds everything by that prefix.
"""

from __future__ import annotations

from cogs.lab.grow import scale as scale_lab
from cogs.lab.lab import Host, Lab, lab_tag, teardown
from cogs.lab.netns import LabError, LabPermissionError
from cogs.lab.status import HostStatus, LabStatus

__all__ = [
    "Host", "HostStatus", "Lab", "LabError", "LabPermissionError", "LabStatus", "lab_tag", "scale_lab", "teardown",
]
