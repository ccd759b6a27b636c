"""Fixtures: real redis-server processes on free loopback ports, torn down after.

Nothing here ever touches a Redis on 6379: every node is started by the fixtures
on ports chosen free at run time, with data in pytest's temporary directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from cogs import runtime
from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.ports import free_port_base
from tests import parallel
from tests.helpers import make_catalog

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures"


def pytest_configure(config: pytest.Config) -> None:
    parallel.register(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which("redis-server") is None:
        raise pytest.UsageError(
            "redis-server is not installed; run the README test command (it installs it) "
            "or `apt-get install -y redis-server`"
        )


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """cogs talks to Redis through redis.asyncio: asyncio only, on the loop production
    picks (uvloop when installed; COGS_LOOP=asyncio runs the suite on asyncio's own)."""
    return "asyncio", runtime.backend_options()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return make_catalog()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[LocalCluster]:
    """A 3-primary Redis Cluster running the cogs library with the test catalog."""
    with serving(LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path_factory.mktemp("cluster")), catalog) as lc:
        yield lc


@contextlib.contextmanager
def serving(lc: LocalCluster, catalog: Catalog | None = None, *, purge: bool = False) -> Iterator[LocalCluster]:
    """``lc`` up with the cogs library and ``catalog`` (the test catalog) loaded, down after."""
    lc.up()
    try:
        anyio.run(_load, lc.url, catalog or make_catalog())
        yield lc
    finally:
        lc.down(purge=purge)


async def _load(url: str, catalog: Catalog) -> None:
    async with Coordinator(url=url) as co:
        await co.load_library(catalog)


class Standalone:
    """One non-cluster redis-server process."""

    def __init__(self, port: int, dir: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    s = Standalone(free_port_base(1), tmp_path_factory.mktemp("standalone"))
    try:
        yield s
    finally:
        s.stop()


def load_default_catalog(url: str) -> None:
    """Load the bundled catalog (the NF states) on the coordinator at ``url``."""
    from cogs.paths import DEFAULT_CATALOG

    async def load() -> None:
        async with Coordinator(url=url) as co:
            await co.load_library(Catalog.from_file(DEFAULT_CATALOG))

    anyio.run(load)


def captures(name: str) -> Path:
    """A real capture from ../shared/captures, or skip with the reason."""
    p = CAPTURES / name
    if not p.exists():
        pytest.skip(f"capture {name} not found: the shared captures folder {CAPTURES} is absent")
    return p


@pytest.fixture
def freezable(tmp_path: Path) -> Iterator[tuple[LocalCluster, list[int]]]:
    """A 3-primary cluster of the test's own with the test catalog, and its nodes' pids
    (to SIGSTOP; every node is resumed before it is stopped)."""
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "c")
    lc.up()
    pids = [int((lc.node_dir(p) / "redis.pid").read_text()) for p in lc.ports]
    try:
        anyio.run(_load, lc.url, make_catalog())
        yield lc, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        lc.down(purge=True)
