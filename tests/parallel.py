"""How the suite runs on several workers (pytest-xdist ``--dist loadfile``, ``scripts/test.sh``).

* A unit of work is a test file, so a module's fixtures (its own cluster) start once
  and its tests run in their written order; the lab's test files (named ``*lab.py``)
  are one unit together, so lab tests never run at once (a marked one elsewhere
  fails). The unit is told from the test's id alone: the scheduler sees nothing else.
* Units expected to take longest go first (``slow`` tests weigh more), so no long unit
  starts last and keeps one worker busy alone at the end.
* Each worker picks free ports from a share of its own (COGS_PORT_SHARE, cogs/ports.py):
  two workers never start nodes on the same port.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

LAB_UNIT = "lab"
SLOW_WEIGHT = 30  # a slow test counts as this many quick ones


def configure_worker() -> None:
    """In a worker: its port share, inherited by what it starts (cogs CLI, benches)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if worker:
        os.environ["COGS_PORT_SHARE"] = f"{int(worker.removeprefix('gw'))}/{os.environ['PYTEST_XDIST_WORKER_COUNT']}"


def unit_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return LAB_UNIT if PurePosixPath(path).stem.endswith("lab") else path


def order(items: list[pytest.Item]) -> None:
    """Units heaviest first, each unit's tests in their order."""
    weight: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        u = unit_of(item.nodeid)
        weight[u] = weight.get(u, 0) + (SLOW_WEIGHT if item.get_closest_marker("slow") else 1)
        first.setdefault(u, i)
    key = {id(item): (-weight[unit_of(item.nodeid)], first[unit_of(item.nodeid)], i) for i, item in enumerate(items)}
    items.sort(key=lambda item: key[id(item)])


class FileScheduling(LoadScopeScheduling):
    """loadfile's scheduling with the lab's files as one unit, units in collection order
    (``order``'s), not reordered by their number of tests."""

    def __init__(self, config: pytest.Config, log: Producer | None = None) -> None:
        config.option.loadscopereorder = False
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)


class Plugin:
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.get_closest_marker("lab") and unit_of(item.nodeid) != LAB_UNIT:
            pytest.fail(f"{item.nodeid} is marked lab: lab tests live in files named *lab.py (tests/parallel.py)")

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if os.environ.get("PYTEST_XDIST_WORKER"):  # a plain run keeps the written order
            order(items)

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Producer) -> LoadScopeScheduling | None:
        return FileScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


def register(config: pytest.Config) -> None:
    """Install the plugin when xdist is loaded (its hooks exist only then)."""
    configure_worker()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(Plugin(), "cogs-parallel")
