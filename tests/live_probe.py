"""Run inside a test namespace: does the kernel's fanout keep both directions of a flow
on one socket? ``python -m tests.live_probe CAPTURE_IF SEND_IF SOCKETS FLOWS ring|recv``
prints one JSON object: for each flow, the sockets that received its packets, and
what the kernel counted per socket."""

from __future__ import annotations

import json
import random
import socket
import sys
import time

from cogs.nf.bpf import compile_filter
from cogs.nf.capture import Capture, Emitter
from cogs.nf.frames import decode


def _frame(src: str, sport: int, dst: str, dport: int, proto: int, vlan: bool = False) -> bytes:
    l4 = (
        sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + b"\x00" * 8 + b"\x50\x02\xff\xff" + b"\x00" * 4
        if proto == 6
        else sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + b"\x00\x08\x00\x00"
    )
    ip = (
        b"\x45\x00" + (20 + len(l4)).to_bytes(2, "big") + b"\x00\x00\x00\x00\x40" + bytes([proto]) + b"\x00\x00"
        + socket.inet_aton(src) + socket.inet_aton(dst)
    )  # fmt: skip
    tag = b"\x81\x00\x00\x2a" if vlan else b""  # 802.1Q, VLAN 42: the kernel moves the tag aside
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + tag + b"\x08\x00" + ip + l4


def main(capture_if: str, send_if: str, sockets: int, flows: int, mode: str) -> None:
    rng = random.Random(21)
    everything = compile_filter("")
    caps = [Capture(capture_if, everything, None, ring=mode == "ring")]
    caps += [Capture(capture_if, everything, caps[0].group, ring=mode == "ring") for _ in range(sockets - 1)]
    assert {c.mode for c in caps} == {mode}
    tx = Emitter(send_if)
    sent = []
    for i in range(flows):
        a, b = (
            f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        )
        pa, pb, proto = rng.randrange(1024, 65535), rng.choice((80, 53, 443)), 6 if i % 2 else 17
        sent.append(((a, pa), (b, pb), proto))
        tx.send(_frame(a, pa, b, pb, proto, vlan=i % 3 == 0))  # one direction, then the other
        tx.send(_frame(b, pb, a, pa, proto, vlan=i % 3 == 0))
    time.sleep(0.5)
    where: dict[str, list[int]] = {}
    for i, cap in enumerate(caps):
        while frames := cap.read(1024):
            for ts, frame in frames:
                p = decode(frame, ts)
                if isinstance(p, str) or not p.src.startswith("198.1"):
                    continue  # not ours: the link's own IPv6 chatter
                key = "|".join(map(str, sorted([(p.src, p.sport), (p.dst, p.dport)]))) + f"|{p.proto}"
                where.setdefault(key, []).append(i)
    stats = [c.poll_stats() for c in caps]
    print(json.dumps({"sent": len(sent), "flows": where, "received": [s.received for s in stats]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
