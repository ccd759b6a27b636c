"""Application payloads the detectors read: DNS questions and HTTP request cookies.

Both parsers work on bytes and read only what a detector needs, as leniently as the
servers that act on it: a DNS server answers the question whatever follows it, and a
web application reads a cookie from the first segment of a request whose body has
not arrived. A full-message parser (dpkt) rejects such a message whole: a tunnel using
8-bit labels, or a sidejacker sending a POST with a large body, went unseen. What is
malformed is counted by reason in ``counters``; nothing here raises on any input.

Work per packet is bounded: at most :data:`MAX_QUESTIONS` questions per DNS message,
:data:`MAX_SESSION_COOKIES` session cookies per request (the rest counted), names of
at most 255 wire bytes (RFC 1035) and a bounded chain of compression pointers.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

MAX_QUESTIONS = 4  # resolvers answer one; a message claiming 65,535 costs no more
MAX_SESSION_COOKIES = 8
MAX_NAME_WIRE = 255
MAX_POINTERS = 16
METHODS = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})


class DnsQuestion(NamedTuple):
    labels: tuple[bytes, ...]  # raw bytes, ASCII letters lower-cased (names are case-insensitive)
    qtype: int


class _Malformed(Exception):
    """A message ends early or breaks a rule; ``args[0]`` is the reason counted."""


def _name(buf: bytes, off: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at ``off`` and the offset after it."""
    labels: list[bytes] = []
    wire, jumps, after, n = 1, 0, -1, len(buf)
    while True:
        if off >= n:
            raise _Malformed("dns truncated")
        ln = buf[off]
        if ln == 0:
            return tuple(labels), off + 1 if after < 0 else after
        if ln & 0xC0 == 0xC0:  # compression pointer: strictly backwards, so it ends
            if off + 1 >= n:
                raise _Malformed("dns truncated")
            ptr = (ln & 0x3F) << 8 | buf[off + 1]
            jumps += 1
            if ptr >= off or jumps > MAX_POINTERS:
                raise _Malformed("dns bad compression pointer")
            if after < 0:
                after = off + 2
            off = ptr
            continue
        if ln & 0xC0:
            raise _Malformed("dns bad label type")
        label = buf[off + 1 : off + 1 + ln]
        if len(label) < ln:
            raise _Malformed("dns truncated")
        wire += ln + 1
        if wire > MAX_NAME_WIRE:
            raise _Malformed("dns name too long")
        labels.append(label.lower())
        off += 1 + ln


def dns_questions(payload: bytes, counters: Counter[str]) -> list[DnsQuestion]:
    """The questions of a DNS query ([] for a response); those before a malformed one
    are kept, the malformed one counted."""
    if len(payload) < 12:
        counters["dns truncated"] += 1
        return []
    if payload[2] & 0x80:  # QR: a response
        return []
    qd = payload[4] << 8 | payload[5]
    if qd > MAX_QUESTIONS:
        counters["dns questions over the limit"] += qd - MAX_QUESTIONS
        qd = MAX_QUESTIONS
    out: list[DnsQuestion] = []
    off = 12
    try:
        for _ in range(qd):
            labels, off = _name(payload, off)
            if off + 4 > len(payload):
                raise _Malformed("dns truncated")
            out.append(DnsQuestion(labels, payload[off] << 8 | payload[off + 1]))
            off += 4
    except _Malformed as e:
        counters[e.args[0]] += 1
    return out


def http_cookies(payload: bytes) -> list[tuple[bytes, bytes]] | None:
    """``(name, value)`` of every cookie of the HTTP request starting ``payload``, raw
    bytes as the server receives them; None when ``payload`` starts no request.

    Reads the header lines present, up to the blank line or the end of the segment
    (the rest of a long request is in later segments; its cookies are usually not).
    """
    sp = payload.find(b" ", 0, 8)
    if sp <= 0 or payload[:sp] not in METHODS:
        return None
    end = payload.find(b"\r\n\r\n")
    head = (payload if end < 0 else payload[:end]).lower()
    cookies: list[tuple[bytes, bytes]] = []
    at = head.find(b"\ncookie:")
    while at >= 0:
        start = at + 8
        stop = head.find(b"\n", start)
        line = payload[start : stop if stop >= 0 else len(head)]  # original case
        for piece in line.split(b";"):
            name, eq, value = piece.partition(b"=")
            name = name.strip()
            if eq and name:
                cookies.append((name, value.strip()))
        at = head.find(b"\ncookie:", start)
    return cookies
