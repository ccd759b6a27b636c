"""Every Redis key, channel and function name cogs uses, in one place.

All keys of one state entry share the hash tag ``{<key>}`` so they live in one slot
(the value, its alert marker, later its version and replica table). The NF key is
the tag itself, so entries of different states for the same NF key (say, the ports
and the hosts a source probed) land on the same node and can be updated in one call.

Several NFs share one cluster, each in a :class:`Namespace` of its own: the default
NF keeps the names cogs always used (``cogs:...``, library ``cogs``, functions
``cogs_batch``...), an NF ``ids`` has ``cogs@ids:...``, library ``cogs_ids`` and
functions ``cogs_ids_batch``... (Redis function names are global). The module-level
names below are the default NF's.
"""

from __future__ import annotations

import functools
import hashlib
import re
from binascii import crc_hqx
from dataclasses import dataclass, field

from cogs.errors import ConfigError
from cogs.protocol import (
    ALERTS_CHANNEL,
    ALERTS_STREAM_PREFIX,
    DISCARD_PREFIX,
    FUNCTIONS,
    HELD_PREFIX,
    LIBRARY,
    MAX_KEY_BYTES,
    MAX_PROXY_ID,
    ONCE_PREFIX,
    PREFIX,
    names,
)

SLOTS = 16384
DEFAULT_NF = "default"
NF_RULE = "an NF name is 1-24 characters of a-z, 0-9 and _, starting with a letter"
_NF_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
#: The NFs loaded besides the default one (``cogs catalog load --nf``, as the admin), for
#: the monitor and the keeper: outside every NF's namespace, so no NF's proxy user can
#: add names to it or empty it (the monitors may read it: cogs/acl.py).
NF_INDEX = "cogs!nfs"


def nf_problem(nf: object) -> str | None:
    """Why ``nf`` cannot name an NF (None: it can)."""
    if not isinstance(nf, str) or not _NF_RE.match(nf):
        return f"{nf!r}: {NF_RULE}"
    return None


@dataclass(frozen=True)
class Namespace:
    """The names of one NF's keys, channels, library and functions (see the module)."""

    nf: str = DEFAULT_NF
    prefix: str = field(init=False)
    library: str = field(init=False)
    fn_batch: str = field(init=False)
    fn_info: str = field(init=False)
    fn_release: str = field(init=False)
    fn_beat: str = field(init=False)
    alerts_channel: str = field(init=False)
    alerts_stream_prefix: str = field(init=False)
    discard_prefix: str = field(init=False)
    once_prefix: str = field(init=False)
    held_prefix: str = field(init=False)
    limit_prefix: str = field(init=False)
    created_prefix: str = field(init=False)
    usage_prefix: str = field(init=False)
    proxy_prefix: str = field(init=False)
    #: sorted set of proxy ids by last heartbeat (ms): the monitor lists proxies
    #: without scanning; the heartbeat keys stay the liveness truth
    proxy_index: str = field(init=False)
    #: the janitor's lock (registry.py), in the index's slot (its tag is the index's name)
    janitor_lock: str = field(init=False)

    def __post_init__(self) -> None:
        if problem := nf_problem(self.nf):
            raise ConfigError(f"bad NF name {problem}")
        default = self.nf == DEFAULT_NF
        prefix = PREFIX if default else f"cogs@{self.nf}:"
        library = LIBRARY if default else f"{LIBRARY}_{self.nf}"
        n = names(prefix)
        values = {
            "prefix": prefix, "library": library,
            **{f"fn_{f}": f"{library}_{f}" for f in FUNCTIONS},
            "alerts_channel": n["ALERTS_CHANNEL"], "alerts_stream_prefix": n["ALERTS_STREAM_PREFIX"],
            "discard_prefix": n["DISCARD_PREFIX"], "once_prefix": n["ONCE_PREFIX"], "held_prefix": n["HELD_PREFIX"],
            "limit_prefix": n["LIMIT_PREFIX"], "created_prefix": n["CREATED_PREFIX"],
            "usage_prefix": n["USAGE_PREFIX"], "proxy_prefix": prefix + "proxy:", "proxy_index": prefix + "proxies",
            "janitor_lock": f"{prefix}janitor:{{{prefix}proxies}}",
        }  # fmt: skip
        for k, v in values.items():
            object.__setattr__(self, k, v)

    @property
    def default(self) -> bool:
        return self.nf == DEFAULT_NF

    def state_key(self, state: str, escaped_key: str) -> str:
        """The Redis key holding the value of ``state[key]`` (key already escaped)."""
        return f"{self.prefix}{state}:{{{escaped_key}}}"

    def alert_stream(self, s: int) -> str:
        """The alert stream stored in slot ``s``."""
        return f"{self.alerts_stream_prefix}{{{slot_tag(s)}}}"

    def stream_tag(self, stream: str) -> str:
        """The hash tag of an alert stream ``<prefix>alerts:{tag}``: it names the node serving it."""
        return stream[len(self.alerts_stream_prefix) + 1 : -1]

    def discard_channel(self, proxy_id: str) -> str:
        return self.discard_prefix + proxy_id

    def proxy_key(self, proxy_id: str) -> str:
        """The heartbeat key of a proxy (hash tag = its id)."""
        return f"{self.proxy_prefix}{{{proxy_id}}}"

    def once_key(self, stream: str, session: str) -> str:
        """The exactly-once record of a proxy session's channel to the node serving ``stream``
        (lua/once.lua): named by the session's SHA-1, so the name never reveals the secret."""
        return f"{self.once_prefix}{{{self.stream_tag(stream)}}}:{hashlib.sha1(session.encode()).hexdigest()}"

    def held_key(self, stream: str, proxy_id: str) -> str:
        """The keys ``proxy_id`` holds replicas of, on the node serving ``stream`` (lua/replica.lua)."""
        return f"{self.held_prefix}{{{self.stream_tag(stream)}}}:{proxy_id}"

    def limit_key(self, stream: str) -> str:
        """The NF's ops-rate token bucket on the node serving ``stream`` (lua/api.lua)."""
        return f"{self.limit_prefix}{{{self.stream_tag(stream)}}}"

    def created_key(self, stream: str) -> str:
        """What the library created on the node serving ``stream`` since the keeper's last count."""
        return f"{self.created_prefix}{{{self.stream_tag(stream)}}}"

    def usage_key(self, stream: str) -> str:
        """The keeper's count of the NF's keys and bytes on the node serving ``stream``."""
        return f"{self.usage_prefix}{{{self.stream_tag(stream)}}}"

    def acl_user(self, role: str) -> str:
        """``cogs-proxy`` (default NF) or ``cogs-<nf>-proxy``: the ACL users of ``cogs acl apply``."""
        return f"cogs-{role}" if self.default else f"cogs-{self.nf}-{role}"


