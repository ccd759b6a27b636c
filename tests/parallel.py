"""How the suite runs on several workers (pytest-xdist, ``scripts/test.sh``).

* A unit of work is a test file, so a module's fixtures (its own cluster) start once,
  and its tests run in their written order; every test marked ``lab`` is one unit, as
  the lab's tests must not meet one another (hosts, switches, nftables).
* Units expected to take longest go first (``slow`` tests weigh more), so no long unit
  starts last and keeps one worker busy alone at the end.
* Each worker picks free ports from a share of its own (COGS_PORT_SHARE, cogs/ports.py):
  two workers never start nodes on the same port.
"""

from __future__ import annotations

import os

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

LAB_GROUP = "lab"
SLOW_WEIGHT = 30  # a slow test counts as this many quick ones


def configure_worker() -> None:
    """In a worker: its port share, inherited by what it starts (cogs CLI, benches)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if worker:
        os.environ["COGS_PORT_SHARE"] = f"{int(worker.removeprefix('gw'))}/{os.environ['PYTEST_XDIST_WORKER_COUNT']}"


def unit_of(item: pytest.Item) -> str:
    return LAB_GROUP if item.get_closest_marker("lab") else item.nodeid.split("::", 1)[0]


def group_and_order(items: list[pytest.Item]) -> None:
    """Lab tests into one xdist group; units heaviest first (each unit's tests in order)."""
    weight: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.xdist_group(LAB_GROUP))
        u = unit_of(item)
        weight[u] = weight.get(u, 0) + (SLOW_WEIGHT if item.get_closest_marker("slow") else 1)
        first.setdefault(u, i)
    order = {id(item): (-weight[unit_of(item)], first[unit_of(item)], i) for i, item in enumerate(items)}
    items.sort(key=lambda item: order[id(item)])


class FileScheduling(LoadScopeScheduling):
    """loadgroup's scheduling with a file as the unit of every test outside a group, in
    collection order (``group_and_order``'s), not reordered by test count."""

    def __init__(self, config: pytest.Config, log: Producer | None = None) -> None:
        config.option.loadscopereorder = False
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.rfind("@") > nodeid.rfind("]"):  # a group (an '@' in a parameter is not)
            return nodeid.rsplit("@", 1)[-1]
        return nodeid.split("::", 1)[0]


class Plugin:
    @pytest.hookimpl(tryfirst=True)  # before xdist names grouped tests' ids after the group
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if os.environ.get("PYTEST_XDIST_WORKER"):  # a plain run keeps the written order
            group_and_order(items)

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Producer) -> LoadScopeScheduling | None:
        return FileScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


def register(config: pytest.Config) -> None:
    """Install the plugin when xdist is loaded (its hooks exist only then)."""
    configure_worker()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(Plugin(), "cogs-parallel")
