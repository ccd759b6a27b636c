"""The bench harness every bench uses: repeats with the median as the headline, the
environment a figure was measured in, and a same-run calibration.

* **Repeats.** Every configuration runs ``repeats(quick)`` times (5, or 3 with
  ``--quick``); a headline is the median, with min, max and n beside it (:func:`stat`).
* **Environment.** Commit (and whether the tree had uncommitted changes), CPU model
  and cores, Python, Redis, event loop, placement, primaries, replicas, AOF: figures
  from two machines (or two days of one VM) can only be compared with these.
* **Calibration.** ``redis-benchmark -t incr -P 64`` on one node of the bench's own
  cluster and PING round trips from Python, sampled between the bench's repeats.
  This VM type has moved 2x within an hour; a headline divided by the same run's
  ``redis_incr_p64_per_s`` travels between runs far better than the raw figure.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis

from cogs import runtime
from cogs.benchmarks.common import Progress, noop
from cogs.coordinator.client import Coordinator
from cogs.errors import CogsError
from cogs.keys import slot
from cogs.reshard import parse_nodes
from cogs.settings import CogsSettings, load_settings

#: the key ``redis-benchmark -t incr`` increments (no -r): the node owning its slot runs it
CAL_KEY = "counter:__rand_int__"
ROOT = Path(__file__).resolve().parents[2]


class BenchError(CogsError):
    """A bench could not run or measure what it must (its message says which)."""


def repeats(quick: bool, rounds: int | None = None) -> int:
    """Runs per configuration: 5 in a full run, 3 with --quick; ``rounds`` overrides
    (the test suite's smoke runs use 1: their figures are never reported)."""
    if rounds is not None:
        if rounds < 1:
            raise BenchError(f"rounds must be at least 1 (got {rounds})")
        return rounds
    return 3 if quick else 5


def stat(xs: Sequence[float], ndigits: int | None = 0) -> dict[str, Any]:
    """The median (the headline) with min, max and n beside it."""
    if not xs:
        raise BenchError("no runs to summarize")

    def r(x: float) -> float:
        return x if ndigits is None else (round(x) if ndigits == 0 else round(x, ndigits))

    return {"median": r(statistics.median(xs)), "min": r(min(xs)), "max": r(max(xs)), "n": len(xs)}


def pct(xs: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``xs``."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


# -- environment ---------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict[str, Any]:
    """The commit this code is (and whether tracked files differ from it, results aside);
    an installed package that is no checkout says so."""
    head = _git("rev-parse", "HEAD") if (ROOT / ".git").exists() else None
    if head is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("cogs-nf")
        except PackageNotFoundError:
            v = "unknown"
        return {"commit": f"cogs-nf {v} (not a git checkout)", "dirty": None}
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return {"commit": head, "dirty": bool(changes)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def replicas_per_primary(cluster_nodes: str) -> int:
    """The fewest replicas (not failed) any primary holding slots has, from ``CLUSTER NODES``."""
    members = parse_nodes(cluster_nodes)
    count = {m.id: 0 for m in members if m.primary and m.slots and not m.failed}
    for m in members:
        if not m.primary and not m.failed and m.master in count:
            count[m.master] += 1
    return min(count.values(), default=0)


async def _cluster_facts(url: str) -> dict[str, Any]:
    async with Coordinator(url=url) as co:
        assert co.topology is not None
        topo = co.topology
        c = co.node_client(0)
        server = await c.info("server")
        try:
            aof = [(await co.node_client(i).config_get("appendonly")).get("appendonly") for i in range(len(topo.nodes))]
            appendonly: Any = aof[0] if len(set(aof)) == 1 else aof
        except redis.ResponseError:  # an ACL user without CONFIG
            appendonly = "unknown"
        return {
            "redis": server.get("redis_version"),
            "cluster": topo.cluster,
            "primaries": len(topo.nodes),
            # CLUSTER SLOTS leaves out a replica that holds no data yet (Redis 7: offset 0),
            # so a fresh cluster's replicas are counted from CLUSTER NODES
            "replicas_per_primary": replicas_per_primary(_s(await c.execute_command("CLUSTER", "NODES"))),
            "aof": appendonly,
            "coordinator_nodes": [n.addr for n in topo.nodes],
        }


def environment(url: str, placement: str | dict[str, Any] = "shared", **extra: Any) -> dict[str, Any]:
    """What a figure depends on, for the results file."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    return {
        **commit(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "event_loop": runtime.loop_name(),
        "placement": placement,
        **runtime.run(_cluster_facts, url),
        **extra,
    }


# -- calibration ---------------------------------------------------------------------------


class Calibration:
    """``redis-benchmark -t incr -P 64`` on one coordinator node and PINGs from Python,
    sampled several times over a bench run: ``incr_per_s`` is their median."""

    def __init__(self, url: str, *, quick: bool, progress: Progress = noop, run: Runner | None = None) -> None:
        """``run(addr, argv)`` runs redis-benchmark for the node at ``addr`` (the lab runs
        it on the node's own host, as loopback does; default: a subprocess here)."""
        self.settings = load_settings(url=url)
        self._run = run or _subprocess
        self.progress = progress
        self.requests = 300_000 if quick else 1_000_000
        self.pings = 1000 if quick else 2000
        self.host, self.port = runtime.run(_node_of_key, self.settings, CAL_KEY)
        self.rates: list[float] = []
        self.ping_s: list[float] = []
        self.argv, self.shown = _benchmark_argv(self.settings, self.host, self.port, self.requests)

    def sample(self) -> float:
        """One redis-benchmark run and a round of PINGs; the run's INCR/s."""
        try:
            out = self._run(f"{self.host}:{self.port}", self.argv)
        except FileNotFoundError:
            raise BenchError(
                "redis-benchmark is not installed (Debian/Ubuntu: apt install redis-tools): "
                "the benches calibrate against it"
            ) from None
        except subprocess.TimeoutExpired:
            raise BenchError(f"redis-benchmark on {self.host}:{self.port} did not finish in 300 s") from None
        rate = _parse_csv(out.stdout)
        if out.returncode != 0 or rate is None:
            why = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BenchError(f"redis-benchmark on {self.host}:{self.port} failed: {why[0]}")
        self.rates.append(rate)
        self.ping_s += runtime.run(_pings, self.settings, self.host, self.port, self.pings)
        self.progress(f"calibration: redis-benchmark INCR -P 64 {rate / 1e6:.2f}M/s on {self.host}:{self.port}")
        return rate

    @property
    def incr_per_s(self) -> float:
        if not self.rates:
            self.sample()
        return statistics.median(self.rates)

    def ratio(self, x: float) -> float:
        """``x`` as a share of this run's redis-benchmark INCR rate (3 significant digits)."""
        return float(f"{x / self.incr_per_s:.3g}")

    def result(self) -> dict[str, Any]:
        return {
            "command": self.shown,
            "node": f"{self.host}:{self.port}",
            "redis_incr_p64_per_s": stat(self.rates),
            "ping_us": {"p50": round(pct(self.ping_s, 50) * 1e6, 1), "p99": round(pct(self.ping_s, 99) * 1e6, 1),
                        "n": len(self.ping_s)},
        }  # fmt: skip

    def headline(self) -> dict[str, Any]:
        """What every summary carries: the calibration's medians."""
        return {
            "redis_incr_p64_per_s": round(self.incr_per_s),
            "ping_p50_us": round(pct(self.ping_s, 50) * 1e6, 1),
            "ping_p99_us": round(pct(self.ping_s, 99) * 1e6, 1),
        }


Runner = Callable[[str, list[str]], "subprocess.CompletedProcess[str]"]


def _subprocess(addr: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


async def _node_of_key(settings: CogsSettings, key: str) -> tuple[str, int]:
    async with Coordinator(settings) as co:
        assert co.topology is not None
        node = co.topology.nodes[co.topology.node_of(slot(key))]
        return node.host, node.port


async def _pings(settings: CogsSettings, host: str, port: int, n: int) -> list[float]:
    kw = settings.connection_kwargs()
    tls = settings.url.startswith("rediss://")
    c = aioredis.Redis(host=host, port=port, ssl=tls, **kw)
    try:
        await c.ping()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await c.ping()
            out.append(time.perf_counter() - t)
        return out
    finally:
        await c.aclose()


def _benchmark_argv(settings: CogsSettings, host: str, port: int, n: int) -> tuple[list[str], str]:
    """redis-benchmark's command line, and the same with the password hidden."""
    argv = ["redis-benchmark", "-h", host, "-p", str(port), "-t", "incr", "-P", "64", "-n", str(n), "--csv"]
    parts = urlsplit(settings.url)
    kw = settings.connection_kwargs()  # COGS_USERNAME/COGS_PASSWORD, or a locked cluster's COGS_AUTH_FILE
    user = unquote(parts.username) if parts.username else kw.get("username")
    password = unquote(parts.password) if parts.password else kw.get("password")
    secret: list[str] = []
    if password:
        secret = ["-a", password]
        if user and user != "default":
            argv += ["--user", user]
    if settings.url.startswith("rediss://"):
        argv.append("--tls")
        for flag, f in (("--cacert", settings.tls_ca_file), ("--cert", settings.tls_cert_file),
                        ("--key", settings.tls_key_file)):  # fmt: skip
            if f:
                argv += [flag, str(f)]
    shown = " ".join(argv + (["-a", "***"] if secret else []))
    return argv + secret, shown


def _parse_csv(out: str) -> float | None:
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) > 1 and cells[0] == "INCR":
            try:
                return float(cells[1])
            except ValueError:
                return None
    return None
