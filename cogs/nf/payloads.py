"""Application payloads the detectors read: DNS questions and HTTP request cookies.

Both parsers work on bytes and read only what a detector needs, as leniently as the
servers that act on it: a DNS server answers the question whatever follows it, and a
web application reads a cookie from the first segment of a request whose body has
not arrived. A full-message parser (dpkt) rejects such a message whole: a tunnel using
8-bit labels, or a sidejacker sending a POST with a large body, went unseen. What is
malformed is counted by reason in ``counters``; nothing here raises on any input.

Work per packet is bounded: at most :data:`MAX_QUESTIONS` questions per DNS message,
names of at most 255 wire bytes (RFC 1035), a bounded chain of compression pointers,
:data:`MAX_REQUESTS` pipelined requests and :data:`MAX_COOKIES` cookies per segment
(the rest counted).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

MAX_QUESTIONS = 4  # resolvers answer one; a message claiming 65,535 costs no more
MAX_NAME_WIRE = 255
MAX_POINTERS = 16
METHODS = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})
#: pipelined requests read in one segment
MAX_REQUESTS = 16
#: cookies read in one segment: past what a browser sends (Chrome keeps 180 a domain)
MAX_COOKIES = 256
#: session cookies of one request sent as updates (see ``SideJack``)
MAX_SESSION_COOKIES = 16
MAX_METHOD = 32
MAX_LINE = 8192  # a request line servers accept (Apache's LimitRequestLine)
# what a method is made of: every registered one is (RFC 9110 allows any token, nginx
# takes these), and the live pre-filter (bpf.py) admits the segments starting so
_METHOD_CHARS = b"-_ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CRLF = frozenset(b"\r\n")
_SKIP_CRLF = re.compile(rb"[\r\n]*")
_HEAD_END = re.compile(rb"\n\r?\n")
_VERSION = re.compile(rb" HTTP/\d\.\d\r?$")


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


def http_requests(payload: bytes, counters: Counter[str]) -> list[list[tuple[bytes, bytes]]] | None:
    """The cookies (``(name, value)``, raw bytes as the server receives them) of each
    HTTP request in ``payload``, pipelined ones one after the other; None when
    ``payload`` starts no request.

    Read as servers read: empty lines before a request line are skipped (RFC 9112
    2.2); the method is any of 3 to :data:`MAX_METHOD` upper-case letters, ``-`` and
    ``_`` starting with a letter, as every registered method (one a server does not
    know still reaches the application: PHP runs for ``PROPFIND``), followed by a
    request line ending in ``HTTP/x.y``; a request's head ends at an empty line, or
    with the segment (its cookies are usually in it); a body of ``Content-Length``
    bytes is skipped to reach the next request. At most :data:`MAX_REQUESTS` requests
    and :data:`MAX_COOKIES` cookies in all are read, the rest counted.
    """
    if payload.startswith(b"HTTP"):  # a response: the common case of what is not a request
        return None
    out: list[list[tuple[bytes, bytes]]] = []
    at, n, room = 0, len(payload), MAX_COOKIES
    while at < n:
        if payload[at] in _CRLF:
            at = _SKIP_CRLF.match(payload, at).end()  # type: ignore[union-attr]  # always matches
        sp = payload.find(b" ", at, at + MAX_METHOD + 1)
        if sp <= at or (payload[at:sp] not in METHODS and not _other_method(payload, at, sp)):
            break
        if len(out) == MAX_REQUESTS:
            counters["http requests over the limit"] += 1
            break
        stop, after = _head_end(payload, at)
        head = payload[at:stop].lower()
        cookies, room = _cookies(payload, at, head, room, counters)
        out.append(cookies)
        if after >= n:
            if after > n:  # the head goes on in a later segment: its cookies there are not read
                counters["http request heads continued in a later segment"] += 1
            break
        length = _body_length(head)
        if length is None:  # chunked, or a length we cannot trust: what follows is body
            break
        at = after + length
    return out or None


def _head_end(payload: bytes, at: int) -> tuple[int, int]:
    """Where the head starting at ``at`` ends and what follows its empty line starts
    (past the end of ``payload`` when the empty line is not in it)."""
    i = payload.find(b"\r\n\r\n", at)
    if i >= 0 and payload.find(b"\n\n", at, i) < 0:
        return i, i + 4
    m = _HEAD_END.search(payload, at)  # bare LFs, which servers accept too
    return (m.start(), m.end()) if m else (len(payload), len(payload) + 1)


def http_cookies(payload: bytes) -> list[tuple[bytes, bytes]] | None:
    """The cookies of the first HTTP request in ``payload`` (see :func:`http_requests`)."""
    requests = http_requests(payload, Counter())
    return requests[0] if requests else None


def url_decoded(raw: bytes) -> bytes:
    """``raw`` as PHP decodes a cookie's name and value (``%XX`` and ``+``): a session
    id sent as ``PHPSESS%49D=%35f2b...`` is the server's ``PHPSESSID=5f2b...``."""
    if b"%" not in raw and b"+" not in raw:
        return raw
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _other_method(payload: bytes, at: int, sp: int) -> bool:
    """Whether ``payload[at:sp]``, not a common method, starts a request line."""
    method = payload[at:sp]
    if len(method) < 3 or not 65 <= method[0] <= 90 or method.translate(None, _METHOD_CHARS):
        return False
    # a method no server must know: the line has to end as a request line does
    eol = payload.find(b"\n", sp, sp + MAX_LINE)
    return eol > 0 and _VERSION.search(payload, max(sp, eol - 10), eol) is not None


def _cookies(
    payload: bytes, at: int, head: bytes, room: int, counters: Counter[str]
) -> tuple[list[tuple[bytes, bytes]], int]:
    """The cookies of the head ``payload[at:at + len(head)]`` (``head`` lower-cased),
    at most ``room`` read (those past it counted), and the room left."""
    cookies: list[tuple[bytes, bytes]] = []
    i = head.find(b"\ncookie:")
    while i >= 0:
        start = i + 8
        stop = head.find(b"\n", start)
        line = payload[at + start : at + (stop if stop >= 0 else len(head))]  # original case
        pieces = line.split(b";", max(room, 0))
        if len(pieces) > room:  # the last piece holds the cookies past the bound
            rest = pieces.pop().rstrip()
            counters["cookies over the limit"] += rest.count(b";") + (not rest.endswith(b";"))
        room -= len(pieces)
        for piece in pieces:
            name, eq, value = piece.partition(b"=")
            name = name.strip()
            if eq and name:
                cookies.append((name, value.strip()))
        i = head.find(b"\ncookie:", start)
    return cookies, room


def _body_length(head: bytes) -> int | None:
    """Bytes of body after a head (lower-cased): 0 without one, None if unknown."""
    if b"\ntransfer-encoding:" in head:
        return None
    i = head.find(b"\ncontent-length:")
    if i < 0:
        return 0
    stop = head.find(b"\n", i + 16)
    value = head[i + 16 : stop if stop >= 0 else len(head)].strip()
    return int(value) if value.isdigit() and len(value) <= 9 else None
