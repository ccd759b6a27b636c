"""Every Redis key and channel name cogs uses, in one place.

All keys of one state entry share the hash tag ``{<key>}`` so they live in one slot
(the value, its alert marker, later its version and replica table). The NF key is
the tag itself, so entries of different states for the same NF key (say, the ports
and the hosts a source probed) land on the same node and can be updated in one call.
"""

from __future__ import annotations

import functools
import hashlib
from binascii import crc_hqx

from cogs.protocol import (
    ALERTS_CHANNEL,
    ALERTS_STREAM_PREFIX,
    DISCARD_PREFIX,
    HELD_PREFIX,
    MAX_KEY_BYTES,
    ONCE_PREFIX,
    PREFIX,
)

SLOTS = 16384


def escape(key: str) -> str:
    """Make ``key`` safe inside a hash tag: a ``}`` would end the tag early.

    ``%`` is escaped too so the mapping is reversible (the Lua side unescapes the
    key it reports in alerts).
    """
    if "%" in key or "}" in key:
        return key.replace("%", "%25").replace("}", "%7D")
    return key


def unescape(key: str) -> str:
    if "%" in key:
        return key.replace("%7D", "}").replace("%25", "%")
    return key


def slot(tag: str | bytes) -> int:
    """Cluster slot of a hash tag (CRC16/XMODEM mod 16384, as Redis computes it)."""
    data = tag.encode() if isinstance(tag, str) else tag
    return crc_hqx(data, 0) & (SLOTS - 1)


def state_key(state: str, escaped_key: str) -> str:
    """The Redis key holding the value of ``state[key]`` (key already escaped)."""
    return f"{PREFIX}{state}:{{{escaped_key}}}"


def alert_marker(state: str, escaped_key: str) -> str:
    return state_key(state, escaped_key) + ":alerted"


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest decimal string that hashes to it.

    Lets the caller name a key that lives on a given node (a node-local alert
    stream) without any lookup. About 0.2 s once per process.
    """
    tags: list[str | None] = [None] * SLOTS
    missing, i = SLOTS, 0
    while missing:
        s = str(i)
        h = crc_hqx(s.encode(), 0) & (SLOTS - 1)
        if tags[h] is None:
            tags[h] = s
            missing -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(s: int) -> str:
    return _slot_tags()[s]


def alert_stream(s: int) -> str:
    """The alert stream stored in slot ``s``."""
    return f"{ALERTS_STREAM_PREFIX}{{{slot_tag(s)}}}"


#: Proxy registry / heartbeat keys: one per proxy, expiring unless refreshed.
PROXY_PREFIX = "cogs:proxy:"


def discard_channel(proxy_id: str) -> str:
    return DISCARD_PREFIX + proxy_id


#: Sorted set of proxy ids by last heartbeat (ms), so the monitor lists proxies
#: without scanning the keyspace; the heartbeat keys stay the liveness truth.
PROXY_INDEX = "cogs:proxies"
#: The janitor's lock (registry.py), in the index's slot (its hash tag is the index's name).
JANITOR_LOCK = "cogs:janitor:{cogs:proxies}"


def proxy_key(proxy_id: str) -> str:
    """The heartbeat key of a proxy (hash tag = its id)."""
    return f"{PROXY_PREFIX}{{{proxy_id}}}"


KEY_RULE = f"a key must be a non-empty str of at most {MAX_KEY_BYTES} bytes (escaped, UTF-8)"


def key_problem(key: object) -> str | None:
    """Why ``key`` cannot be an NF key (None: it can): a non-empty str that encodes to
    UTF-8 in at most MAX_KEY_BYTES bytes once escaped."""
    if type(key) is not str:
        return f"a key must be a str, not {type(key).__name__}"
    if not key:
        return "a key must not be empty"
    try:
        n = len(escape(key).encode())
    except UnicodeEncodeError:
        return "a key must be valid Unicode (it holds a lone surrogate: decode packet bytes with errors='replace')"
    if n > MAX_KEY_BYTES:
        return f"a key is at most {MAX_KEY_BYTES} bytes (escaped, UTF-8), this one has {n}"
    return None


def bad_key(key: object) -> bool:
    """True unless ``key`` is a usable NF key (see :func:`key_problem`)."""
    return key_problem(key) is not None


def stream_tag(stream: str) -> str:
    """The hash tag of an alert stream ``cogs:alerts:{tag}``: it names the node serving it."""
    return stream[len(ALERTS_STREAM_PREFIX) + 1 : -1]


def once_key(stream: str, session: str) -> str:
    """The exactly-once record of a proxy session's channel to the node serving ``stream``
    (lua/once.lua): named by the session's SHA-1, so the name never reveals the secret."""
    return f"{ONCE_PREFIX}{{{stream_tag(stream)}}}:{hashlib.sha1(session.encode()).hexdigest()}"


def held_key(stream: str, proxy_id: str) -> str:
    """The keys ``proxy_id`` holds replicas of, on the node serving ``stream`` (lua/replica.lua)."""
    return f"{HELD_PREFIX}{{{stream_tag(stream)}}}:{proxy_id}"


__all__ = [
    "ALERTS_CHANNEL",
    "ALERTS_STREAM_PREFIX",
    "DISCARD_PREFIX",
    "JANITOR_LOCK",
    "KEY_RULE",
    "MAX_KEY_BYTES",
    "PREFIX",
    "PROXY_INDEX",
    "PROXY_PREFIX",
    "SLOTS",
    "alert_marker",
    "alert_stream",
    "bad_key",
    "discard_channel",
    "escape",
    "held_key",
    "key_problem",
    "once_key",
    "proxy_key",
    "slot",
    "slot_tag",
    "state_key",
    "stream_tag",
    "unescape",
]
