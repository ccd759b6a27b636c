"""NF scaling (paper Fig. 11a, 11b): total packets/s vs number of middleboxes for the
three flow-inspection NFs and the NAT, measured up to the cores of this box.

Each middlebox is a worker process with its own StateProxy, given its share of a
synthetic trace as raw frames (split by the symmetric flow hash, as the load
balancer in front of the cluster would). All boxes start together behind a barrier
and work for at least ``seconds`` each (whole passes over their share, each pass
under fresh state keys): parsing the frames (dpkt, L2-L4), the NF logic and the
proxy are all inside the timed work. The rate is all packets / (last box's end -
first box's start), and a run fails if its CPU does not fit in this machine's cores
in that time (cpu.py). The NAT boxes translate outbound packets (rewriting addresses
and checksums) against the singleton portmap state, so every packet's mapping comes
from the coordinator (concurrent packets of a flow share a lookup).

Beyond this box the figures are a *model* (scaling_report.py), labelled as such.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import dpkt

from cogs import runtime
from cogs.alerts import read_alerts
from cogs.benchmarks.common import Progress, bench_cluster, coordinator_nodes, fmt_rate, noop, write_results
from cogs.benchmarks.cpu import CpuMeter, affinity_cores, idle_rate, local_addr, redis_pids
from cogs.benchmarks.harness import BenchError, Calibration, environment, repeats, stat
from cogs.benchmarks.scaling_report import markdown, model, plot
from cogs.benchmarks.workers import Gate, Workers, account
from cogs.coordinator.client import Coordinator
from cogs.nf.detectors import DETECTORS
from cogs.nf.feed import Feeder
from cogs.nf.nat import PRIVATE, Classifier, ports, rewrite
from cogs.nf.nat_table import NatTable
from cogs.nf.packets import TraceStats, parse_frame
from cogs.nf.splitter import middlebox_of
from cogs.nf.synth import Synth
from cogs.paths import DEFAULT_CATALOG
from cogs.proxy import StateProxy

NFS = ("portscan", "dnstunnel", "sidejack", "nat")
NAT_STATE = "nat_singleton"
CHUNK = 1000  # packets between yields to the proxy's event loop
Frame = tuple[int, float, bytes]
_shares: dict[tuple[str, int, int], list[Frame]] = {}


def _share(trace: str, n: int, box: int) -> list[Frame]:
    """Box ``box`` of ``n``'s raw frames (link type, time, frame), as the load balancer
    splits them; kept for the worker's next job (the set-up is not what is measured)."""
    got = _shares.get((trace, n, box))
    if got is None:
        stats = TraceStats()
        got = []
        with open(trace, "rb") as fh:
            reader = dpkt.pcap.Reader(fh)
            lt = reader.datalink()
            for ts, buf in reader:
                p = parse_frame(lt, ts, buf, stats)
                if p is not None and middlebox_of(n, p.proto, p.src, p.sport, p.dst, p.dport) == box:
                    got.append((lt, float(ts), bytes(buf)))
        _shares[(trace, n, box)] = got
    return got


async def nf_job(
    url: str, nf: str, trace: str, n: int, ns: str, seconds: float, box: int, gate: Gate
) -> dict[str, Any]:
    """One flow-inspection middlebox as cogs nf runs it (a Feeder around the detector):
    parse + detect + update, whole passes over its share, for >= ``seconds``."""
    frames = _share(trace, n, box)
    stats = TraceStats()
    skipped = 0
    async with StateProxy(url) as proxy:
        packets = passes = 0
        await gate.start()
        deadline = time.perf_counter() + seconds
        while True:
            feeder = Feeder(proxy, nf, f"{ns}p{passes}|", box=str(box))
            for i in range(0, len(frames), CHUNK):
                parsed = [parse_frame(lt, ts, buf, stats) for lt, ts, buf in frames[i : i + CHUNK]]
                feeder.feed([p for p in parsed if p is not None])
                await feeder.settle(4 * CHUNK)  # room for the next chunk's updates
                await anyio.lowlevel.checkpoint()
            feeder.finish()
            await feeder.settle(0)
            skipped += feeder.skipped
            packets += len(frames)
            passes += 1
            if time.perf_counter() >= deadline or not frames:
                break
        await proxy.flush()
        gate.stop()
        s = proxy.statistics()
    if s.errors or skipped:
        raise BenchError(f"middlebox {box}: the coordinator refused {s.errors} update(s), {skipped} packet(s) skipped")
    return {"box": box, "packets": packets, "passes": passes, "ops_sent": s.ops_sent, "updates": s.updates}


