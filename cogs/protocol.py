"""The wire protocol between proxies and the Lua library, defined once.

Op modes, key prefixes, limits and reply codes live here; the library assembler
writes them into the Lua library's header (``lua_constants``), so both sides read
the same numbers and names. Frame building is in cogs/coordinator/frames.py.

A batch is one call::

    FCALL cogs_batch 0 <token> <alert stream> <ops> <proxy id> [<session> <seq> <ack> [R]]

(``cogs_<nf>_batch`` for an NF other than the default one; every key name starts with
its NF's prefix).

``ops`` is a flat JSON array of runs (mode, state index, op, n, n x (key, arg)).
A batch carrying a session is numbered on its channel (lua/once.lua): applied
exactly once, in order, or refused whole with one of the ``CHANNEL_*`` codes.
"""

from __future__ import annotations

from enum import IntEnum


class Mode(IntEnum):
    """What an op asks of the coordinator (the paper's operations, and the tables)."""

    UPDATE = 0  # Update: trigger path, no reply
    UPDATE_GET = 1  # SynUp / AsynUp: the new state
    RETRIEVE = 2  # Retrieve
    CHECK = 3  # Check
    RETRIEVE_REPLICA = 4  # Retrieve that leaves a replica at the caller (replica reference table)
    LOCATE = 5  # indirect: the owner's locator (state reference table)
    CLAIM = 6  # indirect: become the owner when nobody (or a dead owner) is
    OWNER = 7  # indirect: the owner changed its value (new version, discards)
    FORGET = 8  # indirect: drop a dead owner's locator
    RELEASE = 9  # a replica holder lets go of a key (it no longer caches it)


#: modes whose ops may be applied twice with the same effect; a batch of only these
#: needs no number (claim is repeatable by its claimer, forget and release by anyone)
IDEMPOTENT = frozenset(
    {Mode.RETRIEVE, Mode.CHECK, Mode.RETRIEVE_REPLICA, Mode.LOCATE, Mode.CLAIM, Mode.FORGET, Mode.RELEASE}
)
#: modes whose reply the caller reads (an update of the trigger path has none)
ANSWERED = frozenset(set(Mode) - {Mode.UPDATE})

#: The default NF's key prefix and library name (single-NF use: what cogs always used).
#: Another NF ``<nf>`` has the prefix ``cogs@<nf>:`` and the library ``cogs_<nf>``
#: (cogs/keys.py, Namespace): every name below is made from its NF's prefix.
PREFIX = "cogs:"
LIBRARY = "cogs"
MAX_KEY_BYTES = 512
MAX_PROXY_ID = 64
ALERTS_MAXLEN = 100_000
#: How long a channel record outlives its last batch; live proxies keep theirs fresh.
ONCE_TTL_MS = 86_400_000
#: A proxy's heartbeat entry (JSON, lua/registry.lua) is at most this long; a reader
#: takes no more of one (an owner's, for its peer address).
MAX_HEARTBEAT = 65_536
#: A set or map state that declares no max_items holds at most this many (enforced on
#: write and on read): what one whole read (members, all) hands a proxy stays bounded.
DEFAULT_MAX_ITEMS = 65_536
#: The message a node publishes on a proxy id's discard channel when it dropped every
#: holder entry of that id (cogs_release: a restart with the same id, a close, the
#: janitor): every process subscribed with the id drops its whole replica cache.
DROP_ALL = "release"
#: The library's functions are ``<library>_<name>`` (Redis function names are global).
FUNCTIONS = ("batch", "info", "release", "beat")


