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
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from cogs.errors import ConfigError, CoordinatorUnavailable

#: what every cogs connection needs to find its way around the cluster
_DISCOVERY = ["+@connection", "+info", "+cluster|slots", "+cluster|info", "+cluster|myid", "+ping"]

PROXY_RULES = [
    "resetkeys", "~cogs:*", "resetchannels", "&cogs:*",
    "-@all", "+@read", "+@write", "+@keyspace", "+@scripting", "+@pubsub", "+time", *_DISCOVERY,
    # never: other keys (above), destructive or admin commands, loading code
    "-@dangerous", "-@admin", "+info",
    "-function|load", "-function|delete", "-function|flush", "-function|restore", "-function|kill",
    "-eval", "-evalsha", "-eval_ro", "-evalsha_ro", "-script",
]  # fmt: skip

MONITOR_RULES = [
    "resetkeys", "~cogs:*", "resetchannels", "&cogs:*",
    "-@all", "+@read", "+fcall_ro", "+function|list", "+subscribe", "+unsubscribe", "+cluster|nodes", *_DISCOVERY,
]  # fmt: skip


@dataclass(frozen=True)
class AclUser:
    name: str
    password: str
    rules: list[str]

    def setuser(self) -> list[str]:
        if not self.password or len(self.password) < 12:
            raise ConfigError(f"ACL user {self.name}: use a password of at least 12 characters")
        return ["ACL", "SETUSER", self.name, "reset", "on", f">{self.password}", *self.rules]


def users(proxy_password: str, monitor_password: str, prefix: str = "cogs") -> list[AclUser]:
    return [
        AclUser(f"{prefix}-proxy", proxy_password, PROXY_RULES),
        AclUser(f"{prefix}-monitor", monitor_password, MONITOR_RULES),
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
