"""Replay a capture into a network interface: what ``cogs trace replay`` runs.

tcpreplay (Debian's package) where it is installed and the capture is Ethernet: it
paces in C and sends with one syscall per frame, at rates Python cannot (frames too
short to send, which would stop it, are left out and counted). Otherwise
a Python sender (AF_PACKET) gives each frame an Ethernet header if it has none (raw
IP, Linux cooked, BSD loopback captures) and paces it. Rates: ``pps`` packets/s,
``mbps`` Mbit/s, ``topspeed`` as fast as the interface takes them, or none of them:
the capture's own timing. A frame over the interface's MTU is not sent and counted,
as tcpreplay counts it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogs.errors import CogsError, ConfigError
from cogs.nf.frames import EN10MB, LINUX_SLL, LOOP, NULL, RAW_IP, l3_offset

ENGINES = ("auto", "tcpreplay", "python")


@dataclass
class ReplayResult:
    engine: str
    packets: int  # sent
    bytes: int
    seconds: float
    failed: int  # not sent (over the MTU, no buffer)
    loops: int

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        return self.bytes * 8 / 1e6 / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "pps": round(self.pps), "mbps": round(self.mbps, 1)}

    def describe(self, where: str) -> str:
        """One line for a person: what was sent ``where``, how fast."""
        failed = f"; {self.failed:,} not sent" if self.failed else ""
        return (
            f"{self.packets:,} packets ({self.bytes:,} bytes) {where} in {self.seconds:.3f} s: "
            f"{self.pps:,.0f} packets/s, {self.mbps:,.1f} Mbit/s ({self.engine}){failed}"
        )


@dataclass(frozen=True)
class Rate:
    pps: float | None = None
    mbps: float | None = None
    topspeed: bool = False

    def __post_init__(self) -> None:
        given = [x for x in (self.pps, self.mbps) if x is not None] + ([True] if self.topspeed else [])
        if len(given) > 1:
            raise ConfigError("give one of --pps, --mbps, --topspeed")
        if (self.pps is not None and self.pps <= 0) or (self.mbps is not None and self.mbps <= 0):
            raise ConfigError("a replay rate must be positive")


def _for_tcpreplay(path: Path, tmp: Path) -> tuple[Path, int] | None:
    """``path`` as tcpreplay can send it: itself, or a copy without the frames too short
    for an Ethernet header (tcpreplay stops at a zero-length one), and how many those
    were; None for a capture that is not Ethernet."""
    import dpkt

    from cogs.nf.packets import TraceStats, read_frames

    frames = read_frames(path, TraceStats())
    keep: list[tuple[float, bytes]] = []
    short = 0
    for link, ts, buf in frames:
        if link != EN10MB:
            return None
        if len(buf) < 14:
            short += 1
        keep.append((ts, buf))
    if not short:
        return path, 0
    with tmp.open("wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=262144)
        for ts, buf in keep:
            if len(buf) >= 14:
                w.writepkt(buf, ts=ts)
    return tmp, short


def replay(
    path: str | Path,
    interface: str,
    rate: Rate = Rate(),
    *,
    loops: int = 1,
    engine: str = "auto",
    preload: bool = False,
) -> ReplayResult:
    """Send the frames of ``path`` out of ``interface``, ``loops`` times (``preload``:
    tcpreplay reads the whole file into memory first, so the disk never paces it)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such capture file")
    if loops < 1:
        raise ConfigError("--loop must be at least 1")
    if engine not in ENGINES:
        raise ConfigError(f"unknown replay engine {engine!r} (have: {', '.join(ENGINES)})")
    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise ConfigError(f"no network interface {interface!r} here") from None
    have = shutil.which("tcpreplay") is not None
    if engine == "tcpreplay" and not have:
        raise ConfigError("tcpreplay is not installed (Debian: apt-get install tcpreplay)")
    if engine == "python" or not have:
        return _python(p, interface, rate, loops)
    with tempfile.TemporaryDirectory(prefix="cogs-replay-") as tmp:
        usable = _for_tcpreplay(p, Path(tmp) / "sendable.pcap")
        if usable is None:
            if engine == "tcpreplay":
                raise ConfigError(f"{p}: tcpreplay sends Ethernet captures; use --engine python for this one")
            return _python(p, interface, rate, loops)
        result = _tcpreplay(usable[0], interface, rate, loops, preload)
        result.failed += usable[1] * loops
        return result


