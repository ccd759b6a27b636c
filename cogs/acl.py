"""Redis ACL users for a cogs coordinator: what proxies and the monitor may do.

Redis 7 checks the commands a function runs against the user who called it, so the
proxy user needs the data commands the Lua library uses, on ``cogs:*`` keys only.
It cannot touch other keys, cannot FLUSHALL, cannot (re)load the library; the
monitor user only reads. The admin (the default user, or one of your own) loads
the library and applies these rules with ``cogs acl apply``.

ACL SETUSER is per node: ``apply`` sets the users on every primary and replica (as
``CLUSTER NODES`` lists them), then ``ACL SAVE``s them into the node's ``aclfile``
(cogs/redis.conf names one), so a restarted node keeps them. A node run without an
aclfile keeps them until it restarts: ``apply`` says which nodes those are.

Lockdown (``--admin-password``): the default user, which every connection without
credentials is, gets a password on every node, so a stranger reaching a port gets
``NOAUTH`` for every command. Every node also gets ``masteruser``/``masterauth`` (a
replica authenticates to its primary) and, with a cluster dir, its ``auth.conf``
(cogs/adminauth.py) keeps them over restarts and lets cogs' own tooling in.

Several NFs on one cluster: each NF's users (``cogs-<nf>-proxy``, ``cogs-<nf>-monitor``)
are confined to its namespace's keys and channels (``cogs@<nf>:*``). Redis checks the
commands a function runs against the caller's user, so an IDS proxy that calls the
NAT's library (function names are global, and FCALL cannot be limited to some) is
still refused every NAT key. The default NF's monitor user reads every NF (it is the
operator's view); an NF's own monitor user reads its NF only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from cogs import adminauth
from cogs.adminauth import ADMIN_USER, AdminAuth
from cogs.errors import ConfigError, CoordinatorUnavailable
from cogs.keys import DEFAULT, Namespace
from cogs.reshard import parse_nodes

T = TypeVar("T")
Addr = tuple[str, int]

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
    # what an entry it creates takes, for the usage limits (a key command: its NF's keys only)
    "+memory|usage",
]  # fmt: skip
_MONITOR_COMMANDS = [
    "-@all", "+@read", "+fcall_ro", "+subscribe", "+unsubscribe", *_DISCOVERY,
    "-@dangerous", "-@admin", "+info", "+cluster|slots", "+cluster|shards", "+cluster|info", "+cluster|myid",
    "+cluster|nodes", *_NO_ENUMERATION,
]  # fmt: skip


def proxy_rules(ns: Namespace = DEFAULT) -> list[str]:
    """A proxy of NF ``ns``: its library's data commands on its keys and channels only,
    and reading (never writing) the keeper's count of them (the usage limits)."""
    return ["resetkeys", f"~{ns.prefix}*", f"%R~{ns.usage_prefix}*", "resetchannels", f"&{ns.prefix}*",
            *_PROXY_COMMANDS]  # fmt: skip


def monitor_rules(ns: Namespace = DEFAULT) -> list[str]:
    """Read only: the catalog, the registry, alerts, node health; no keyspace listing
    (the monitor's state counts need a user allowed to SCAN: see the README). The
    default NF's monitor reads every NF (``cogs@*``); another NF's, its own."""
    if ns.default:
        keys, channels = ["%R~cogs:*", "%R~cogs@*", "%R~cogs!*"], ["&cogs:alerts", "&cogs@*:alerts"]
    else:
        keys, channels = [f"%R~{ns.prefix}*", f"%R~{ns.usage_prefix}*"], [f"&{ns.alerts_channel}"]
    return ["resetkeys", *keys, "resetchannels", *channels, *_MONITOR_COMMANDS]


PROXY_RULES = proxy_rules()
MONITOR_RULES = monitor_rules()


@dataclass(frozen=True)
class AclUser:
    name: str
    password: str
    rules: list[str]

    def setuser(self) -> list[str]:
        adminauth.check_password(f"ACL user {self.name}", self.password)
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
    #: a connection without credentials is refused now (NOAUTH); None: no lockdown asked
    locked: bool | None = None


def cluster_nodes(host: str, port: int, **client_kw: Any) -> list[Addr]:
    """Every node of the cluster ``host:port`` belongs to, as ``CLUSTER NODES`` lists
    them (``CLUSTER SLOTS`` leaves out a replica that holds no data yet: it would be
    left unlocked), or that one node when it is not a cluster."""
    try:
        with _session((host, port), client_kw) as r:
            if not r.info("cluster").get("cluster_enabled"):
                return [(host, port)]
            raw = r.execute_command("CLUSTER", "NODES")
    except redis.AuthenticationError as e:
        raise ConfigError(f"node {host}:{port}: {_auth_problem(e, client_kw)}; nothing was changed") from e
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise CoordinatorUnavailable(f"node {host}:{port}: {e}") from e
    members = parse_nodes(raw.decode() if isinstance(raw, bytes) else str(raw))
    return [m.addr for m in members if m.port] or [(host, port)]


