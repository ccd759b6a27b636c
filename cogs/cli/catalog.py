"""``cogs catalog``: check, load and show the state catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cogs.catalog import Catalog
from cogs.cli.base import _progress, main, nf_option, out_console, run, url_option
from cogs.settings import load_settings


@main.group()
def catalog() -> None:
    """The state catalog stored in the coordinator."""


@catalog.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def catalog_check(path: Path) -> None:
    """Validate a catalog file offline."""
    cat = Catalog.from_file(path)
    limits = f", limits {cat.limits.shown()}" if cat.limits.shown() != "none" else ""
    click.echo(f"{path}: {len(cat)} states, digest {cat.digest}{limits}")


@catalog.command("load")
@click.argument("path", type=click.Path(path_type=Path))
@url_option
@nf_option
def catalog_load(path: Path, url: str | None, nf: str | None) -> None:
    """Validate PATH and load it (with the library) on every primary.

    With --nf NAME: that NF's catalog and library (cogs_NAME), next to the other NFs'
    on the cluster, which are left alone. The catalog's [limits] take effect at once;
    proxies keep running unless the states changed."""
    from cogs.coordinator.client import Coordinator

    cat = Catalog.from_file(path)

    async def go() -> tuple[list[str], str]:
        async with Coordinator(load_settings(url=url, nf=nf)) as co:
            await co.load_library(cat)
            return list(co.nodes), co.ns.nf

    nodes, which = run(go)
    limit = f", limits {cat.limits.shown()}" if cat.limits.shown() != "none" else ""
    of = "" if which == "default" else f" of NF {which}"
    click.echo(f"loaded catalog {cat.digest} ({len(cat)} states{limit}){of} on {', '.join(nodes)}")
    if cat.limits.usage:
        _progress("max_keys/max_memory are counted by `cogs keeper` (`cogs cluster up` starts one; compose: the "
                  "keeper service); without one, the NF is refused once it has created the limit's worth")  # fmt: skip


@catalog.command("unload")
@url_option
@click.option("--nf", required=True, envvar="COGS_NF", help="The NF to take off the cluster (not the default one).")
@click.option("--delete-keys", is_flag=True, help="Also delete every key of the NF (its states, alerts, records).")
@click.option("--force", is_flag=True, help="Even while proxies of the NF beat (they get 'library not loaded').")
def catalog_unload(url: str | None, nf: str, delete_keys: bool, force: bool) -> None:
    """Take an NF off the cluster (as the admin): its library from every primary, its
    name from the NF index and, with --delete-keys, its keys. Other NFs are left alone;
    its ACL users stay (`ACL DELUSER cogs-NF-proxy cogs-NF-monitor` on every node removes them)."""
    from cogs.coordinator.client import Coordinator

    async def go() -> int:
        async with Coordinator(load_settings(url=url, nf=nf)) as co:
            return await co.unload_library(delete_keys=delete_keys, force=force, progress=_progress)

    deleted = run(go)
    keys = f", {deleted:,} key(s) deleted" if delete_keys else " (its keys kept: --delete-keys deletes them)"
    click.echo(f"NF {nf} unloaded{keys}")


@catalog.command("show")
@url_option
@nf_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored catalog as JSON.")
def catalog_show(url: str | None, nf: str | None, as_json: bool) -> None:
    """Show the stored catalog (of one NF: --nf) and the library version on every primary."""
    from cogs.coordinator.client import Coordinator

    async def go() -> tuple[Catalog, list[Any], str]:
        async with Coordinator(load_settings(url=url, nf=nf)) as co:
            status = await co.library_status()
            stored, _ = await co.stored_catalog()
            return stored, status, co.ns.nf

    stored, status, which = run(go)
    limits = stored.limits.model_dump(exclude_none=True)
    if as_json:
        click.echo(json.dumps({"nf": which, "digest": stored.digest, **json.loads(stored.json), "limits": limits},
                              indent=2))  # fmt: skip
        return
    shown = ", ".join(f"{k} {v:,}" for k, v in limits.items()) or "none"
    t = Table(title=f"NF {which}: catalog {stored.digest}, limits: {shown}")
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
