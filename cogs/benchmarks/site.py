"""Where a bench runs: on loopback (its own cluster, or ``--url``), or in the lab
(``--lab --rtt 500us``: the coordinator's 3 primaries + 3 replicas and the bench's
processes on separate hosts of an emulated LAN, cogs/lab).

In the lab, the bench's driver (calibration, read-backs, in-process parts) runs on
host ``mb1`` and worker ``i`` on host ``mb{1 + i % middleboxes}``: every process
reaches the coordinator across the switch, with the link delay the ``rtt`` gives
(a node <-> middlebox round trip). The switch is a userspace process on this
machine: its CPU counts toward the cores the physical checks allow, and the round
trip a ping measures (switch included) is recorded beside the figures.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cogs.benchmarks.common import BENCH_CATALOG, Progress, bench_cluster, coordinator_nodes
from cogs.benchmarks.cpu import CpuMeter, local_addr, redis_pids
from cogs.benchmarks.harness import BenchError

T = TypeVar("T")


@dataclass
class Site:
    """A bench's coordinator and hosts: what to connect to, which processes to meter,
    where to start workers."""

    url: str
    #: local pids of the coordinator's nodes (primaries and replicas)
    coord_pids: list[int]
    #: primaries on other machines (metered through INFO)
    remote: list[str] = field(default_factory=list)
    #: other local processes of the run (the lab's switch)
    other_pids: list[int] = field(default_factory=list)
    lab: Any = None
    middleboxes: int = 0
    info: dict[str, Any] = field(default_factory=lambda: {"kind": "loopback"})

    @property
    def name(self) -> str:
        """The results' name suffix: '' on loopback, '-lab-<rtt>' in the lab."""
        return f"-lab-{self.info['rtt']}" if self.lab is not None else ""

    def meter(self) -> CpuMeter:
        return CpuMeter([*self.coord_pids, *self.other_pids], remote=self.remote)

    def host_of(self, worker: int) -> str | None:
        return f"mb{1 + worker % self.middleboxes}" if self.lab is not None else None

    def starter(self, hosts: Mapping[Any, str] | Sequence[str] | None = None) -> Callable[[Any, Any], None] | None:
        """How to start process ``i`` of a pool inside its lab host (``hosts[i]``, default
        ``mb{1 + i % middleboxes}``; ``i`` may be a name ``hosts`` maps), or None (here)."""
        if self.lab is None:
            return None
        lab = self.lab

        def start(i: Any, proc: Any) -> None:
            lab.call(hosts[i] if hosts is not None else f"mb{1 + i % self.middleboxes}", proc.start)

        return start

    def addr(self, host: str) -> str:
        return str(self.lab.hosts[host].addr) if self.lab is not None else "127.0.0.1"

    def calibration_runner(self) -> Callable[[str, list[str]], subprocess.CompletedProcess[str]] | None:
        """In the lab: redis-benchmark runs on the node's own host against its loopback
        address (as on loopback), so the calibration measures the machine, not the LAN."""
        if self.lab is None:
            return None
        lab = self.lab
        by_addr = {h.addr: name for name, h in lab.hosts.items()}

        def run(addr: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
            host, _, _ = addr.rpartition(":")
            local = [("127.0.0.1" if a == host else a) for a in argv]
            out: subprocess.CompletedProcess[str] = lab.exec(by_addr[host], local, timeout=300)
            return out

        return run

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` where the bench's driver runs (mb1 in the lab)."""
        return fn() if self.lab is None else self.lab.call("mb1", fn)


@contextmanager
def bench_site(
    url: str | None,
    progress: Progress,
    *,
    lab_rtt: str | None = None,
    middleboxes: int = 2,
    catalog: Path = BENCH_CATALOG,
) -> Iterator[Site]:
    """The bench's site: ``url`` or a fresh local cluster, or (``lab_rtt``) a fresh lab
    with ``middleboxes`` hosts for the bench's processes, torn down afterwards."""
    if lab_rtt is None:
        with bench_cluster(url, progress, catalog=catalog) as seed:
            pids = redis_pids(coordinator_nodes(seed))
            remote = [a for a in coordinator_nodes(seed, replicas=False) if not local_addr(a)]
            yield Site(seed, list(pids.values()), remote)
        return
    if url:
        raise BenchError("--lab makes its own cluster: give either --lab or --url")
    from multiprocessing import resource_tracker

    from cogs.lab import Lab, lab_tag

    # multiprocessing's resource tracker must not start inside a lab host: the lab's
    # teardown kills every process there, and its successor then finds the semaphores
    # of the bench's worker pools unknown (a screenful of KeyError tracebacks at exit)
    resource_tracker.ensure_running()
    with tempfile.TemporaryDirectory(prefix="cogs-bench-lab-") as d:
        progress(
            f"building a lab: 6 nodes (3 primaries + 3 replicas), {middleboxes} middlebox host(s), --rtt {lab_rtt}"
        )
        with Lab.up(d, nodes=6, middleboxes=middleboxes, rtt=lab_rtt, catalog=catalog, progress=progress) as lab:
            coord = [pid for n in lab.hosts if n.startswith("node") and (pid := lab.node_pid(n))]
            switch = int(Path(d, "switch.pid").read_text()) if Path(d, "switch.pid").exists() else None
            ping = _ping(lab, "mb1", "node1")
            info = {"kind": "lab", "rtt": lab_rtt, "middleboxes": middleboxes, "nodes": 6, "ping_mb1_node1_us": ping,
                    "tag": lab_tag(Path(d)),
                    "switch": "userspace (cogs/lab/switch.py), its CPU counted with the run's"}  # fmt: skip
            progress(f"lab up: ping mb1 -> node1 median {ping['median']:.0f} us (--rtt {lab_rtt})")
            yield Site(lab.url, coord, [], [switch] if switch else [], lab, middleboxes, info)


def _ping(lab: Any, src: str, dst: str, n: int = 30) -> dict[str, Any]:
    """Round trips ping measures from ``src`` to ``dst`` (the switch's forwarding included)."""
    r = lab.exec(src, ["ping", "-n", "-c", str(n), "-i", "0.01", lab.hosts[dst].addr], timeout=60)
    us = [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    if not us:
        raise BenchError(f"ping {src} -> {dst} in the lab got no reply: {r.stderr.strip()[-300:]}")
    return {"median": round(statistics.median(us)), "min": round(min(us)), "max": round(max(us)), "n": len(us)}
