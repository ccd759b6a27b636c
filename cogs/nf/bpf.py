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
#: is IPv4 and not a later fragment); IPv6 TCP passes whole (libpcap cannot index an
#: IPv6 transport header behind extension headers), the detector sorts it out.
_HTTP_METHODS = ("GET ", "POST", "HEAD", "PUT ", "DELE", "OPTI", "PATC")  # first 4 bytes: payloads.METHODS
FILTERS: dict[str, str] = {
    # a SYN (an attempt, an acceptance) or a RST (a refusal): the only packets it counts
    "portscan": "(tcp[tcpflags] & (tcp-syn|tcp-rst) != 0) or (ip6 and tcp)",
    # queries: to port 53 over UDP or TCP, IPv4 or IPv6
    "dnstunnel": "udp dst port 53 or tcp dst port 53",
    # TCP segments whose payload starts with an HTTP method
    "sidejack": "(tcp and ("
    + " or ".join(f"tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x{m.encode().hex()}" for m in _HTTP_METHODS)
    + ")) or (ip6 and tcp)",
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
