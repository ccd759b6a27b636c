"""A network namespace of the tests' own, with veth pairs inside it and processes in it.

For live capture without the lab: a namespace named ``lv`` + 6 random hex digits
(unique per run, so parallel runs never meet), veth pairs between two of its own
interfaces (one end to send on, the other captured), a redis-server on its loopback.
Nothing touches the machine's own interfaces; ``close()`` kills what it started and
deletes the namespace (which deletes its links).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def netns_or_skip() -> None:
    """Skip unless this process may create network namespaces (root / CAP_NET_ADMIN)."""
    if shutil.which("ip") is None:
        pytest.skip("live capture tests need iproute2 (the `ip` command)")
    if os.geteuid() != 0:
        pytest.skip("live capture tests need root (network namespaces, AF_PACKET sockets)")


class Netns:
    def __init__(self) -> None:
        self.name = f"lv{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen[Any]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def veth(self, a: str, b: str, mtu: int = 1500) -> tuple[str, str]:
        """A veth pair ``<ns><a>`` <-> ``<ns><b>`` inside the namespace, up."""
        ia, ib = self.name + a, self.name + b
        self.ip("link", "add", ia, "mtu", str(mtu), "type", "veth", "peer", "name", ib, "mtu", str(mtu))
        for i in (ia, ib):
            self.ip("link", "set", i, "up")
        return ia, ib

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), check=False, capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        p: subprocess.Popen[str] = subprocess.Popen(self.argv(argv), text=True, **kw)
        self.procs.append(p)
        return p

    def redis(self, port: int, dir: Path) -> str:
        """A redis-server on the namespace's loopback; its URL (reachable inside only)."""
        self.popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(dir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while self.run(["redis-cli", "-p", str(port), "ping"], timeout=5).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server in the namespace did not start")
            time.sleep(0.05)
        return f"redis://127.0.0.1:{port}"

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