@functools.cache
def namespace(nf: str = DEFAULT_NF) -> Namespace:
    """The names of NF ``nf`` (a bad name raises :class:`ConfigError` naming the rule)."""
    return Namespace(nf)


DEFAULT = namespace()


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
    """The Redis key holding the value of ``state[key]`` (key already escaped; default NF)."""
    return DEFAULT.state_key(state, escaped_key)


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
    """The alert stream stored in slot ``s`` (default NF)."""
    return DEFAULT.alert_stream(s)


#: Proxy registry / heartbeat keys: one per proxy, expiring unless refreshed (default NF).
PROXY_PREFIX = DEFAULT.proxy_prefix
PROXY_INDEX = DEFAULT.proxy_index
JANITOR_LOCK = DEFAULT.janitor_lock


def discard_channel(proxy_id: str) -> str:
    return DEFAULT.discard_channel(proxy_id)


def proxy_key(proxy_id: str) -> str:
    """The heartbeat key of a proxy (hash tag = its id; default NF)."""
    return DEFAULT.proxy_key(proxy_id)


PROXY_ID_RULE = f"a proxy id is 1-{MAX_PROXY_ID} characters of A-Z, a-z, 0-9, _ . : and -"
#: what a proxy id may be (lua/api.lua refuses any other in a batch): entries of the
#: proxy index, holder sets and heartbeat keys naming anything else were written
#: outside cogs (any client the ACL lets register can write there)
VALID_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_PROXY_ID}}}")


def proxy_id_problem(pid: object) -> str | None:
    """Why ``pid`` cannot be a proxy id (None: it can)."""
    if not isinstance(pid, str) or not VALID_ID.fullmatch(pid):
        return f"{pid!r:.80}: {PROXY_ID_RULE}"
    return None


def valid_proxy_id(raw: bytes | str) -> str | None:
    """``raw`` (a member of the proxy index, say) as a proxy id, or None if it is none."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_PROXY_ID:
            return None
        raw = raw.decode("latin-1")  # any non-ASCII byte fails the pattern below
    return raw if VALID_ID.fullmatch(raw) else None


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
    """The hash tag of an alert stream ``<prefix>alerts:{tag}``: it names the node serving it."""
    return stream[stream.index("{") + 1 : -1]


def once_key(stream: str, session: str) -> str:
    """The exactly-once record of a session's channel (default NF; Namespace.once_key)."""
    return DEFAULT.once_key(stream, session)


def held_key(stream: str, proxy_id: str) -> str:
    """The keys ``proxy_id`` holds replicas of on a node (default NF; Namespace.held_key)."""
    return DEFAULT.held_key(stream, proxy_id)


__all__ = [
    "ALERTS_CHANNEL",
    "ALERTS_STREAM_PREFIX",
    "DEFAULT",
    "DEFAULT_NF",
    "DISCARD_PREFIX",
    "HELD_PREFIX",
    "JANITOR_LOCK",
    "KEY_RULE",
    "MAX_KEY_BYTES",
    "NF_INDEX",
    "NF_RULE",
    "ONCE_PREFIX",
    "PREFIX",
    "PROXY_ID_RULE",
    "PROXY_INDEX",
    "PROXY_PREFIX",
    "SLOTS",
    "VALID_ID",
    "Namespace",
    "alert_marker",
    "alert_stream",
    "bad_key",
    "discard_channel",
    "escape",
    "held_key",
    "key_problem",
    "namespace",
    "nf_problem",
    "once_key",
    "proxy_id_problem",
    "proxy_key",
    "slot",
    "slot_tag",
    "state_key",
    "stream_tag",
    "unescape",
    "valid_proxy_id",
]
