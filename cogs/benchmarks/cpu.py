"""CPU accounting for benches: the CPU seconds every process of a run used, so that a
rate can be checked against what this machine's cores can physically do.

A rate of ``items / wall`` needs ``cpu_per_item * items`` CPU seconds; no set of
processes on ``cores`` CPUs can spend more than ``cores * wall`` of them. A run
whose processes (NF processes, the coordinator's nodes on this host, the bench
itself) used more was not timed right, and fails (:class:`ImpossibleRate`) instead
of being reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from cogs.errors import CogsError

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ImpossibleRate(CogsError):
    """A bench measured more CPU seconds than its wall time allows on this machine."""


def proc_cpu(pid: int) -> float | None:
    """CPU seconds process ``pid`` has used; None if it is gone.

    The scheduler's per-thread run time (``/proc/PID/task/*/schedstat``, nanoseconds)
    where the kernel keeps it, else user + system from ``/proc/PID/stat`` (clock ticks,
    10 ms here: too coarse for a coordinator node doing a thousand ops in a second)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            return None
    except (OSError, ValueError, IndexError):
        pass
    return _stat_cpu(pid)


def _stat_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def affinity_cores(pids: Iterable[int]) -> int:
    """CPUs the given processes (and this one) may run on, together: the physical bound."""
    cpus: set[int] = set()
    for pid in [0, *pids]:
        try:
            cpus |= os.sched_getaffinity(pid)
        except (OSError, AttributeError):
            continue
    return len(cpus) or os.cpu_count() or 1


def node_cpu(addr: str, **kw: Any) -> float:
    """CPU seconds a Redis node reports (INFO cpu): for nodes on other hosts."""
    host, _, port = addr.rpartition(":")
    with redis.Redis(host=host, port=int(port), socket_timeout=5, **kw) as r:
        info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class CpuSample:
    """CPU seconds per process at one moment (local: by pid; remote: by address)."""

    local: dict[int, float]
    remote: dict[str, float]


class CpuMeter:
    """The processes of a run: local ones read from /proc, Redis nodes on other hosts
    through INFO (they count toward CPU per item, not toward this machine's cores)."""

    def __init__(self, pids: Iterable[int] = (), remote: Iterable[str] = (), **redis_kw: Any) -> None:
        self.pids = {os.getpid(), *pids}
        self.remote = list(remote)
        self._kw = redis_kw

    def add(self, pids: Iterable[int]) -> None:
        self.pids.update(pids)

    @property
    def cores(self) -> int:
        return affinity_cores(self.pids)

    def sample(self) -> CpuSample:
        local = {pid: cpu for pid in self.pids if (cpu := proc_cpu(pid)) is not None}
        return CpuSample(local, {a: node_cpu(a, **self._kw) for a in self.remote})

    def used(self, before: CpuSample, after: CpuSample, pids: Iterable[int] | None = None) -> float:
        """Local CPU seconds between two samples (of ``pids`` only, if given); a process
        that exited in between counts for what it used until its last sample."""
        which = after.local.keys() & before.local.keys() if pids is None else set(pids)
        return sum(after.local.get(p, before.local.get(p, 0.0)) - before.local.get(p, 0.0) for p in which)

    def remote_used(self, before: CpuSample, after: CpuSample) -> float:
        return sum(after.remote[a] - before.remote[a] for a in after.remote)


def idle_rate(meter: CpuMeter, pids: Iterable[int], seconds: float) -> float:
    """CPU seconds per second ``pids`` use while the bench does nothing (a Redis node's
    cron, cluster bus and AOF fsync): subtracted where ops are too few to hide it."""
    import time

    before = meter.sample()
    time.sleep(seconds)
    return meter.used(before, meter.sample(), pids) / seconds


def slack(processes: int) -> float:
    """CPU seconds /proc may over-count a window by: two clock ticks per process."""
    return 2 * processes / _TICK


def check_physical(what: str, *, cpu_s: float, wall_s: float, cores: int, processes: int) -> dict[str, Any]:
    """Fail unless ``cpu_s`` CPU seconds fit in ``cores * wall_s``; else the figures the
    results keep (CPU seconds, the bound, the share of the cores used)."""
    bound = cores * wall_s
    if wall_s <= 0 or cpu_s > bound + slack(processes):
        raise ImpossibleRate(
            f"{what}: {cpu_s:.3f} CPU seconds in {wall_s:.3f} s of wall time is more than {cores} cores can do "
            f"({bound:.3f}): the timing window does not cover the work it counts"
        )
    busy = round(cpu_s / wall_s, 3)
    return {"cpu_s": round(cpu_s, 4), "wall_s": round(wall_s, 4), "cores": cores, "cores_busy": busy}


def check_rate(what: str, *, rate: float, cpu_s_per_item: float, cores: int) -> None:
    """Fail if ``rate`` items/s exceeds what ``cores`` can do at ``cpu_s_per_item`` each."""
    if cpu_s_per_item > 0 and rate > cores / cpu_s_per_item * 1.001:
        raise ImpossibleRate(
            f"{what}: {rate:,.0f}/s at {cpu_s_per_item * 1e6:.2f} us of CPU each needs "
            f"{rate * cpu_s_per_item:.2f} cores; this machine has {cores}"
        )


def local_addr(addr: str) -> bool:
    return addr.rpartition(":")[0] in LOCAL_HOSTS


def redis_pids(addrs: Iterable[str], **kw: Any) -> dict[str, int]:
    """Process ids of the Redis nodes at ``addrs`` that run on this host (a loopback
    address whose pid is not a redis-server here, e.g. a container's, is left out)."""
    out = {}
    for a in addrs:
        if not local_addr(a):
            continue
        host, _, port = a.rpartition(":")
        with redis.Redis(host=host, port=int(port), socket_timeout=5, **kw) as r:
            pid = int(r.info("server")["process_id"])
        try:
            with open(f"/proc/{pid}/comm") as f:
                ours = f.read().startswith("redis")
        except OSError:
            ours = False
        if ours:
            out[a] = pid
    return out