def _nat_share(trace: str, n: int, box: int) -> list[bytes]:
    """Box ``box`` of ``n``'s outbound IPv4 packets (inside -> outside) of the trace."""
    got = _shares.get((trace, n, box))
    if got is None:
        side = Classifier(PRIVATE)
        got = []
        with open(trace, "rb") as fh:
            for _ts, buf in dpkt.pcap.Reader(fh):
                ip = dpkt.ethernet.Ethernet(buf).data
                if not isinstance(ip, dpkt.ip.IP) or ports(ip) is None:
                    continue
                src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
                sp, dp = ports(ip) or (0, 0)
                if side.inside(src) and not side.inside(dst) and middlebox_of(n, ip.p, src, sp, dst, dp) == box:
                    got.append((0, 0.0, bytes(ip)))
        _shares[(trace, n, box)] = got
    return [f[2] for f in got]


async def nat_job(url: str, trace: str, n: int, seconds: float, box: int, gate: Gate) -> dict[str, Any]:
    """One NAT middlebox: parse, look the flow's mapping up (async), rewrite; >= ``seconds``."""
    share = _nat_share(trace, n, box)
    async with StateProxy(url) as proxy:
        table = NatTable(proxy, NAT_STATE)
        pending = translated = dropped = packets = passes = 0

        def emit(mapping: tuple[str, int] | None, data: bytes) -> None:
            nonlocal pending, translated, dropped
            pending -= 1
            if mapping is None:
                dropped += 1
            else:
                translated += len(rewrite(data, src=mapping)) > 0

        await gate.start()
        deadline = time.perf_counter() + seconds
        while True:
            for i, data in enumerate(share):
                ip = dpkt.ip.IP(data)
                sport, _ = ports(ip) or (0, 0)
                pending += 1
                table.asyn_outbound(ip.p, socket.inet_ntoa(ip.src), sport, emit, data)
                if i % CHUNK == CHUNK - 1:
                    await proxy.wait_room(2 * CHUNK)
                    await anyio.lowlevel.checkpoint()
            packets += len(share)
            passes += 1
            if time.perf_counter() >= deadline or not share:
                break
        await proxy.flush()
        if pending:
            with anyio.fail_after(60):
                while pending:  # noqa: ASYNC110 - callbacks arrive from the batcher
                    await anyio.sleep(0.0005)
        gate.stop()
        s = proxy.statistics()
    if table.errors or dropped:
        raise BenchError(f"NAT middlebox {box}: {table.errors} failed lookup(s), {dropped} packet(s) dropped")
    return {"box": box, "packets": packets, "passes": passes, "ops_sent": s.ops_sent, "translated": translated}


async def _alerts(url: str, nf: str, prefix: str, since_ms: int) -> set[str]:
    """What ``nf`` alerted on under ``prefix`` (one pass of every box)."""
    det = DETECTORS[nf]
    async with Coordinator(url=url) as co:
        return {det.key_of(a.state, a.key[len(prefix) :]) for a in await read_alerts(co, since_ms=since_ms)
                if a.state in det.states and a.key.startswith(prefix)}  # fmt: skip


