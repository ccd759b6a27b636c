"""The lab's links: an Ethernet switch in userspace that delays, jitters, rate-limits
and drops frames per link, run in the lab namespace (``python -m cogs.lab.switch CONFIG``).

Why not a kernel bridge with ``tc netem``: this project's machines (and CI) run a
kernel without ``sch_netem`` (nor fq/ETF for timestamp pacing), so link emulation is
done here. Every host's link is a veth pair whose lab end this process reads and writes
with an ``AF_PACKET`` socket; it forwards by destination MAC (the lab assigns every
host's MAC; broadcast and multicast go to every other port).

Each link has, per direction, ``delay`` (one way) ± ``jitter`` (uniform), a ``rate``
(serialization at that many bits/s, queued behind the frames before it) and a
``loss`` probability. A frame from host A to host B crosses A's link up and B's link
down: a round trip A -> B -> A crosses four link directions, so a lab asked for an RTT
of R gives every link a one-way delay of R/4. Frames on one link direction never
overtake each other (jitter delays the ones behind), as on a wire.

Frames keep their virtio-net header (``PACKET_VNET_HDR``): a TCP segment of up to
64 KB handed over with segmentation and checksum offload is forwarded as one frame
and segmented by the kernel at the far end, as a bridge would; its loss or jitter
applies to the whole frame. Timing runs on ``select`` with microsecond timeouts and 1 ns
timer slack; on a busy machine frames leave late by the scheduler's wake-up latency
(``stats`` reports the largest lateness seen).

Control: a UNIX socket (``sock`` in the config), one JSON request per connection:
``{"op": "stats"}``, ``{"op": "set", "port": NAME, "delay_us": .., "jitter_us": ..,
"loss": .., "rate_bps": ..}`` (any subset), ``{"op": "add", "port": {name, ifname,
mac, delay_us, ...}}`` and ``{"op": "remove", "port": NAME}`` (a host joining or
leaving the lab: ``cogs lab scale``), ``{"op": "stop"}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
VNET_HDR = 10  # struct virtio_net_hdr before every frame
BUF = 1 << 18
PARAMS = ("delay_us", "jitter_us", "loss", "rate_bps")


@dataclass
class Direction:
    """One direction of a link: when it is free again, when its last frame leaves."""

    free: float = 0.0
    last: float = 0.0


@dataclass
class Port:
    name: str
    ifname: str
    mac: str
    delay_us: float = 0.0
    jitter_us: float = 0.0
    loss: float = 0.0
    rate_bps: float | None = None
    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    lost: int = 0
    dropped: int = 0  # send buffer full: the far end does not keep up
    removed: bool = False  # its host left the lab (its index stays: queued frames name it)
    up: Direction = field(default_factory=Direction)
    down: Direction = field(default_factory=Direction)

    def cross(self, d: Direction, t: float, nbytes: int, rng: random.Random) -> float | None:
        """When a frame entering direction ``d`` at ``t`` comes out; None: lost."""
        if self.loss and rng.random() < self.loss:
            self.lost += 1
            return None
        if self.rate_bps:
            d.free = max(t, d.free) + nbytes * 8 / self.rate_bps
            t = d.free
        t += (self.delay_us + (rng.uniform(-self.jitter_us, self.jitter_us) if self.jitter_us else 0.0)) / 1e6
        d.last = t = max(t, d.last)
        return t

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("up", "down", "removed")}


class Switch:
    def __init__(self, config: dict[str, Any]) -> None:
        self.ports = [Port(**{k: p[k] for k in ("name", "ifname", "mac", *PARAMS) if k in p}) for p in config["ports"]]
        self.by_name = {p.name: i for i, p in enumerate(self.ports)}
        self.by_mac = {bytes.fromhex(p.mac.replace(":", "")): i for i, p in enumerate(self.ports)}
        self.rng = random.Random(config.get("seed"))
        self.socks: list[socket.socket] = []
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.unknown = 0
        self.max_late_us = 0.0
        self.started = time.time()
        self.running = True
        self.ctl_path = Path(config["sock"])
        self.ctl: socket.socket  # made by open()
        self.changed = True  # ports came or went: the serve loop re-reads them

    def open(self) -> None:
        for p in self.ports:
            self.socks.append(_port_socket(p.ifname))
        with contextlib.suppress(FileNotFoundError):
            self.ctl_path.unlink()
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(str(self.ctl_path))
        self.ctl.listen(16)

    def serve(self) -> None:
        index: dict[int, int] = {}
        rlist: list[socket.socket] = []
        buf = bytearray(BUF)
        view = memoryview(buf)
        while self.running:
            if self.changed:
                live = [i for i, p in enumerate(self.ports) if not p.removed]
                index = {self.socks[i].fileno(): i for i in live}
                rlist = [*(self.socks[i] for i in live), self.ctl]
                self.changed = False
            timeout = max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else 1.0
            ready, _, _ = select.select(rlist, [], [], timeout)
            for s in ready:
                if s is self.ctl:
                    self._control()
                    continue
                i = index.get(s.fileno(), -1)
                if i < 0 or self.ports[i].removed:
                    continue
                for _ in range(64):  # drain a burst, bounded: the others get their turn
                    try:
                        n = s.recv_into(buf)
                    except BlockingIOError:
                        break
                    self._ingress(i, bytes(view[:n]), time.monotonic())
            self._send_due()

    def _ingress(self, i: int, frame: bytes, now: float) -> None:
        src, size = self.ports[i], len(frame) - VNET_HDR
        src.rx_frames += 1
        src.rx_bytes += size
        dst = frame[VNET_HDR : VNET_HDR + 6]
        if dst[0] & 1:  # broadcast / multicast: every other port
            outs = [j for j, p in enumerate(self.ports) if j != i and not p.removed]
        elif (j := self.by_mac.get(dst)) is not None and j != i:
            outs = [j]
        else:
            self.unknown += 1
            return
        at = src.cross(src.up, now, size, self.rng)
        if at is None:
            return
        for j in outs:
            out = self.ports[j]
            due = out.cross(out.down, at, size, self.rng)
            if due is not None:
                self.seq += 1
                heapq.heappush(self.heap, (due, self.seq, j, frame))

    def _send_due(self) -> None:
        now = time.monotonic()
        while self.heap and self.heap[0][0] <= now + 2e-6:
            due, _, j, frame = heapq.heappop(self.heap)
            self.max_late_us = max(self.max_late_us, (now - due) * 1e6)
            out = self.ports[j]
            if out.removed:
                continue
            try:
                self.socks[j].send(frame)
            except (BlockingIOError, OSError):
                out.dropped += 1
                continue
            out.tx_frames += 1
            out.tx_bytes += len(frame) - VNET_HDR
            now = time.monotonic()

    def _control(self) -> None:
        conn, _ = self.ctl.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                reply = self.handle(json.loads(data))
            except (OSError, ValueError, KeyError, TypeError) as e:
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "stats":
            return {
                "ok": True, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3),
                "queued": len(self.heap), "unknown_dst": self.unknown, "max_late_us": round(self.max_late_us, 1),
                "ports": [p.public() for p in self.ports if not p.removed],
            }  # fmt: skip
        if op == "set":
            p = self.ports[self.by_name[req["port"]]]
            for k in PARAMS:
                if k in req:
                    setattr(p, k, None if req[k] is None else float(req[k]))
            return {"ok": True, "port": p.public()}
        if op == "add":
            spec = req["port"]
            if spec["name"] in self.by_name:
                raise ValueError(f"port {spec['name']} exists")
            p = Port(**{k: spec[k] for k in ("name", "ifname", "mac", *PARAMS) if k in spec})
            self.socks.append(_port_socket(p.ifname))
            self.ports.append(p)
            i = len(self.ports) - 1
            self.by_name[p.name] = i
            self.by_mac[bytes.fromhex(p.mac.replace(":", ""))] = i
            self.changed = True
            return {"ok": True, "port": p.public()}
        if op == "remove":
            i = self.by_name.pop(req["port"])
            p = self.ports[i]
            p.removed = True
            self.by_mac.pop(bytes.fromhex(p.mac.replace(":", "")), None)
            self.socks[i].close()
            self.changed = True
            return {"ok": True}
        if op == "stop":
            self.running = False
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _port_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        s.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def request(sock: Path, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one control request to the switch listening on ``sock``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


def _fine_timers() -> None:
    """1 ns timer slack (the default 50 us would blur a 50 us link delay)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m cogs.lab.switch CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[0]).read_text())
    sw = Switch(config)

    def stop(*_: object) -> None:
        sw.running = False

    sw.open()  # before detaching: an error here is the caller's exit status and stderr
    # detach like a daemon: the caller returns once the switch serves, nothing waits on it
    if pid := os.fork():
        Path(config["pidfile"]).write_text(f"{pid}\n")
        os._exit(0)
    os.setsid()
    fd = os.open(config["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _fine_timers()
    print(f"switch: {len(sw.ports)} ports, pid {os.getpid()}", flush=True)
    sw.serve()
    with contextlib.suppress(FileNotFoundError):
        sw.ctl_path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
