"""What an unauthenticated connection flood costs a peer server, and whether real peers
still get their reads (the finding: 2 processes churning idle connections from one
address made 4 of 5 fresh readers time out and the owner's loop lag ~20 ms).

    python cogs/benchmarks/peer_flood.py bench [--repeats 5] [--seconds 4] [--procs 2] [--sources 1]

Run as a file (not -m) so that ``PYTHONPATH=<other checkout>`` measures that
checkout's server with the same bench. Per repeat: a quiet phase, then a flood phase,
each with the owner's CPU (this process: the server and a 1 ms ticker, nothing else),
its loop lag (how late a 1 ms sleep wakes) and fresh readers (a subprocess, a new
client per read, 2 s timeout, from 127.0.0.1, known to the server from the quiet
phase). Medians over the repeats are printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

SECRET = b"flood-bench-secret"


def flood(port: int, sources: list[str], seconds: float, hold: int = 200) -> int:
    """Open connections from ``sources`` in turn as fast as possible and hold them idle
    (the newest ``hold``), as the attacker did; the number opened."""
    held: list[socket.socket] = []
    opened = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((sources[opened % len(sources)], 0))
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        opened += 1
        held.append(s)
        if len(held) > hold:
            held.pop(0).close()
    for s in held:
        s.close()
    return opened


def flooders(port: int, procs: int, sources: int, seconds: float) -> list[subprocess.Popen[str]]:
    """``procs`` flooding processes, each from the ``sources`` addresses 127.0.0.2...
    in turn; each prints how many connections it opened when it ends."""
    where = ",".join(f"127.0.0.{2 + i}" for i in range(sources))
    return [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "flood", str(port), where, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]


async def _reads(addr: str, n: int, limit_s: float) -> dict[str, Any]:
    from cogs.proxy.peer import PeerClient

    ok, errors, took = 0, [], []
    for _ in range(n):
        client = PeerClient("reader", SECRET, timeout=limit_s)  # a fresh one: a new connection
        t = time.monotonic()
        try:
            ok += await client.request(addr, "get", "s", "k") == (1, b"body")
        except Exception as e:  # counted and shown
            errors.append(f"{type(e).__name__}: {str(e)[:100]}")
        took.append(time.monotonic() - t)
        await client.aclose()
    took.sort()
    return {
        "ok": ok, "bad": n - ok, "errors": errors[:3],
        "read_ms_p50": 1e3 * took[len(took) // 2], "read_ms_max": 1e3 * took[-1],
    }  # fmt: skip


def reader(addr: str, n: int, timeout: float) -> dict[str, Any]:
    """``n`` reads from a subprocess (its CPU is not the owner's)."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "read", addr, str(n), str(timeout)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def _phase(server: Any, seconds: float, flood_args: tuple[int, int] | None, reads: int) -> dict[str, Any]:
    port = int(server.address.rpartition(":")[2])
    lags: list[float] = []
    done = False

    async def tick() -> None:
        while not done:
            t = time.monotonic()
            await asyncio.sleep(0.001)
            lags.append(time.monotonic() - t - 0.001)

    before = (getattr(server, "limited", 0), server.evicted)
    procs = flooders(port, flood_args[0], flood_args[1], seconds) if flood_args else []
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(min(1.0, seconds / 4))  # the flood under way
    cpu, wall = time.process_time(), time.monotonic()
    got = await asyncio.to_thread(reader, server.address, reads, 2.0)
    rest = seconds - min(1.0, seconds / 4) - (time.monotonic() - wall)
    if rest > 0:
        await asyncio.sleep(rest)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    done = True
    await ticker
    opened = 0
    for p in procs:
        opened += int((await asyncio.to_thread(p.communicate))[0] or 0)
    lags.sort()
    # what reached the server's accept (the rest of what the flooders opened waited in,
    # or was dropped from, the kernel's full accept queue)
    accepted = getattr(server, "limited", 0) - before[0] + server.evicted - before[1]
    return {
        **got,
        "flood_conns": opened,
        "flood_conns_per_s": opened / seconds,
        "reset_at_accept": getattr(server, "limited", 0) - before[0],
        "evicted_pending": server.evicted - before[1],
        "owner_cpu_pct": 100 * cpu / wall,
        "flood_conns_accepted": accepted,
        "owner_cpu_us_per_accepted_flood_conn": 1e6 * cpu * seconds / wall / accepted if accepted else 0.0,
        "loop_lag_ms_p50": 1e3 * lags[len(lags) // 2],
        "loop_lag_ms_p99": 1e3 * lags[int(len(lags) * 0.99)],
    }


async def bench(repeats: int, seconds: float, procs: int, sources: int, reads: int) -> dict[str, Any]:
    from cogs.proxy.peer import PeerServer

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        return 1, b"body"

    runs: dict[str, list[dict[str, Any]]] = {"quiet": [], "flood": []}
    for _ in range(repeats):
        server = PeerServer("owner", SECRET, handler, lambda _s: 1 << 20)
        await server.start()
        serving = asyncio.create_task(server.serve())
        runs["quiet"].append(await _phase(server, seconds, None, reads))
        runs["flood"].append(await _phase(server, seconds, (procs, sources), reads))
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    out: dict[str, Any] = {"procs": procs, "sources": sources, "seconds": seconds, "repeats": repeats}
    for name, rs in runs.items():
        out[name] = {
            k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], int | float)
        }  # fmt: skip
        out[name]["errors"] = [e for r in rs for e in r["errors"]][:3]
        out[name]["bad_total"] = sum(r["bad"] for r in rs)
        out[name]["reads_total"] = sum(r["ok"] + r["bad"] for r in rs)
    return out


def main() -> None:
    if sys.argv[1:2] == ["flood"]:
        print(flood(int(sys.argv[2]), sys.argv[3].split(","), float(sys.argv[4])))
        return
    if sys.argv[1:2] == ["read"]:
        print(json.dumps(asyncio.run(_reads(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))))
        return
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("cmd", choices=["bench"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--reads", type=int, default=10)
    a = p.parse_args()
    print(json.dumps(asyncio.run(bench(a.repeats, a.seconds, a.procs, a.sources, a.reads)), indent=1))


if __name__ == "__main__":
    main()
