"""Identifiers taken from packets, bounded by construction.

A cookie, a DNS name or a host name in a packet is attacker-controlled: any length,
any bytes. An NF turns it into a state key or a set member with :func:`ident`, which
always returns printable ASCII of at most :data:`IDENT_MAX` bytes that the proxy
accepts as is (no character ``keys.escape`` would expand), so no packet can make an
update fail and blind the detector:

* bytes outside printable ASCII, and ``\\ % } |`` (the escape character, the key
  escapes, the NF key separator) are written ``\\xNN``: injective, so two different
  values never share an identifier;
* a value still longer than :data:`IDENT_MAX` becomes a readable prefix, its length
  and a 128-bit BLAKE2b digest of the whole value: every middlebox derives the same
  identifier from the same value, so a long-cookie sidejack is still two clients on
  one key, and two long values differ unless BLAKE2b collides.
"""

from __future__ import annotations

from hashlib import blake2b

#: the longest identifier (bytes); leaves room for a run's key prefix under the
#: proxy's 512-byte key limit
IDENT_MAX = 256
#: characters of a long value shown before its digest
PREFIX_CHARS = 64

_KEEP = frozenset(range(0x21, 0x7F)) - {ord(c) for c in "\\%}|"}
_KEEP_BYTES = bytes(sorted(_KEEP))
_TABLE = tuple(chr(b) if b in _KEEP else f"\\x{b:02x}" for b in range(256))


def safe_text(raw: bytes) -> str:
    """``raw`` as printable ASCII: kept byte for byte where it is printable and not
    one of ``\\ % } |``, else ``\\xNN``."""
    if not raw.translate(None, _KEEP_BYTES):  # the common case: every byte kept (one C pass)
        return raw.decode("ascii")
    return "".join([_TABLE[b] for b in raw])


def bound(text: str) -> str:
    """``text`` (already safe: printable ASCII) if it fits in :data:`IDENT_MAX`, else
    ``<prefix>~<length>~<digest>`` (at most 64 + 45 bytes)."""
    if len(text) <= IDENT_MAX:
        return text
    prefix = text[:PREFIX_CHARS]
    cut = prefix.rfind("\\", PREFIX_CHARS - 3)
    if cut >= 0:  # do not show half a \xNN
        prefix = prefix[:cut]
    return f"{prefix}~{len(text)}~{blake2b(text.encode(), digest_size=16).hexdigest()}"


def ident(raw: bytes) -> str:
    """The identifier of ``raw``: :func:`bound` of its :func:`safe_text`."""
    return bound(safe_text(raw))


def ident_str(value: str) -> str:
    """:func:`ident` of a str (UTF-8; a lone surrogate kept as its own bytes instead of
    raising, so no decoded value can break it)."""
    return ident(value.encode("utf-8", "surrogatepass"))


def bounded_message(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, naming its full length: for log lines and
    errors that may quote packet contents (a 1 MB cookie must not make a 1 MB line)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} chars)"
