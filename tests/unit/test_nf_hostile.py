"""Identifiers and payload parsers that no packet can break (issue 16, item 5)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cogs.keys import MAX_KEY_BYTES, bad_key, escape
from cogs.nf.detectors import DETECTORS, DnsTunnel, SideJack
from cogs.nf.ident import IDENT_MAX, bounded_message, ident, ident_str, safe_text
from cogs.nf.packets import TCP, UDP, Packet, read_trace
from cogs.nf.payloads import dns_questions, http_cookies
from tests.hostile import LONG_COOKIE, SURROGATE, Hostile, expected_ident


def test_safe_text_keeps_printable_ascii_and_is_injective() -> None:
    assert safe_text(b"PHPSESSID=abc123") == "PHPSESSID=abc123"
    assert safe_text(b"a b\x00\xff") == "a\\x20b\\x00\\xff"
    assert safe_text(SURROGATE) == "\\xed\\xa0\\x80"
    # the escape character and the key escapes are escaped themselves: no two inputs meet
    assert safe_text(b"\\x41") == "\\x5cx41" != safe_text(b"A")
    assert safe_text(b"%7D}|") == "\\x257D\\x7d\\x7c"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_make_a_key_the_proxy_accepts(raw: bytes) -> None:
    key = ident(raw)
    assert key.isascii()
    assert len(key) <= IDENT_MAX
    assert escape(key) == key  # nothing the proxy's key escaping expands
    assert not bad_key("run-12345678|mb12|" + key)
    assert ident(raw) == key  # the same on every box


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500))
def test_any_str_makes_an_identifier(value: str) -> None:
    key = ident_str(value + "\ud800")  # a lone surrogate: no UnicodeEncodeError
    assert key.isascii()
    assert len(key) <= IDENT_MAX


def test_long_values_become_prefix_length_digest() -> None:
    key = ident(LONG_COOKIE)
    assert key == expected_ident(LONG_COOKIE)
    assert key.startswith("PHPSESSID=0000000000000001")
    assert f"~{len(LONG_COOKIE)}~" in key
    other = ident(LONG_COOKIE[:-1] + b"X")  # differs in the last byte only
    assert other != key
    assert other[:64] == key[:64]
    assert ident(b"\xff" * 1000).startswith("\\xff" * 16 + "~4000~")  # no half escape shown


def test_bounded_message() -> None:
    assert bounded_message("short") == "short"
    m = bounded_message("x" * 10**6)
    assert len(m) < 250
    assert m.endswith("(1000000 chars)")


def _query(name: bytes, qtype: int = 1, qd: int = 1, flags: bytes = b"\x01\x00") -> bytes:
    return b"\x12\x34" + flags + qd.to_bytes(2, "big") + b"\x00" * 6 + name + qtype.to_bytes(2, "big") + b"\x00\x01"


def test_dns_questions() -> None:
    c: Counter[str] = Counter()
    assert dns_questions(_query(b"\x03WWW\x07Example\x03com\x00", 16), c) == [((b"www", b"example", b"com"), 16)]
    assert dns_questions(_query(b"\x03www\x00", flags=b"\x81\x80"), c) == []  # a response
    # 8-bit labels are names too (iodine's raw mode); a dot inside a label stays in it
    assert dns_questions(_query(b"\x03a.\xff\x01x\x00"), c) == [((b"a.\xff", b"x"), 1)]
    # a pointer back into the message is followed; the next question starts after it
    two = _query(b"\x01a\x07example\x00", qd=2) + b"\x01b\xc0\x0e\x00\x10\x00\x01"
    assert [q.labels for q in dns_questions(two, c)] == [(b"a", b"example"), (b"b", b"example")]
    assert not c
    for bad, reason in [
        (_query(b"\xc0\x0c"), "dns bad compression pointer"),  # to itself
        (_query(b"\x01a\xc0\x20"), "dns bad compression pointer"),  # forwards
        (_query(b"\x41abc"), "dns bad label type"),
        (_query((b"\x3f" + b"x" * 63) * 5 + b"\x00"), "dns name too long"),
        (_query(b"\x05ab"), "dns truncated"),
        (b"\x00" * 5, "dns truncated"),
    ]:
        c.clear()
        assert dns_questions(bad, c) == []
        assert c == {reason: 1}, bad
    c.clear()
    assert len(dns_questions(_query(b"\x01a\x00", qd=65535) * 2, c)) <= 4
    assert c["dns questions over the limit"] == 65531


def test_http_cookies() -> None:
    req = b'GET / HTTP/1.1\r\nHost: x\r\ncookie: a=1; PHPSESSID="q" ;b\r\nCOOKIE:sid=\xff\r\n\r\nCookie: body=1'
    assert http_cookies(req) == [(b"a", b"1"), (b"PHPSESSID", b'"q"'), (b"sid", b"\xff")]
    assert http_cookies(b"HTTP/1.1 200 OK\r\nCookie: a=1\r\n\r\n") is None  # not a request
    assert http_cookies(b"GET") is None
    # a request cut in its headers (a POST whose body follows): the cookies present count
    assert http_cookies(b"POST /login HTTP/1.1\r\nContent-Length: 99999\r\nCookie: sid=z") == [(b"sid", b"z")]


def _record() -> tuple[list[tuple[str, str, str, Any]], Any]:
    calls: list[tuple[str, str, str, Any]] = []
    return calls, lambda *a: calls.append(a)


def test_sidejack_keys_are_bounded_and_the_same_for_the_same_cookie() -> None:
    calls, up = _record()
    d = SideJack(up)
    for src in ("192.168.3.50", "198.51.100.50"):
        d.packet(Packet(0.0, src, "10.0.0.80", TCP, 1, 80, 0, b"GET / HTTP/1.1\r\nCookie: " + LONG_COOKIE + b"\r\n"))
    assert [c[1] for c in calls] == [expected_ident(LONG_COOKIE)] * 2
    assert [c[3] for c in calls] == ["192.168.3.50", "198.51.100.50"]


def test_dnstunnel_names_of_8bit_labels() -> None:
    calls, up = _record()
    d = DnsTunnel(up)
    d.packet(
        Packet(0.0, "192.168.2.7", "10.0.0.53", UDP, 1, 53, 0, _query(b"\x03a.\xff\x04t\xed\xa0\x80\x07example\x00"))
    )
    subs = [c for c in calls if c[0] == "dns_subdomains"]
    assert subs == [("dns_subdomains", "t\\xed\\xa0\\x80.example", "add", "a\\x2e\\xff.t\\xed\\xa0\\x80.example")]


def test_random_payloads_never_raise() -> None:
    """Seeded fuzz: payloads that start like DNS or HTTP, then anything."""
    rng = random.Random(16)
    dets = [cls(lambda *a: None) for cls in DETECTORS.values()]
    heads = [b"GET ", b"POST / HTTP/1.1\r\nCookie: ", b"\x00\x01\x01\x00\x00\x01", b""]
    for i in range(20_000):
        payload = rng.choice(heads) + rng.randbytes(rng.randrange(80))
        p = Packet(
            i * 0.001,
            "10.0.0.1",
            "10.0.0.2",
            rng.choice((TCP, UDP)),
            1000,
            rng.choice((53, 80)),
            rng.randrange(64),
            payload,
        )
        for d in dets:
            d.packet(p)
    for d in dets:
        d.finish()


def test_hostile_capture_without_coordinator(tmp_path: Path) -> None:
    """Every packet of the hostile capture is handled by every detector without an error."""
    pcap = Hostile().build().write(tmp_path / "h.pcap")
    packets = list(read_trace(pcap))
    for cls in DETECTORS.values():
        calls, up = _record()
        d = cls(up)
        for p in packets:
            d.packet(p)
        d.finish()
        assert calls
        assert all(not bad_key(c[1]) and len(c[1]) <= MAX_KEY_BYTES for c in calls)
