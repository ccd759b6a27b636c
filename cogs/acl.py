"""Redis ACL users for a cogs coordinator: what proxies and the monitor may do.

Redis 7 checks the commands a function runs against the user who called it, so the
proxy user needs the data commands the Lua library uses, on ``cogs:*`` keys only.
It cannot touch other keys, cannot FLUSHALL, cannot (re)load the library; the
monitor user only reads. The admin (the default user, or one of your own) loads
the library and applies these rules with ``cogs acl apply``.

ACL SETUSER is per node: ``apply`` sets the users on every primary and replica, then
``ACL SAVE``s them into the node's ``aclfile`` (cogs/redis.conf names one), so a
restarted node keeps them. A node run without an aclfile keeps them until it restarts:
``apply`` says which nodes those are.

Several NFs on one cluster: each NF's users (``cogs-<nf>-proxy``, ``cogs-<nf>-monitor``)
are confined to its namespace's keys and channels (``cogs@<nf>:*``). Redis checks the
commands a function runs against the caller's user, so an IDS proxy that calls the
NAT's library (function names are global, and FCALL cannot be limited to some) is
still refused every NAT key. The default NF's monitor user reads every NF (it is the
operator's view); an NF's own monitor user reads its NF only.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from cogs.errors import ConfigError, CoordinatorUnavailable
from cogs.keys import DEFAULT, Namespace

#: what every cogs connection needs to find its way around the cluster (and no more:
#: no CLIENT LIST/KILL/TRACKING, which would show or cut other clients, or name the
#: keys they change)
_DISCOVERY = [
    "+auth", "+hello", "+ping", "+echo", "+quit", "+reset", "+readonly", "+readwrite",
    "+client|setname", "+client|getname", "+client|id", "+client|info",  # (CLIENT SETINFO: Redis 7.2+)
    "+info", "+cluster|slots", "+cluster|shards", "+cluster|info", "+cluster|myid", "+cluster|nodes",
]  # fmt: skip
#: Redis ACL key patterns do not filter commands that list the keyspace (redis#8152):
#: no cogs user may run them, or it could list every key name of the node
_NO_ENUMERATION = [
    "-scan", "-keys", "-randomkey", "-pubsub", "-psubscribe", "-punsubscribe", "-ssubscribe", "-sunsubscribe",
    "-spublish", "-cluster|getkeysinslot", "-cluster|countkeysinslot", "-object", "-memory", "-lcs", "-sort",
    "-sort_ro", "-migrate", "-dump", "-restore", "-debug", "-monitor", "-slowlog", "-latency", "-acl",
]  # fmt: skip

#: the data path: the commands its Lua library runs (Redis checks them against the
#: caller), on its NF's keys and channels only (cogs:* for the default NF)
_PROXY_COMMANDS = [
    "-@all", "+@read", "+@write", "+@scripting", "+subscribe", "+unsubscribe", "+publish", "+time", "+wait",
    *_DISCOVERY,
    # never: destructive or admin commands, loading or reading code, listing the keyspace
    "-@dangerous", "-@admin", "+info", "+cluster|slots", "+cluster|shards", "+cluster|info", "+cluster|myid",
    "+cluster|nodes", "-function", "+fcall", "+fcall_ro", "-eval", "-evalsha", "-eval_ro", "-evalsha_ro", "-script",
    *_NO_ENUMERATION,
]  # fmt: skip
_MONITOR_COMMANDS = [
    "-@all", "+@read", "+fcall_ro", "+subscribe", "+unsubscribe", *_DISCOVERY,
    "-@dangerous", "-@admin", "+info", "+cluster|slots", "+cluster|shards", "+cluster|info", "+cluster|myid",
    "+cluster|nodes", *_NO_ENUMERATION,
]  # fmt: skip


def proxy_rules(ns: Namespace = DEFAULT) -> list[str]:
    """A proxy of NF ``ns``: its library's data commands on its keys and channels only."""
    return ["resetkeys", f"~{ns.prefix}*", "resetchannels", f"&{ns.prefix}*", *_PROXY_COMMANDS]


def monitor_rules(ns: Namespace = DEFAULT) -> list[str]:
    """Read only: the catalog, the registry, alerts, node health; no keyspace listing
    (the monitor's state counts need a user allowed to SCAN: see the README). The
    default NF's monitor reads every NF (``cogs@*``); another NF's, its own."""
    if ns.default:
        keys, channels = ["%R~cogs:*", "%R~cogs@*"], ["&cogs:alerts", "&cogs@*:alerts"]
    else:
        keys, channels = [f"%R~{ns.prefix}*"], [f"&{ns.alerts_channel}"]
    return ["resetkeys", *keys, "resetchannels", *channels, *_MONITOR_COMMANDS]


PROXY_RULES = proxy_rules()
MONITOR_RULES = monitor_rules()


@dataclass(frozen=True)
class AclUser:
    name: str
    password: str
    rules: list[str]

    def setuser(self) -> list[str]:
        if not self.password or len(self.password) < 12:
            raise ConfigError(f"ACL user {self.name}: use a password of at least 12 characters")
        return ["ACL", "SETUSER", self.name, "reset", "on", f">{self.password}", *self.rules]


def users(proxy_password: str, monitor_password: str, ns: Namespace = DEFAULT) -> list[AclUser]:
    """The proxy and monitor users of NF ``ns``: ``cogs-proxy``/``cogs-monitor`` for the
    default NF, ``cogs-<nf>-proxy``/``cogs-<nf>-monitor`` for another."""
    return [
        AclUser(ns.acl_user("proxy"), proxy_password, proxy_rules(ns)),
        AclUser(ns.acl_user("monitor"), monitor_password, monitor_rules(ns)),
    ]


@dataclass(frozen=True)
class Applied:
    node: str
    #: saved to the node's aclfile (survives a restart); False: no aclfile configured
    saved: bool


def apply(addrs: list[tuple[str, int]], acl_users: list[AclUser], **client_kw: object) -> list[Applied]:
    """Set the users on every node given (primaries and replicas) and save them where
    the node has an aclfile."""
    done = []
    for host, port in addrs:
        try:
            with redis.Redis(host=host, port=port, socket_timeout=5, **client_kw) as r:  # type: ignore[arg-type]
                for u in acl_users:
                    r.execute_command(*u.setuser())
                saved = _save(r)
        except redis.ConnectionError as e:
            raise CoordinatorUnavailable(f"node {host}:{port}: {e}") from e
        except redis.ResponseError as e:
            raise ConfigError(f"node {host}:{port} refused the ACL rules: {e}") from e
        done.append(Applied(f"{host}:{port}", saved))
    return done


def _save(r: redis.Redis) -> bool:
    try:
        r.execute_command("ACL", "SAVE")
    except redis.ResponseError as e:
        if "not configured to use an ACL file" in str(e):
            return False
        raise
    return True
