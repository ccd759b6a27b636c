"""Kernel pre-filters: tcpdump expressions compiled to classic BPF by libpcap.

A live middlebox attaches one to its capture sockets, so only the packets its
detector looks at cross into Python; the rest are dropped by the kernel at no cost
to the worker. The expression is compiled by libpcap's own compiler
(``pcap_compile`` through ctypes, the code ``tcpdump -dd`` prints), never assembled
by hand. Each filter admits a superset of what its detector uses: the detector still
decides, the filter only spares it the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

from cogs.errors import ConfigError

#: what reaches each NF. IPv4 fields are read by offset (libpcap checks that the frame
#: is IPv4 and not a later fragment; the kernel hands fragments over reassembled, see
#: capture.py); IPv6 TCP passes whole (libpcap cannot index an IPv6 transport header
#: behind extension headers), and so does IPv6 with any extension header or fragment
#: (the decoder follows and reassembles them): the detector sorts it out.
_IP6_EXT = "(ip6 and (" + " or ".join(f"ip6[6] = {n}" for n in (0, 43, 44, 51, 60, 135, 139, 140, 253, 254)) + "))"
#: a request's first payload bytes: an empty line's CR/LF, or a method as
#: payloads.http_requests reads one: an upper-case letter, then upper-case letters,
#: "-" or "_" (every registered method), so the first 4 bytes are such or a space after
#: 3; not "HTTP" (a response)
_AT = "tcp[((tcp[12:1] & 0xf0) >> 2){}:1]"


def _byte_in(i: int, ranges: tuple[tuple[int, int], ...]) -> str:
    at = _AT.format(f" + {i}" if i else "")
    return "(" + " or ".join(f"{at} = {a}" if a == b else f"({at} >= {a} and {at} <= {b})" for a, b in ranges) + ")"


_UPPER, _TOKEN = ((0x41, 0x5A),), ((0x41, 0x5A), (0x2D, 0x2D), (0x5F, 0x5F))
_REQUEST = (
    f"(({_byte_in(0, ((0x0A, 0x0A), (0x0D, 0x0D)))}) or ({_byte_in(0, _UPPER)} and {_byte_in(1, _TOKEN)} and "
    f"{_byte_in(2, _TOKEN)} and {_byte_in(3, (*_TOKEN, (0x20, 0x20)))} and "
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] != 0x48545450))"
)
FILTERS: dict[str, str] = {
    # a SYN (an attempt, an acceptance) or a RST (a refusal): the only packets it counts
    "portscan": f"(tcp[tcpflags] & (tcp-syn|tcp-rst) != 0) or (ip6 and tcp) or {_IP6_EXT}",
    # queries: to port 53 over UDP or TCP, IPv4 or IPv6
    "dnstunnel": f"udp dst port 53 or tcp dst port 53 or {_IP6_EXT}",
    # TCP segments whose payload starts like an HTTP request
    "sidejack": f"(tcp and {_REQUEST}) or (ip6 and tcp) or {_IP6_EXT}",
    # IPv4 (what the NAT translates; the rest it does not forward either)
    "nat": "ip",
}

DLT_EN10MB = 1
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):  # struct bpf_program (libpcap) and struct sock_fprog (kernel) alike
    _fields_ = [("len", ctypes.c_uint), ("insns", ctypes.POINTER(_Insn))]


class SockFprog(ctypes.Structure):
    """``struct sock_fprog`` for SO_ATTACH_FILTER: a count and a pointer."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


@functools.cache
def _libpcap() -> Any:
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise ConfigError(
            "live capture compiles its kernel filter with libpcap, which is not installed "
            "(Debian: apt-get install libpcap0.8)"
        )
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32,
    ]  # fmt: skip
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


def compile_filter(expression: str) -> list[tuple[int, int, int, int]]:
    """``expression`` (tcpdump syntax) as classic BPF for Ethernet frames: a list of
    ``(code, jt, jf, k)``, what ``tcpdump -dd`` prints."""
    lib = _libpcap()
    handle = lib.pcap_open_dead(DLT_EN10MB, SNAPLEN)
    if not handle:
        raise ConfigError("libpcap could not open a handle to compile the filter")
    prog = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
            reason = (lib.pcap_geterr(handle) or b"?").decode(errors="replace")
            raise ConfigError(f"bad capture filter {expression[:200]!r}: {reason[:200]}")
        insns = [(i.code, i.jt, i.jf, i.k) for i in prog.insns[: prog.len]]
        lib.pcap_freecode(ctypes.byref(prog))
        return insns
    finally:
        lib.pcap_close(handle)


def sock_fprog(insns: list[tuple[int, int, int, int]]) -> tuple[bytes, Any]:
    """The SO_ATTACH_FILTER argument for ``insns`` and the buffer it points to (keep
    it alive until setsockopt returns)."""
    if not 0 < len(insns) <= 4096:  # BPF_MAXINSNS
        raise ConfigError(f"a kernel filter has 1 to 4096 instructions, this one {len(insns)}")
    arr = (_Insn * len(insns))(*[_Insn(*i) for i in insns])
    prog = SockFprog(len(insns), ctypes.cast(arr, ctypes.POINTER(_Insn)))
    return bytes(prog), arr


def nf_filter(nf: str) -> list[tuple[int, int, int, int]]:
    """The compiled pre-filter of NF ``nf``."""
    if nf not in FILTERS:
        raise ConfigError(f"no capture filter for {nf!r} (have: {', '.join(FILTERS)})")
    return compile_filter(FILTERS[nf])