def main(
    url: str | None = None,
    quick: bool = False,
    out: Path | None = None,
    progress: Progress = noop,
    rounds: int | None = None,
) -> dict[str, Any]:
    cores = affinity_cores([])
    ns_boxes = sorted({1, 2, 4})
    seconds = 1.0 if quick else 3.0
    reps = repeats(quick, rounds)
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cogs-scaling-") as d,
        bench_cluster(url, progress, catalog=DEFAULT_CATALOG) as seed,
    ):
        flows = 3000 if quick else 8000
        trace, truth_file = Synth(seed=5, benign_flows=flows, scans=4, tunnels=2, sidejacks=4,
                                  duration=120).build().write(Path(d) / "scaling.pcap")  # fmt: skip
        nat_trace, _ = Synth(seed=6, benign_flows=0, scans=0, tunnels=0, sidejacks=0, nat_flows=flows, nat_hosts=200,
                             duration=120).build().write(Path(d) / "nat.pcap")  # fmt: skip
        truth = json.loads(truth_file.read_text())["alerts"]
        coord = redis_pids(coordinator_nodes(seed))
        primaries = coordinator_nodes(seed, replicas=False)
        meter = CpuMeter(coord.values(), remote=[a for a in primaries if not local_addr(a)])
        env = environment(seed, "shared", seconds_per_box=seconds, trace_flows=flows)
        cal = Calibration(seed, quick=quick, progress=progress)
        with Workers(max(ns_boxes)) as w:
            meter.add(w.pids)
            time.sleep(1.0)  # the workers' start-up done
            idle = idle_rate(meter, coord.values(), 2.0)
            env["coordinator_idle_cpu_per_s"] = round(idle, 5)
            progress(f"coordinator nodes idle: {idle * 1e3:.1f} ms CPU per second (subtracted from CPU per op)")
            for rep in range(reps):
                progress(f"round {rep + 1} of {reps}")
                cal.sample()
                for nf in NFS:
                    for n in ns_boxes:
                        ns = f"sc{uuid.uuid4().hex[:8]}|"
                        since = int(time.time() * 1000) - 1000
                        if nf == "nat":
                            rnd = w.run(nat_job, [(seed, str(nat_trace), n, seconds, b) for b in range(n)], meter)
                        else:
                            rnd = w.run(nf_job, [(seed, nf, str(trace), n, ns, seconds, b) for b in range(n)], meter)
                        packets = sum(r["packets"] for r in rnd.results)
                        acc = account(f"{nf} on {n} middlebox(es)", rnd, meter, packets, coord.values())
                        ops = sum(r["ops_sent"] for r in rnd.results)
                        row: dict[str, Any] = {
                            "nf": nf, "middleboxes": n, "round": rep, "oversubscribed": n > cores, "packets": packets,
                            "packets_per_s": packets / rnd.wall_s, "ops_per_packet": ops / packets,
                            # net of the nodes' idle CPU: at a few thousand ops/s it would be most of it
                            "coordinator_cpu_us_per_op": max(0.0, acc["cpu_s"]["coordinator"] - idle * acc["window_s"])
                            / ops * 1e6 if ops else 0.0,
                            "boxes": [{k: r[k] for k in ("box", "packets", "passes", "cpu_s", "t_start", "t_end")}
                                      for r in rnd.results],
                            "per_box_packets_per_cpu_s": [r["packets"] / r["cpu_s"] for r in rnd.results],
                            **acc,
                        }  # fmt: skip
                        if nf != "nat":
                            want = {t["key"] for t in truth if t["nf"] == nf}
                            got = runtime.run(_alerts, seed, nf, f"{ns}p0|", since)
                            row["alerts_exact"] = got == want
                        runs.append(row)
                        progress(f"  {nf}, {n} middlebox(es): {fmt_rate(row['packets_per_s'])} packets/s "
                                 f"({min(b['passes'] for b in row['boxes'])}+ passes, {acc['wall_s']:.1f} s, "
                                 f"{acc['cores_busy']:.2f} cores busy), box CPU "
                                 f"{acc['cpu_us_per_item']['workers']:.1f} us/packet")  # fmt: skip
        cal.sample()
    data = _results(quick, env, cal, runs, ns_boxes, cores, seconds)
    path = write_results("scaling", data, markdown(data), out)
    plot(path, data)
    progress(f"wrote {path} and {path.with_suffix('.md')}")
    return data


def _results(quick: bool, env: dict[str, Any], cal: Calibration, runs: list[dict[str, Any]], ns_boxes: list[int],
             cores: int, seconds: float) -> dict[str, Any]:  # fmt: skip
    summary: dict[str, Any] = {}
    for nf in NFS:
        rows = {n: [r for r in runs if r["nf"] == nf and r["middleboxes"] == n] for n in ns_boxes}
        summary[nf] = {
            "packets_per_s": {str(n): stat([r["packets_per_s"] for r in rs]) for n, rs in rows.items()},
            "per_box_packets_per_cpu_s": {str(n): stat([x for r in rs for x in r["per_box_packets_per_cpu_s"]])
                                          for n, rs in rows.items()},
            "box_cpu_us_per_packet": stat([r["cpu_us_per_item"]["workers"] for r in rows[1]], 2),
            "ops_per_packet": stat([r["ops_per_packet"] for r in rows[1]], 4),
            "coordinator_cpu_us_per_op": stat([r["coordinator_cpu_us_per_op"] for r in rows[1]], 2),
        }  # fmt: skip
        if nf != "nat":
            summary[nf]["alerts_exact"] = all(r["alerts_exact"] for rs in rows.values() for r in rs)
        summary[nf]["model"] = model(summary[nf], len(env["coordinator_nodes"]))
        summary[nf]["packets_per_s_vs_redis_incr"] = {n: cal.ratio(v["median"])
                                                      for n, v in summary[nf]["packets_per_s"].items()}  # fmt: skip
    summary.update({"physically_possible": True, "cores": cores, "min_box_seconds": seconds, **cal.headline()})
    return {
        "bench": "scaling", "quick": quick, "environment": env, "calibration": cal.result(), "summary": summary,
        "runs": runs,
    }  # fmt: skip
