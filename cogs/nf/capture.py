"""Live capture: AF_PACKET sockets in one PACKET_FANOUT group, as Zeek, Suricata and
Snort read an interface in cluster mode.

Every worker process opens its own socket on the interface and joins the group; the
kernel hashes each packet's flow **symmetrically** (both directions of a connection
reach the same socket: per-flow state stays in one worker) and defragments before
hashing (all fragments of a datagram reach one worker). A classic BPF pre-filter
(:mod:`cogs.nf.bpf`) runs in the kernel on each socket, so only what the NF looks at
is copied to Python. Packets the host sends itself (the proxy's own traffic to the
coordinator) are not captured. The kernel counts what each socket received and what
it dropped because the worker fell behind (PACKET_STATISTICS).

Python's socket module lacks the AF_PACKET option constants; they are the kernel's
(include/uapi/linux/if_packet.h, asm-generic/socket.h).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import socket
import struct
import time
from dataclasses import dataclass

from cogs.errors import ConfigError
from cogs.nf.bpf import sock_fprog

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1
#: a block not full is handed to the worker after this long (the latency it adds)
RING_TIMEOUT_MS = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

#: receive buffer per socket: what absorbs a burst while the worker is busy
RCVBUF = 32 << 20
#: the largest frame read whole (a veth's MTU goes to 64 KiB); longer ones are cut
MAX_FRAME = 65536 + 64


@dataclass
class Stats:
    """What the kernel counted for one socket, since it was opened."""

    received: int = 0  # passed the filter and queued to the socket
    dropped: int = 0  # passed the filter, but the socket's buffer was full


class Capture:
    """One AF_PACKET socket on ``interface`` in fanout group ``group`` (None: a new
    group, its id in :attr:`group`), with ``insns`` as its kernel filter."""

    def __init__(
        self,
        interface: str,
        insns: list[tuple[int, int, int, int]],
        group: int | None,
        *,
        ring: bool = True,
        rcvbuf: int = RCVBUF,
    ) -> None:
        self.interface = interface
        # protocol 0: nothing is queued before the filter is attached and bind() names ETH_P_ALL
        sock = packet_socket()
        self._ring: Ring | None = None
        try:
            self._setup(sock, insns, rcvbuf, ring)
            self.group = self._join(sock, group)
        except BaseException:
            self._close_ring()
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.stats = Stats()
        self.cut = 0  # frames longer than what was read of them
        self._buf = bytearray(MAX_FRAME)
        self._view = memoryview(self._buf)

    @property
    def mode(self) -> str:
        return "ring" if self._ring is not None else "recv"

    def _setup(self, sock: socket.socket, insns: list[tuple[int, int, int, int]], rcvbuf: int, ring: bool) -> None:
        prog, _keep = sock_fprog(insns)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
        with contextlib.suppress(OSError):  # kernels before 4.20 lack it: the filter and the detector cope
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if ring:
            try:
                self._ring = Ring(sock)
            except OSError:  # no TPACKET_V3 (a kernel before 3.2, or no room to map): one recv per frame
                self._ring = None
        if self._ring is None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:  # without CAP_NET_ADMIN: up to net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.bind((self.interface, ETH_P_ALL))
            index = socket.if_nametoindex(self.interface)
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENXIO):
                raise ConfigError(f"no network interface {self.interface!r} here") from e
            raise
        # promiscuous: frames for other MAC addresses too (a tap, a mirror port)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))

    @staticmethod
    def _join(sock: socket.socket, group: int | None) -> int:
        flags = PACKET_FANOUT_FLAG_DEFRAG | (PACKET_FANOUT_FLAG_UNIQUEID if group is None else 0)
        arg = (group or 0) | (PACKET_FANOUT_HASH | flags) << 16
        try:
            sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", arg))
        except OSError as e:
            raise ConfigError(
                f"could not join fanout group {group} on this interface: {e.strerror} "
                "(another capture uses the id with other settings?)"
            ) from e
        (got,) = struct.unpack("I", sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))
        return int(got) & 0xFFFF

    def read(self, limit: int) -> list[tuple[float, bytes]]:
        """Queued frames ``(arrival time, frame)``, [] when none is: the blocks the kernel
        filled (ring), or up to ``limit`` frames (recv)."""
        if self._ring is not None:
            out, cut = self._ring.read()
            self.cut += cut
            return out
        out = []
        recv, view = self.sock.recv_into, self._view
        now = time.time
        for _ in range(limit):
            try:
                n = recv(self._buf, MAX_FRAME, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if n > MAX_FRAME:
                self.cut += 1
                n = MAX_FRAME
            out.append((now(), bytes(view[:n])))
        return out

    def poll_stats(self) -> Stats:
        """The kernel's counts so far (the kernel resets its own on each read: summed here)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12 if self._ring is not None else 8)
        packets, drops = struct.unpack_from("II", raw)
        self.stats.received += packets - drops  # tp_packets counts the dropped ones too
        self.stats.dropped += drops
        return self.stats

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()

    def close(self) -> None:
        self._close_ring()
        self.sock.close()