_ACTUAL = re.compile(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds")
_FAILED = re.compile(r"Failed packets:\s+(\d+)")


def _tcpreplay(path: Path, interface: str, rate: Rate, loops: int, preload: bool = False) -> ReplayResult:
    argv = ["tcpreplay", "--intf1", interface, "--loop", str(loops), *(["--preload-pcap"] if preload else [])]
    if rate.topspeed:
        argv.append("--topspeed")
    elif rate.pps is not None:
        argv.append(f"--pps={rate.pps:g}")
    elif rate.mbps is not None:
        argv.append(f"--mbps={rate.mbps:g}")
    argv.append(str(path))
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    m = _ACTUAL.search(r.stdout)
    if r.returncode != 0 or m is None:
        why = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise CogsError(f"tcpreplay failed (exit {r.returncode}): {why[-1][:300] if why else 'no output'}")
    failed = _FAILED.search(r.stdout)
    return ReplayResult(
        "tcpreplay", int(m.group(1)), int(m.group(2)), float(m.group(3)), int(failed.group(1)) if failed else 0, loops
    )


def _ethernet(link: int, buf: bytes) -> bytes | None:
    """``buf`` as an Ethernet frame (a zero MAC pair where the capture has none)."""
    if link == EN10MB:
        return buf
    if link in RAW_IP:
        ip, etype = buf, (b"\x86\xdd" if buf[:1] and buf[0] >> 4 == 6 else b"\x08\x00")
    elif link == LINUX_SLL:
        ip, etype = buf[16:], buf[14:16]
    elif link in (NULL, LOOP):
        ip = buf[4:]
        etype = b"\x86\xdd" if ip[:1] and ip[0] >> 4 == 6 else b"\x08\x00"
    else:
        return None
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + etype + ip


def _python(path: Path, interface: str, rate: Rate, loops: int) -> ReplayResult:
    from cogs.nf.capture import packet_socket
    from cogs.nf.packets import TraceStats, read_frames

    sock = packet_socket()
    sent = nbytes = failed = 0
    try:
        sock.bind((interface, 0))
        t0 = time.perf_counter()
        for _ in range(loops):
            first_ts: float | None = None
            start = time.perf_counter()
            for link, ts, buf in read_frames(path, TraceStats()):
                frame = _ethernet(link, buf)
                if frame is None or len(frame) < l3_offset(frame):
                    failed += 1
                    continue
                if rate.pps is not None:
                    _wait(t0 + sent / rate.pps)
                elif rate.mbps is not None:
                    _wait(t0 + nbytes * 8 / (rate.mbps * 1e6))
                elif not rate.topspeed:  # the capture's own timing
                    first_ts = ts if first_ts is None else first_ts
                    _wait(start + ts - first_ts)
                try:
                    sock.send(frame)
                except OSError:  # over the MTU, no buffer
                    failed += 1
                    continue
                sent, nbytes = sent + 1, nbytes + len(frame)
        return ReplayResult("python", sent, nbytes, time.perf_counter() - t0, failed, loops)
    finally:
        sock.close()


def _wait(until: float) -> None:
    delay = until - time.perf_counter()
    if delay > 0.0005:
        time.sleep(delay)


def replay_in_lab(
    lab: Any,
    host: str,
    path: str | Path,
    rate: Rate = Rate(),
    *,
    loops: int = 1,
    engine: str = "auto",
    preload: bool = False,
) -> ReplayResult:
    """``path`` into middlebox ``host``'s ``eth0`` in ``lab`` (a :class:`cogs.lab.Lab`):
    sent from the lab namespace out of the host's link, so the frames reach that host
    alone, at the replay's rate, without crossing the lab's switch (whose delay and
    rate are for the hosts' own traffic)."""
    from cogs.lab.netns import call_in

    h = lab.host(host)
    if h.role != "middlebox":
        raise ConfigError(f"{host} is a coordinator node: replay into a middlebox (mb1..)")
    return call_in(lab.lab_netns, lambda: replay(path, h.link, rate, loops=loops, engine=engine, preload=preload))
