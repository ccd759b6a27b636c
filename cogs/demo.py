"""The main demo: a port scan split over N middleboxes, caught only by global state.

N middlebox processes each get the flows the symmetric flow hash sends them and
update the global ``scan_ports`` state at the coordinator; the cardinality checker
runs there. The same detector with local state only is run beside it, to show that
it misses the scan: each box sees only its share of the probed ports.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from dataclasses import dataclass
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from cogs.alerts import read_alerts
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Mode, Op, StateTable
from cogs.errors import ConfigError
from cogs.nf.splitter import middlebox_of

SCANNER, TARGET = "203.0.113.66", "10.0.0.5"
STATE = "scan_ports"
SCAN_PORTS = 24  # above the default threshold (15), yet a few per box when split


@dataclass(frozen=True, slots=True)
class Probe:
    src: str
    sport: int
    dst: str
    dport: int


def synth_traffic(seed: int = 7, scan_ports: int = SCAN_PORTS) -> list[Probe]:
    """Benign clients (a few services each) plus one scanner probing many ports."""
    rng = random.Random(seed)
    out = []
    servers = [f"10.0.0.{i}" for i in range(2, 12)]
    for c in range(40):
        client = f"192.168.1.{c + 10}"
        for server in rng.sample(servers, 3):
            for port in rng.sample([22, 53, 80, 443, 8080], rng.randint(1, 3)):
                out += [Probe(client, rng.randrange(1024, 65535), server, port) for _ in range(rng.randint(1, 4))]
    out += [Probe(SCANNER, rng.randrange(1024, 65535), TARGET, p) for p in rng.sample(range(1, 1024), scan_ports)]
    rng.shuffle(out)
    return out


async def _middlebox(url: str, probes: list[Probe], threshold: int) -> dict[str, Any]:
    local: dict[str, set[int]] = {}
    async with Coordinator(url=url) as co:
        table = await StateTable.open(co)
        ops = []
        for p in probes:
            key = f"{p.src}>{p.dst}"
            local.setdefault(key, set()).add(p.dport)
            ops.append(Op(Mode.UPDATE, STATE, key, "add", str(p.dport)))
        for i in range(0, len(ops), 200):
            errors = [r for r in await table.execute(ops[i : i + 200]) if r is not None]
            if errors:
                raise RuntimeError(f"coordinator refused updates: {errors[0]}")
    scan_key = f"{SCANNER}>{TARGET}"
    return {
        "packets": len(probes),
        "scanner_ports_seen": len(local.get(scan_key, ())),
        "local_alerts": sorted(k for k, v in local.items() if len(v) >= threshold),
    }


def _proc(url: str, probes: list[Probe], threshold: int, q: Any) -> None:
    try:
        q.put(anyio.run(_middlebox, url, probes, threshold))
    except Exception as e:  # the parent prints it; a traceback per process helps nobody
        q.put({"error": f"{type(e).__name__}: {e}"})


def run_demo(url: str, middleboxes: int = 4, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    probes = synth_traffic()

    async def prepare() -> int:
        async with Coordinator(url=url) as co:
            table = await StateTable.open(co)
            if STATE not in table.catalog:
                raise ConfigError(f"the demo needs state {STATE!r}: `cogs catalog load` the default catalog")
            spec = table.catalog.get(STATE)
            await table.update(STATE, f"{SCANNER}>{TARGET}", "clear")  # a fresh window per run
            return int(spec.params["threshold"])

    threshold = anyio.run(prepare)
    shares: list[list[Probe]] = [[] for _ in range(middleboxes)]
    for p in probes:
        shares[middlebox_of(middleboxes, 6, p.src, p.sport, p.dst, p.dport)].append(p)
    console.print(
        f"[bold]cogs demo[/]: {len(probes)} flows (one scanner probing {SCAN_PORTS} ports of {TARGET}) "
        f"split over {middleboxes} middlebox processes; alert when a source probes >= {threshold} ports"
    )
    t0 = time.time()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_proc, args=(url, share, threshold, q)) for share in shares]
    for proc in procs:
        proc.start()
    results = [q.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        raise RuntimeError(f"a middlebox failed: {failed[0]}")
    elapsed = time.time() - t0

    async def alerts() -> list[Any]:
        async with Coordinator(url=url) as co:
            return await read_alerts(co, state=STATE, since_ms=int(t0 * 1000) - 1000)

    raised = anyio.run(alerts)
    t = Table(title="per middlebox")
    for col in ("box", "packets", "scanner ports seen locally", "local-only alerts"):
        t.add_column(col)
    for i, r in enumerate(results):
        t.add_row(str(i), str(r["packets"]), str(r["scanner_ports_seen"]), str(len(r["local_alerts"])))
    console.print(t)
    local_total = sum(len(r["local_alerts"]) for r in results)
    verdict = "each box saw too few ports" if local_total == 0 else "only where one box saw enough ports"
    console.print(f"local state only: [red]{local_total} alert(s)[/] - {verdict}")
    for a in raised:
        console.print(f"cogs global state: [green]ALERT[/] {a.state} {a.key} reached {a.value} ports ({a.checker})")
    console.print(f"done in {elapsed:.2f}s; `cogs alerts` lists every alert stored in the coordinator")
    return {"alerts": [a.to_json() for a in raised], "local_alerts": local_total, "results": results}