class Ring:
    """A TPACKET_V3 receive ring: the kernel writes frames into blocks of a shared
    mapping and hands over a block when it is full or ``RING_TIMEOUT_MS`` old, so a
    worker reads thousands of frames per wake-up without a system call per frame.

    Layout (include/uapi/linux/if_packet.h): a block opens with ``tpacket_block_desc``
    (status at 8, frame count at 12, first frame's offset at 16); each frame with a
    ``tpacket3_hdr`` (next frame's offset at 0, seconds at 4, nanoseconds at 8, bytes
    captured at 12, length on the wire at 16, link header's offset at 24).
    """

    BLOCK = 1 << 20
    BLOCKS = 32
    FRAME = 1 << 11  # only a unit of accounting in V3: frames are packed by their size

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        req = struct.pack("7I", self.BLOCK, self.BLOCKS, self.FRAME, self.BLOCK // self.FRAME * self.BLOCKS,
                          RING_TIMEOUT_MS, 0, 0)  # fmt: skip
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.map = mmap.mmap(sock.fileno(), self.BLOCK * self.BLOCKS, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.next = 0  # the block the kernel hands over next

    def read(self) -> tuple[list[tuple[float, bytes]], int]:
        """The frames of every block handed over (returned to the kernel at once), and
        how many were cut (captured shorter than on the wire)."""
        out: list[tuple[float, bytes]] = []
        cut = 0
        m, unpack = self.map, _HDR.unpack_from
        for _ in range(self.BLOCKS):
            base = self.next * self.BLOCK
            status, count, off = _BLOCK.unpack_from(m, base + 8)
            if not status & TP_STATUS_USER:
                break
            at = base + off
            for _ in range(count):
                nxt, sec, nsec, snap, wire, mac = unpack(m, at)
                start = at + mac
                out.append((sec + nsec * 1e-9, m[start : start + snap]))
                if snap < wire:
                    cut += 1
                at += nxt
            struct.pack_into("I", m, base + 8, TP_STATUS_KERNEL)  # the block goes back to the kernel
            self.next = (self.next + 1) % self.BLOCKS
        return out, cut

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.map.close()


_BLOCK = struct.Struct("III")  # block_status, num_pkts, offset_to_first_pkt
_HDR = struct.Struct("IIIIIxxxxH")  # next offset, sec, nsec, snaplen, len, (status), mac


def packet_socket() -> socket.socket:
    """An AF_PACKET socket bound to nothing yet, or a clear error without the privilege."""
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise ConfigError(
            "capturing or sending raw frames needs root (CAP_NET_RAW; CAP_NET_ADMIN for the fanout group "
            "and promiscuous mode)"
        ) from None


class Emitter:
    """Frames sent out of ``interface`` as they are (the NAT's translated packets)."""

    def __init__(self, interface: str) -> None:
        sock = packet_socket()
        try:
            sock.bind((interface, 0))
        except OSError as e:
            sock.close()
            if e.errno in (errno.ENODEV, errno.ENXIO):
                raise ConfigError(f"no network interface {interface!r} here") from e
            raise
        self.sock, self.sent, self.failed = sock, 0, 0

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
            self.sent += 1
        except OSError:  # ENOBUFS, EMSGSIZE (over the MTU): lost like on a wire
            self.failed += 1

    def close(self) -> None:
        self.sock.close()
