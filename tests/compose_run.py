"""Run compose.yaml's Redis nodes from their own command lines, without Docker.

There is no Docker engine on the build machine, so the tests play compose's part for
the node services: the same entrypoint script and command, with compose's variable
interpolation, each mount's host side for its container path, the published ports
mapped to free ones (several test runs share the machine), and a container's
all-addresses bind (0.0.0.0) made loopback (the nodes are not in containers here).
compose's DNS (service names) is a private /etc/hosts in a mount namespace of the
init command (``unshare``). What runs is otherwise exactly what compose.yaml says.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import yaml

BUS_OFFSET = 10000
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        name = m[1] or m[4]
        value = env.get(name)
        op, arg = m[2], m[3] or ""
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and not value:
            raise ValueError(f"compose needs {name}: {arg}")
        return value or ""

    return _VAR.sub(sub, text)


def load(compose: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(compose.read_text())
    return data


def node_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run redis-server, in file order."""
    return {n: s for n, s in data["services"].items() if s.get("command", [None])[0] == "redis-server"}


class ComposeNodes:
    """compose.yaml's node services as local processes (ports remapped), and its init command."""

    def __init__(self, compose: Path, dir: Path, *, port_base: int, env: dict[str, str] | None = None) -> None:
        self.compose, self.dir = compose, dir
        self.data = load(compose)
        self.env = {"COGS_ANNOUNCE_IP": "127.0.0.1", **(env or {})}
        self.services = node_services(self.data)
        ports = sorted(int(_arg(s["command"], "--port")) for s in self.services.values())
        self.port_map = {str(p): str(port_base + i) for i, p in enumerate(ports)}
        self.port_map |= {str(p + BUS_OFFSET): str(port_base + i + BUS_OFFSET) for i, p in enumerate(ports)}
        self.url = f"redis://127.0.0.1:{port_base}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _mounts(self, name: str, svc: dict[str, Any]) -> dict[str, str]:
        """container path -> host path (a named volume: a directory per service)."""
        out = {}
        for m in svc.get("volumes", []):
            src, dst = m.split(":")[:2]
            if src.startswith((".", "/")):
                out[dst] = str((self.compose.parent / src).resolve())
            else:
                d = self.dir / name / src
                d.mkdir(parents=True, exist_ok=True)
                out[dst] = str(d)
        return out

    def _localize(self, token: str, mounts: dict[str, str]) -> str:
        token = interpolate(token, self.env)
        for dst in sorted(mounts, key=len, reverse=True):
            token = token.replace(dst, mounts[dst])
        if token == "0.0.0.0":
            return "127.0.0.1"
        if token in self.port_map:
            return self.port_map[token]
        host, sep, port = token.rpartition(":")
        return f"{host}:{self.port_map[port]}" if sep and port in self.port_map else token

    def node_argv(self, name: str) -> list[str]:
        """The service's entrypoint + command as run here (the image's own entrypoint,
        which only drops privileges, replaced by a plain exec)."""
        svc = self.services[name]
        mounts = self._mounts(name, svc)
        entry = [self._localize(t, mounts) for t in svc.get("entrypoint", [])]
        entry = [t.replace("exec docker-entrypoint.sh ", "exec ") for t in entry]
        return entry + [self._localize(t, mounts) for t in svc["command"]]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in self.services:
            with (self.dir / f"{name}.log").open("wb") as log:  # the child keeps its own copy
                self.procs[name] = subprocess.Popen(self.node_argv(name), stdout=log, stderr=subprocess.STDOUT)
        for name, svc in self.services.items():
            port = int(self.port_map[_arg(svc["command"], "--port")])
            deadline = time.monotonic() + 15
            while True:
                try:
                    with redis.Redis(port=port, socket_timeout=1) as c:
                        if c.ping():
                            break
                except redis.ConnectionError as e:
                    if self.procs[name].poll() is not None or time.monotonic() > deadline:
                        tail = (self.dir / f"{name}.log").read_text()[-800:]
                        raise RuntimeError(f"{name} did not start: {tail}") from e
                    time.sleep(0.05)

    def init_command(self, service: str = "init", extra: tuple[str, ...] = ()) -> tuple[str, list[str]]:
        """compose's init command (or another python service's) split at its first ``&&``:
        the install, and the rest (plus ``extra`` arguments) as an argv that runs it (ports
        mapped) where the service names resolve as on compose's network, to this machine."""
        cmd = self.data["services"][service]["command"]
        assert cmd[:2] == ["sh", "-c"], cmd
        script = interpolate(" ".join(cmd[2:]), self.env)
        install, _, rest = script.partition("&&")
        hosts = self.dir / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {' '.join(self.services)}\n")
        rest = shlex.join([*(self._localize(t, {}) for t in shlex.split(rest)), *extra])
        user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        inner = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec sh -c {shlex.quote(rest)}"
        return " ".join(install.split()), ["unshare", "--mount", "--propagation", "private", *user, "sh", "-c", inner]

    def roles(self) -> dict[int, str]:
        out = {}
        for svc in self.services.values():
            port = int(self.port_map[_arg(svc["command"], "--port")])
            with redis.Redis(port=port, socket_timeout=2) as c:
                out[port] = str(c.info("replication")["role"])
        return out

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]
