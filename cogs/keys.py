"""Every Redis key and channel name cogs uses, in one place.

All keys of one state entry share the hash tag ``{<key>}`` so they live in one slot
(the value, its alert marker, later its version and replica table). The NF key is
the tag itself, so entries of different states for the same NF key (say, the ports
and the hosts a source probed) land on the same node and can be updated in one call.
"""

from __future__ import annotations

import functools
from binascii import crc_hqx

PREFIX = "cogs:"
SLOTS = 16384
MAX_KEY_BYTES = 512

#: Pub/sub channel every alert is published on (classic PUBLISH reaches every node).
ALERTS_CHANNEL = "cogs:alerts"
#: Prefix of the per-node alert streams (durable alerts).
ALERTS_STREAM_PREFIX = "cogs:alerts:"


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


#: Discard-replica messages for one proxy (classic pub/sub: reaches every node).
DISCARD_PREFIX = "cogs:discard:"
#: Proxy registry / heartbeat keys: one per proxy, expiring unless refreshed.
PROXY_PREFIX = "cogs:proxy:"


def discard_channel(proxy_id: str) -> str:
    return DISCARD_PREFIX + proxy_id


#: Sorted set of proxy ids by last heartbeat (ms), so the monitor lists proxies
#: without scanning the keyspace; the heartbeat keys stay the liveness truth.
PROXY_INDEX = "cogs:proxies"


def proxy_key(proxy_id: str) -> str:
    """The heartbeat key of a proxy (hash tag = its id)."""
    return f"{PROXY_PREFIX}{{{proxy_id}}}"


KEY_RULE = f"a key must be a non-empty str of at most {MAX_KEY_BYTES} bytes (escaped)"


def bad_key(key: object) -> bool:
    """True unless ``key`` is a usable NF key: a non-empty str of at most MAX_KEY_BYTES."""
    return type(key) is not str or not key or len(escape(key).encode()) > MAX_KEY_BYTES


def once_keys(tag: str, proxy_id: str) -> tuple[str, str]:
    """The exactly-once records of a proxy on the node whose alert stream has ``tag``
    (lua/once.lua writes them): highest batch number + stored replies, and their list."""
    return f"cogs:seq:{{{tag}}}:{proxy_id}", f"cogs:seql:{{{tag}}}:{proxy_id}"
