"""The catalog lives in the coordinator: proxies with another catalog or library are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import StateTable
from cogs.errors import CatalogMismatch, LibraryOutdated
from tests.helpers import TEST_CATALOG

pytestmark = pytest.mark.anyio


async def test_stored_catalog_equals_loaded(cluster: LocalCluster, catalog: Catalog) -> None:
    async with Coordinator(url=cluster.url) as co:
        stored, token = await co.stored_catalog(catalog)
        assert stored.digest == catalog.digest
        assert [s.name for s in stored] == [s.name for s in catalog]
        assert token == f"{co.spec.version}:{catalog.digest}"


async def test_proxy_with_other_catalog_gets_clear_error(cluster: LocalCluster) -> None:
    other = Catalog.from_toml(TEST_CATALOG.replace("threshold = 10 }", "threshold = 11 }"))
    async with Coordinator(url=cluster.url) as co:
        with pytest.raises(CatalogMismatch, match=r"hits differs in params"):
            await StateTable.open(co, other)


async def test_old_token_is_refused_by_lua(cluster: LocalCluster, catalog: Catalog) -> None:
    """A proxy that kept running across a catalog reload is stopped at its next batch."""
    async with Coordinator(url=cluster.url) as co:
        table = await StateTable.open(co)
        table.token = "0123456789abcdef:" + catalog.digest
        with pytest.raises(LibraryOutdated, match="reload the library"):
            await table.update("cnt", "k", "add", 1)


async def test_library_version_skew_detected(cluster: LocalCluster, catalog: Catalog) -> None:
    async with Coordinator(url=cluster.url) as co:
        co.spec = dataclasses.replace(co.spec, version="ffffffffffffffff")
        with pytest.raises(LibraryOutdated, match="ffffffffffffffff"):
            await co.stored_catalog()


async def test_node_without_library_named(cluster: LocalCluster, catalog: Catalog) -> None:
    async with Coordinator(url=cluster.url) as co:
        victim = co.node_client(2)
        await victim.function_delete("cogs")
        try:
            status = await co.library_status()
            assert [s.version is None for s in status] == [False, False, True]
            assert "not loaded on node" in (status[2].error or "")
            with pytest.raises(LibraryOutdated, match=co.nodes[2]):
                await co.stored_catalog()
        finally:
            await co.load_library(catalog)
        info = await co.node_info(2)
        assert json.loads(info["catalog_json"])["states"][0]["name"] == catalog.states[0].name
