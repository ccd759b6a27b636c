"""The admin credentials of a locked coordinator: ``auth.conf`` in its cluster dir.

``cogs acl apply --admin-password A --cluster-dir DIR`` gives the ``default`` user
(the admin: every right) the password A on every node, and writes ``DIR/auth.conf``
(mode 0600)::

    # cogs: this cluster's admin credentials (cogs acl apply --admin-password) ...
    masteruser default
    masterauth "A"

It is a Redis config file: every node ``cogs cluster up`` (and the lab) starts from DIR
includes it (``--include DIR/auth.conf``), so a restarted replica authenticates to
its primary (``CONFIG REWRITE`` is no way to keep them: it would rewrite the shared
cogs/redis.conf). And every cogs command on DIR (``cluster up/down/status/scale``,
``lab status/scale``) reads it to authenticate as the admin; other commands do with
``COGS_AUTH_FILE=DIR/auth.conf``. The file must be readable by its owner only: a
password others can read is refused with the ``chmod`` that fixes it.

Clients authenticate as ``default`` by name (``AUTH default A``): a node whose default
user has no password yet accepts any password given with its name, so one set of
credentials works on a node before, during and after the lockdown.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cogs.errors import ConfigError

AUTH_FILE = "auth.conf"
#: the admin: Redis' default user, which unauthenticated connections would otherwise be
ADMIN_USER = "default"
MIN_PASSWORD = 12
_HEADER = (
    "# cogs: this cluster's admin credentials (cogs acl apply --admin-password), mode 0600.\n"
    "# Every node includes this file (replicas authenticate to their primary with it) and\n"
    "# cogs commands on this cluster dir authenticate with it. Do not edit: apply again.\n"
)


@dataclass(frozen=True)
class AdminAuth:
    password: str
    user: str = ADMIN_USER

    def client_kw(self) -> dict[str, Any]:
        """redis-py keyword arguments authenticating as the admin."""
        return {"username": self.user, "password": self.password}

    def __repr__(self) -> str:  # never a password in a traceback or a log line
        return f"AdminAuth(user={self.user!r}, password=***)"


def check_password(what: str, password: str) -> None:
    """A password Redis and auth.conf both keep as given (no control characters)."""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"{what}: use a password of at least {MIN_PASSWORD} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise ConfigError(f"{what}: control characters (newline, tab, ...) are not allowed in a password")


def path_in(dir: Path) -> Path:
    return Path(dir) / AUTH_FILE


def render(auth: AdminAuth) -> str:
    """auth.conf's text: Redis config syntax (a double-quoted value: ``\\`` and ``"``
    escaped, as Redis' own parser reads them)."""
    quoted = auth.password.replace("\\", "\\\\").replace('"', '\\"')
    return f'{_HEADER}masteruser {auth.user}\nmasterauth "{quoted}"\n'


def parse(text: str, source: str) -> AdminAuth:
    """The credentials of an auth.conf (what :func:`render` writes)."""
    user, password = None, None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "masteruser" and value and " " not in value:
            user = value
        elif key == "masterauth" and len(value) >= 2 and value[0] == value[-1] == '"':
            password = _unquote(value[1:-1], f"{source}:{n}")
        else:
            raise ConfigError(f"{source}:{n}: not a line cogs writes (masteruser NAME / masterauth \"...\")")
    if user is None or password is None:
        raise ConfigError(f"{source}: no {'masteruser' if user is None else 'masterauth'} line")
    if user != ADMIN_USER:
        raise ConfigError(f"{source}: masteruser {user}: cogs locks the {ADMIN_USER} user only")
    return AdminAuth(password, user)


def _unquote(body: str, where: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body) or body[i + 1] not in '\\"':
                raise ConfigError(f"{where}: a bad escape in masterauth")
            c, i = body[i + 1], i + 1
        elif c == '"':
            raise ConfigError(f"{where}: an unescaped quote in masterauth")
        out.append(c)
        i += 1
    return "".join(out)


def read(path: Path) -> AdminAuth:
    """The credentials in ``path``; a clear error naming it when it is missing,
    unreadable, readable by others, or not what cogs writes."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such file (`cogs acl apply --admin-password A --cluster-dir` writes it)") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the admin credentials: {e}") from e
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{path} holds the admin password but others may read it (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"chmod 600 {path}"
        )
    return parse(text, str(path))


def read_dir(dir: Path | None) -> AdminAuth | None:
    """The credentials of the cluster in ``dir``; None when it is not locked (no file)."""
    if dir is None or not path_in(dir).exists():
        return None
    return read(path_in(dir))


def write(dir: Path, auth: AdminAuth) -> Path:
    """Write ``dir/auth.conf`` (mode 0600, replaced atomically: a node starting meanwhile
    includes the old file or the new one, never half of one)."""
    check_password("the admin password", auth.password)
    target = path_in(dir)
    tmp = target.with_name(f".{AUTH_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing tmp keeps its mode through O_CREAT
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(auth))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def describe(error: object) -> str:
    """An authentication failure in Redis' own words, short (RESP3's HELLO says NOAUTH
    in a paragraph)."""
    msg = str(error)
    if "HELLO must be called" in msg or "Authentication required" in msg or msg.startswith("NOAUTH"):
        return "NOAUTH authentication required"
    if "invalid username-password" in msg or msg.startswith("WRONGPASS"):
        return "WRONGPASS invalid username-password pair"
    return msg


def refused(path: Path, error: object) -> str:
    """Why a node of a cluster dir refused cogs' connection (NOAUTH / WRONGPASS), naming
    the file that should have let it in."""
    if not path.exists():
        return (
            f"it requires a password (the cluster is locked: {describe(error)}) and {path} is missing: restore "
            f"it, or lock again with `cogs acl apply --admin-password ... --cluster-dir {path.parent}`"
        )
    return f"it refused the admin credentials of {path} ({describe(error)})"
