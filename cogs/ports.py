"""Free loopback ports for the nodes and servers cogs starts locally (clusters, web caches).

A port found free can still be taken before its server binds it; two processes picking
at once (the test suite's workers) would then start on the same port. COGS_PORT_SHARE=k/N
gives each such process a share of its own: it picks only ports of share k, so processes
with different shares never pick the same port.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from cogs.errors import ClusterError

PORT_BLOCK = 64  # ports are shared out in blocks: a cluster's n consecutive ports fit in one


def port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port_base(n: int, start: int = 20000, stop: int = 40000, host: str = "127.0.0.1", *, bus: bool = True) -> int:
    """A port p such that p..p+n-1 (and, for Redis nodes, their cluster bus ports
    +10000) are all free, below the kernel's ephemeral range when the span allows: a
    port free now could otherwise become some client connection's source port before
    the node binds it. Under COGS_PORT_SHARE=k/N only ports of share k are picked
    (``port_share``): N processes picking at once (the test suite's workers) never pick
    the same port, which checking that a port is free cannot promise."""
    top = _ephemeral_low() - (10000 if bus else 0)
    if top - n > start:
        stop = min(stop, top)
    share, shares = port_share()
    bases = [b for b in range(start, stop - n) if all(_share_of(b + i, shares) == share for i in range(n))]
    rng = random.SystemRandom()  # two calls in a row (one process, one second) differ
    for base in rng.sample(bases, min(200, len(bases))):
        ports = [base + i for i in range(n)] + ([base + 10000 + i for i in range(n)] if bus else [])
        if not any(port_busy(host, p) or not _bindable(host, p) for p in ports):
            return base
    where = f" (share {share} of {shares}, COGS_PORT_SHARE)" if shares > 1 else ""
    raise ClusterError(f"no {n} free consecutive ports found in {start}-{stop}{where}")


def port_share() -> tuple[int, int]:
    """(k, N) from COGS_PORT_SHARE=k/N, (0, 1) when unset: this process picks ports of share
    k of N only. A port's share depends on port % 10000, so a node's bus port (+10000) is
    in its own port's share, and shares are disjoint across every range a caller asks."""
    raw = os.environ.get("COGS_PORT_SHARE", "").strip()
    if not raw:
        return 0, 1
    try:
        k, n = (int(x) for x in raw.split("/"))
    except ValueError:
        raise ClusterError(f"COGS_PORT_SHARE={raw[:40]!r}: expected k/N, e.g. 0/4") from None
    if not (1 <= n <= 16 and 0 <= k < n):
        raise ClusterError(f"COGS_PORT_SHARE={raw[:40]!r}: expected k/N with 0 <= k < N <= 16")
    return k, n


def _share_of(port: int, shares: int) -> int:
    return (port % 10000 // PORT_BLOCK) % shares


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