def apply(
    addrs: list[Addr], acl_users: list[AclUser], admin: AdminAuth | None = None, *, auth_dir: Path | None = None,
    **client_kw: Any,
) -> list[Applied]:  # fmt: skip
    """Set the users on every node given (primaries and replicas) and save them where
    the node has an aclfile. With ``admin``, lock the coordinator: the default user gets
    its password (and every node ``masteruser``/``masterauth``, so replication keeps
    working), ``auth_dir/auth.conf`` is written, and each node is checked to refuse a
    connection without credentials.

    Every node is connected to and checked first (reachable, credentials accepted,
    allowed to administer users): a wrong admin password changes nothing anywhere.
    The default user's password is set last, on every node after every other change:
    a replica already knows how to authenticate when its primary starts asking, and
    the session setting it stays authenticated."""
    for u in acl_users:
        u.setuser()  # bad passwords refused before any node is touched
    if admin is not None:
        adminauth.check_password("the admin password", admin.password)
        client_kw = {**admin.client_kw(), **client_kw}  # an admin user of your own (COGS_USERNAME) wins
    sessions: list[tuple[str, redis.Redis]] = []
    try:
        for addr in addrs:
            sessions.append((f"{addr[0]}:{addr[1]}", _checked(addr, client_kw)))
        for node, r in sessions:
            _step(node, "setting the users", partial(_users, r, acl_users, admin))
        if admin is not None and auth_dir is not None:
            adminauth.write(auth_dir, admin)
        done = []
        for node, r in sessions:
            if admin is not None:
                _step(node, "locking the default user", partial(_lock, r, admin), locking=True)
            done.append((node, _step(node, "ACL SAVE", partial(_save, r))))
    finally:
        for _, r in sessions:
            r.close()
    return [
        Applied(node, saved, None if admin is None else _refuses_strangers(addr, client_kw))
        for (node, saved), addr in zip(done, addrs, strict=True)
    ]


def _session(addr: Addr, client_kw: dict[str, Any]) -> redis.Redis:
    # one connection, never re-opened behind our back: each step runs in one session
    return redis.Redis(
        host=addr[0], port=addr[1], socket_timeout=5, socket_connect_timeout=5, single_connection_client=True,
        retry=Retry(NoBackoff(), 0), **client_kw,
    )  # fmt: skip


def _checked(addr: Addr, client_kw: dict[str, Any]) -> redis.Redis:
    """A session on ``addr`` proven able to do the whole job (nothing changed yet)."""
    node = f"{addr[0]}:{addr[1]}"
    r = _session(addr, client_kw)
    try:
        r.execute_command("ACL", "LIST")
        r.config_get("masterauth")
    except redis.AuthenticationError as e:
        r.close()
        raise ConfigError(f"node {node}: {_auth_problem(e, client_kw)}; nothing was changed") from e
    except NoPermissionError as e:
        r.close()
        who = client_kw.get("username", ADMIN_USER)
        raise ConfigError(f"node {node}: user {who} may not administer users ({e}); nothing was changed") from e
    except (redis.ConnectionError, redis.TimeoutError) as e:
        r.close()
        raise CoordinatorUnavailable(f"node {node} unreachable ({e}): every node must answer; nothing changed") from e
    return r


def _auth_problem(e: BaseException, client_kw: dict[str, Any]) -> str:
    if "password" not in client_kw:
        return (
            f"it requires a password (the coordinator is locked: {adminauth.describe(e)}): give the admin's, "
            "--admin-password (or --cluster-dir DIR with its auth.conf)"
        )
    return f"it refused the credentials ({adminauth.describe(e)}): the coordinator is locked with another password"


def _step(node: str, what: str, fn: Callable[[], T], *, locking: bool = False) -> T:
    try:
        return fn()
    except (redis.ConnectionError, redis.TimeoutError) as e:
        again = " (nodes before it are locked already): run it again to finish" if locking else ""
        raise CoordinatorUnavailable(f"node {node} failed while {what}: {e}{again}") from e
    except redis.ResponseError as e:
        raise ConfigError(f"node {node} refused {what}: {e}") from e


def _users(r: redis.Redis, acl_users: list[AclUser], admin: AdminAuth | None) -> None:
    for u in acl_users:
        r.execute_command(*u.setuser())
    if admin is not None:  # a replica (any node, after a failover) authenticates to its primary
        r.config_set("masteruser", admin.user)
        r.config_set("masterauth", admin.password)


def _lock(r: redis.Redis, admin: AdminAuth) -> None:
    # the user's rights stay as they are (the admin's: every right); only the password
    # changes. This session stays authenticated.
    r.execute_command("ACL", "SETUSER", admin.user, "on", "resetpass", f">{admin.password}")


def _refuses_strangers(addr: Addr, client_kw: dict[str, Any]) -> bool:
    """True if a connection without credentials is refused (RESP2: no HELLO)."""
    anonymous = {k: v for k, v in client_kw.items() if k not in ("username", "password")}
    try:
        with _session(addr, {**anonymous, "protocol": 2}) as r:
            r.ping()
    except redis.AuthenticationError:
        return True
    return False


def _save(r: redis.Redis) -> bool:
    try:
        r.execute_command("ACL", "SAVE")
    except redis.ResponseError as e:
        if "not configured to use an ACL file" in str(e):
            return False
        raise
    return True
