"""``cogs catalog``: check, load and show the state catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cogs.catalog import Catalog
from cogs.cli.base import main, out_console, run, url_option
from cogs.settings import load_settings


@main.group()
def catalog() -> None:
    """The state catalog stored in the coordinator."""


@catalog.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def catalog_check(path: Path) -> None:
    """Validate a catalog file offline."""
    cat = Catalog.from_file(path)
    click.echo(f"{path}: {len(cat)} states, digest {cat.digest}")


@catalog.command("load")
@click.argument("path", type=click.Path(path_type=Path))
@url_option
def catalog_load(path: Path, url: str | None) -> None:
    """Validate PATH and load it (with the library) on every primary."""
    from cogs.coordinator.client import Coordinator

    cat = Catalog.from_file(path)

    async def go() -> list[str]:
        async with Coordinator(load_settings(url=url)) as co:
            await co.load_library(cat)
            return list(co.nodes)

    nodes = run(go)
    click.echo(f"loaded catalog {cat.digest} ({len(cat)} states) on {', '.join(nodes)}")


@catalog.command("show")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored catalog as JSON.")
def catalog_show(url: str | None, as_json: bool) -> None:
    """Show the stored catalog and the library version on every primary."""
    from cogs.coordinator.client import Coordinator

    async def go() -> tuple[Catalog, list[Any]]:
        async with Coordinator(load_settings(url=url)) as co:
            status = await co.library_status()
            stored, _ = await co.stored_catalog()
            return stored, status

    stored, status = run(go)
    if as_json:
        click.echo(json.dumps({"digest": stored.digest, **json.loads(stored.json)}, indent=2))
        return
    t = Table(title=f"catalog {stored.digest}")
    for col in ("state", "class", "type", "mode", "window/ttl", "checker", "params"):
        t.add_column(col)
    for s in stored:
        life = s.window or s.ttl
        t.add_row(
            s.name, s.state_class, s.type, s.mode, f"{life / 1000:g}s" if life else "-",
            s.checker or "-", json.dumps(s.params) if s.params else "-",
        )  # fmt: skip
    out_console.print(t)
    for n in status:
        click.echo(f"{n.addr}: library {n.version or '-'} catalog {n.catalog_digest or '-'} {n.error or ''}".rstrip())


@catalog.command("types")
def catalog_types() -> None:
    """List the state types and checkers the library offers (read from the Lua headers)."""
    from cogs.library import describe, library_spec

    click.echo(json.dumps(describe(library_spec()), indent=2))
