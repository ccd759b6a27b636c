"""The bench harness without a bench: medians, CPU accounting and its physical checks,
the start barrier of the worker pool, redis-benchmark's command line and output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cogs.benchmarks.common import RESULTS_DIR, results_path
from cogs.benchmarks.cpu import CpuMeter, CpuSample, ImpossibleRate, check_physical, check_rate, proc_cpu
from cogs.benchmarks.harness import BenchError, _benchmark_argv, _parse_csv, commit, pct, repeats, stat
from cogs.benchmarks.workers import Gate, Round, Workers, account
from cogs.settings import load_settings


def test_stat_is_the_median_with_its_spread() -> None:
    assert stat([5.0, 1.0, 3.0, 100.0, 2.0]) == {"median": 3, "min": 1, "max": 100, "n": 5}
    assert stat([1.0, 2.0], 2) == {"median": 1.5, "min": 1.0, "max": 2.0, "n": 2}
    assert pct([float(x) for x in range(100)], 99) == 99.0
    with pytest.raises(BenchError, match="no runs"):
        stat([])
    assert (repeats(False), repeats(True), repeats(True, 1)) == (5, 3, 1)
    with pytest.raises(BenchError, match="at least 1"):
        repeats(False, 0)


def test_physical_checks_refuse_more_cpu_than_cores() -> None:
    ok = check_physical("x", cpu_s=3.9, wall_s=2.0, cores=2, processes=4)
    assert ok["cores_busy"] == pytest.approx(1.95)
    with pytest.raises(ImpossibleRate, match=r"7\.200 CPU seconds in 2\.000 s .* 2 cores"):
        check_physical("the 4-box portscan run", cpu_s=7.2, wall_s=2.0, cores=2, processes=4)
    check_rate("x", rate=1e6, cpu_s_per_item=1.9e-6, cores=2)
    with pytest.raises(ImpossibleRate, match=r"needs 3\.60 cores; this machine has 2"):
        check_rate("scaling", rate=1e6, cpu_s_per_item=3.6e-6, cores=2)


def test_account_fails_a_round_whose_workers_used_more_cpu_than_its_wall_time() -> None:
    me = os.getpid()
    meter = CpuMeter()
    rnd = Round(
        [{"cpu_s": 3.0, "t_start": 0.0, "t_end": 0.5}, {"cpu_s": 3.0, "t_start": 0.0, "t_end": 0.5}],
        wall_s=0.5, window_s=0.5, start_spread_s=0.0,
        before=CpuSample({me: 1.0}, {}), after=CpuSample({me: 1.2}, {}),
    )  # fmt: skip
    with pytest.raises(ImpossibleRate, match="boxes"):
        account("boxes", rnd, meter, 1000)
    rnd.results = [{"cpu_s": 0.2, "t_start": 0.0, "t_end": 0.5}]
    acc = account("boxes", rnd, meter, 1000)
    assert acc["cpu_us_per_item"]["workers"] == pytest.approx(200.0)
    assert acc["cpu_s"]["all_local"] == pytest.approx(0.2)


def test_proc_cpu_reads_a_process_cpu_precisely() -> None:
    me = os.getpid()
    c0, p0 = proc_cpu(me), time.process_time()
    x = 0
    for i in range(2_000_000):
        x += i
    c1, p1 = proc_cpu(me), time.process_time()
    assert c0 is not None
    assert c1 is not None
    assert c1 - c0 == pytest.approx(p1 - p0, abs=0.02)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert proc_cpu(child.pid) is None  # gone (and reaped): no figure, no error
    meter = CpuMeter([child.pid])
    a = meter.sample()
    assert child.pid not in a.local
    assert meter.used(a, meter.sample(), [me]) >= 0


def test_redis_benchmark_command_line_and_output() -> None:
    argv, shown = _benchmark_argv(load_settings(url="redis://u:s3cret@10.0.0.1:7000"), "10.0.0.1", 7000, 1000)
    assert argv[:12] == ["redis-benchmark", "-h", "10.0.0.1", "-p", "7000", "-t", "incr", "-P", "64", "-n", "1000",
                         "--csv"]  # fmt: skip
    assert argv[-2:] == ["-a", "s3cret"]
    assert "--user" in argv
    assert "s3cret" not in shown
    assert shown.endswith("-a ***")
    plain, shown = _benchmark_argv(load_settings(url="redis://127.0.0.1:7000"), "127.0.0.1", 7000, 10)
    assert "-a" not in plain
    assert shown == " ".join(plain)
    out = '"test","rps","avg_latency_ms"\n"INCR","781333.31","3.9"\n'
    assert _parse_csv(out) == pytest.approx(781333.31)
    assert _parse_csv("Error: MOVED 10892 127.0.0.1:22648\n") is None


def test_commit_and_results_paths() -> None:
    c = commit()
    if (Path(__file__).resolve().parents[2] / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", c["commit"])
        assert isinstance(c["dirty"], bool)
    assert results_path("design", quick=True) == RESULTS_DIR / "quick" / "design.json"
    assert results_path("design", quick=False) == RESULTS_DIR / "design.json"
    assert results_path("design", quick=True, out=Path("x.json")) == Path("x.json")


# -- the worker pool (module-level jobs: spawned workers import them) ------------------------


async def busy_job(seconds: float, gate: Gate) -> dict[str, Any]:
    await gate.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    gate.stop()
    return {"pid": os.getpid()}


async def failing_job(gate: Gate) -> dict[str, Any]:
    raise ValueError("bad input 42")


async def no_stop_job(gate: Gate) -> dict[str, Any]:
    await gate.start()
    return {}


async def dying_job(gate: Gate) -> dict[str, Any]:
    os._exit(3)


@pytest.mark.slow
def test_workers_start_together_and_fail_clearly() -> None:
    with Workers(2, timeout=60) as w:
        meter = CpuMeter(w.pids)
        rnd = w.run(busy_job, [(0.3,), (0.3,)], meter)
        assert len({r["pid"] for r in rnd.results}) == 2
        assert rnd.wall_s >= 0.3
        assert rnd.start_spread_s < 0.25  # one barrier, one clock
        acc = account("busy", rnd, meter, 100)
        assert 0 < acc["cpu_s"]["workers"] <= 2 * rnd.wall_s + 0.05  # (a busy machine gives less than 0.6)
        with pytest.raises(BenchError, match="bench worker 0: ValueError: bad input 42"):
            w.run(failing_job, [()])
        with pytest.raises(BenchError, match=r"without gate\.stop\(\)"):
            w.run(no_stop_job, [()])
        assert w.run(busy_job, [(0.01,)]).results  # the pool is still usable
        with pytest.raises(BenchError, match="exited with code 3"):
            w.run(dying_job, [()])


def test_replicas_are_counted_from_cluster_nodes_even_before_they_hold_data() -> None:
    from cogs.benchmarks.harness import replicas_per_primary

    nodes = "\n".join([
        "a1 198.18.1.1:7000@17000 myself,master - 0 0 1 connected 0-5460",
        "a2 198.18.1.2:7000@17000 master - 0 0 2 connected 5461-10922",
        "a3 198.18.1.3:7000@17000 master - 0 0 3 connected 10923-16383",
        "r1 198.18.1.4:7000@17000 slave a1 0 0 1 connected",
        "r2 198.18.1.5:7000@17000 slave a2 0 0 2 connected",
        "r3 198.18.1.6:7000@17000 slave a3 0 0 3 connected",
    ])
    assert replicas_per_primary(nodes) == 1
    # a failed replica does not count, nor does an empty primary's lack of one
    assert replicas_per_primary(nodes.replace("slave a3 0", "slave,fail a3 0")) == 0
    assert replicas_per_primary(nodes + "\nx9 198.18.1.9:7000@17000 master - 0 0 9 connected") == 1
    assert replicas_per_primary("") == 0
