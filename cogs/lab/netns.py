"""Network namespaces through iproute2, and code run inside one.

Everything a lab makes lives in namespaces named with its prefix: links are veth
pairs created directly between two lab namespaces (never in the machine's own), and
every process the lab starts runs in one. Tearing a lab down is therefore: kill every
process in its namespaces (``ip netns pids``), delete the namespaces (which deletes
their links), remove their ``/etc/netns/<name>`` files — and needs nothing but the
prefix, so it works after a crash that lost every record.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cogs.errors import CogsError, ConfigError

T = TypeVar("T")
ETC_NETNS = Path("/etc/netns")  # `ip netns exec` bind-mounts these files over /etc (hosts: lab names)
RUN_NETNS = Path("/run/netns")
PROC_STATUS = Path("/proc/self/status")
_CLONE_NEWNET = 0x40000000
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21


class LabError(CogsError):
    """A lab operation failed; the message names the step and what the system said."""


class LabPermissionError(LabError, ConfigError):
    """The lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) or a tool it lacks."""


def missing_privileges() -> list[str]:
    """The capabilities a lab needs that this process lacks (empty: it may make one)."""
    caps = 0
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
    except OSError:
        pass
    need = (("CAP_NET_ADMIN", _CAP_NET_ADMIN), ("CAP_SYS_ADMIN", _CAP_SYS_ADMIN))
    return [name for name, bit in need if not caps >> bit & 1]


def require_privileges() -> None:
    """Raise a clear error unless this process may make namespaces and links."""
    missing = missing_privileges()
    if missing:
        raise LabPermissionError(
            f"the lab makes network namespaces and links: it needs root ({' and '.join(missing)} missing); "
            "run it with sudo (CI runs as root)"
        )
    require_tool("ip", "iproute2")


def require_tool(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise LabPermissionError(f"the lab needs `{name}`: on Debian/Ubuntu `apt-get install -y {package}`")
    return exe


def run(argv: Sequence[str], what: str, *, input: str | None = None, check: bool = True) -> str:
    """Run a system command; a failure is a :class:`LabError` naming ``what`` and stderr."""
    try:
        r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{what}: {' '.join(argv)}: {e}") from e
    if check and r.returncode != 0:
        raise LabError(f"{what}: {' '.join(argv)}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def ip(ns: str | None, *args: str, what: str, check: bool = True) -> str:
    return run(["ip", *(("-n", ns) if ns else ()), *args], what, check=check)


def namespaces(prefix: str = "") -> list[str]:
    out = run(["ip", "netns", "list"], "listing network namespaces")
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].startswith(prefix)]


def add_namespace(name: str) -> None:
    ip(None, "netns", "add", name, what=f"creating namespace {name}")
    # a lab host speaks IPv4 in 198.18.0.0/15 only: no IPv6 (link-local chatter, DAD)
    call_in(name, _no_ipv6)
    ip(name, "link", "set", "lo", "up", what=f"loopback of {name}")


def _no_ipv6() -> None:
    for key in ("all", "default"):
        Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1\n")


def pids_in(name: str) -> list[int]:
    out = ip(None, "netns", "pids", name, what=f"processes of {name}", check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def kill_all_in(names: Sequence[str], grace_s: float = 3.0) -> int:
    """SIGTERM every process in the namespaces, SIGKILL what is left after ``grace_s``
    (a frozen process gets SIGCONT so it can die). Returns how many there were."""
    pids = {p for n in names for p in pids_in(n)}
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for p in pids:
            _signal(p, sig)
    deadline = time.monotonic() + grace_s
    while (alive := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in alive:
        _signal(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(pids)


def delete_namespace(name: str) -> None:
    ip(None, "netns", "delete", name, what=f"deleting namespace {name}", check=False)
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def write_etc(name: str, filename: str, text: str) -> None:
    d = ETC_NETNS / name
    d.mkdir(parents=True, exist_ok=True)
    (d / filename).write_text(text)


def etc_leftovers(prefix: str) -> list[str]:
    return sorted(p.name for p in ETC_NETNS.glob(f"{prefix}*")) if ETC_NETNS.is_dir() else []


def call_in(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread that entered namespace ``name`` (only that thread moves; the
    sockets it opens stay in the namespace wherever they are used afterwards)."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(RUN_NETNS / name, os.O_RDONLY)
        except OSError as e:
            error.append(LabError(f"namespace {name} does not exist: {e.strerror}"))
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                error.append(LabError(f"entering namespace {name}: {os.strerror(err)}"))
                return
            result.append(fn())
        except BaseException as e:  # re-raised on the caller's thread
            error.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return False
