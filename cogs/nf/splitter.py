"""The load balancer in front of an NF cluster: a symmetric flow hash.

Both directions of a connection map to the same middlebox (per-flow state stays
local), while different flows of one host spread over all of them: exactly why a
scanner's probes, each a separate flow, are split across boxes and only global
state sees them together.
"""

from __future__ import annotations

import hashlib


def flow_hash(proto: int, a: str, a_port: int, b: str, b_port: int) -> int:
    """Same value for (a:pa -> b:pb) and (b:pb -> a:pa)."""
    lo, hi = sorted(((a, a_port), (b, b_port)))
    data = f"{proto}|{lo[0]}|{lo[1]}|{hi[0]}|{hi[1]}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def middlebox_of(n: int, proto: int, a: str, a_port: int, b: str, b_port: int) -> int:
    return flow_hash(proto, a, a_port, b, b_port) % n
