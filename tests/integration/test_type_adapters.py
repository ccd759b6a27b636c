"""A user-defined type is one Lua file plus, optionally, a Python adapter: the proxy
decodes its replies with the adapter and takes the header's declarations otherwise."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from cogs import TypeAdapter, register_type_adapter, values
from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.library import library_spec
from cogs.ports import free_port_base
from cogs.proxy import StateProxy
from cogs.settings import load_settings
from cogs.values import type_adapter
from tests.integration.test_wheel import FMAX, USER_CATALOG


def test_a_user_type_with_an_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lua = tmp_path / "lua"
    (lua / "types").mkdir(parents=True)
    (lua / "types" / "fmax.lua").write_text(FMAX)
    lc = LocalCluster(port=free_port_base(3), masters=3, dir=tmp_path / "c")
    lc.up()
    settings = load_settings(url=lc.url, lua_paths=(lua,))
    catalog = Catalog.from_toml(USER_CATALOG, library_spec((lua,)))
    monkeypatch.setattr(values, "_ADAPTERS", dict(values._ADAPTERS))  # the registry as it was, after the test
    try:

        async def go() -> tuple[object, object]:
            async with Coordinator(settings) as co:
                await co.load_library(catalog)
            async with StateProxy(settings=settings) as p:
                await p.syn_up("peak", "k", "max", 2.5)
                plain = await p.syn_retrieve("peak", "k")
            register_type_adapter("fmax", TypeAdapter(decoders={"get": lambda v: None if v is None else float(v)}))
            async with StateProxy(settings=settings) as p:
                await p.syn_up("peak", "k", "max", 1.5)  # smaller: unchanged
                return plain, await p.syn_retrieve("peak", "k")

        plain, adapted = anyio.run(go)
        assert plain == "2.5"  # no adapter: generic decoding (text)
        assert adapted == 2.5  # the adapter's decoder
        assert type_adapter("fmax").replicas is None  # the header's declarations stand
        with pytest.raises(ValueError, match="replicas"):
            register_type_adapter("fmax", TypeAdapter(replicas="some"))
    finally:
        lc.down(purge=True)