def names(prefix: str) -> dict[str, str]:
    """The channel and key prefixes of the NF whose keys start with ``prefix``."""
    return {
        # pub/sub channel every alert is published on (classic PUBLISH reaches every node)
        "ALERTS_CHANNEL": prefix + "alerts",
        # per-node alert streams (durable alerts); the stream's tag names the node
        "ALERTS_STREAM_PREFIX": prefix + "alerts:",
        # discard-replica messages for one proxy (classic pub/sub: reaches every node)
        "DISCARD_PREFIX": prefix + "discard:",
        # exactly-once channel records (lua/once.lua): <prefix>once:{tag}:<sha1(session)>
        "ONCE_PREFIX": prefix + "once:",
        # per node, the keys a proxy holds replicas of: <prefix>held:{tag}:<proxy id>
        "HELD_PREFIX": prefix + "held:",
        # per node, the NF's ops-rate token bucket (lua/api.lua): <prefix>limit:{tag}
        "LIMIT_PREFIX": prefix + "limit:",
        # per node, what the library created since the keeper's last count: <prefix>created:{tag}
        "CREATED_PREFIX": prefix + "created:",
        # per node, the keeper's count of the NF's keys and bytes (cogs/keeper.py), outside
        # the NF's namespace: its proxies may read it (ACL %R~), never write it
        "USAGE_PREFIX": usage_prefix(prefix),
    }


def usage_prefix(prefix: str) -> str:
    """``cogs:`` -> ``cogs!usage:``, ``cogs@ids:`` -> ``cogs!usage@ids:``: no NF's key
    pattern (``cogs:*``, ``cogs@<nf>:*``) matches it."""
    assert prefix.startswith("cogs")
    return "cogs!usage" + prefix[4:]


_DEFAULT = names(PREFIX)
ALERTS_CHANNEL = _DEFAULT["ALERTS_CHANNEL"]
ALERTS_STREAM_PREFIX = _DEFAULT["ALERTS_STREAM_PREFIX"]
DISCARD_PREFIX = _DEFAULT["DISCARD_PREFIX"]
ONCE_PREFIX = _DEFAULT["ONCE_PREFIX"]
HELD_PREFIX = _DEFAULT["HELD_PREFIX"]

#: Whole-batch refusals of a numbered batch (nothing applied), by the first word:
CHANNEL_GAP = "GAP"  # an older batch of the channel is missing: re-send in order
CHANNEL_LOST = "LOST"  # acknowledged batches are gone (failover before replication)
CHANNEL_DUP_UNKNOWN = "DUP_UNKNOWN"  # a re-sent batch whose reply was dropped: a proxy bug
UNAVAILABLE = "UNAVAILABLE"  # the node could not run it now (cluster down, loading, OOM)

#: Error replies (first word) that mean "not now": the call changed nothing and is
#: re-sent with backoff. Redis's own, and the library's UNAVAILABLE and GAP.
TRANSIENT = frozenset(
    {
        "CLUSTERDOWN", "LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY", "NOREPLICAS", "BUSY", "OOM",
        UNAVAILABLE, CHANNEL_GAP,
    }
)  # fmt: skip


def lua_constants(prefix: str = PREFIX, library: str = LIBRARY, nf: str = "default") -> str:
    """The Lua header lines the library of one NF is assembled with (its prefix, its
    function names: what keeps NFs apart in one cluster)."""
    consts: dict[str, str | int] = {
        "NF": nf,
        "PREFIX": prefix,
        "MAX_KEY": MAX_KEY_BYTES,
        "MAX_PROXY_ID": MAX_PROXY_ID,
        "ALERTS_MAXLEN": ALERTS_MAXLEN,
        "ONCE_TTL_MS": ONCE_TTL_MS,
        "DEFAULT_MAX_ITEMS": DEFAULT_MAX_ITEMS,
        "MAX_HEARTBEAT": MAX_HEARTBEAT,
        "DROP_ALL": DROP_ALL,
        **names(prefix),
        **{f"FN_{f.upper()}": f"{library}_{f}" for f in FUNCTIONS},
    }
    lines = [f"local {k} = {v!r}" if isinstance(v, str) else f"local {k} = {v}" for k, v in consts.items()]
    modes = ", ".join(f"{m.name} = {m.value}" for m in Mode)
    lines.append(f"local MODE = {{ {modes} }}")
    return "\n".join(lines)
