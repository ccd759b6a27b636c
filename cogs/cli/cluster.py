"""``cogs cluster``: a local coordinator cluster, and forming one from running nodes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cogs.adminauth import AdminAuth
from cogs.catalog import Catalog
from cogs.cli.base import _progress, err_console, main, out_console, run
from cogs.errors import ConfigError
from cogs.paths import DEFAULT_CATALOG
from cogs.settings import DEFAULT_PORT, load_settings


def _cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--dir",
        "dir_",
        type=click.Path(path_type=Path),
        is_eager=True,  # before --port, which is checked against the cluster.json in it
        help="Data directory (default .cogs/cluster-PORT).",
    )(f)
    return click.option(
        "--port", type=int, callback=_port,
        help=f"First node's port (default: what --dir's cluster was started with, else {DEFAULT_PORT}).",
    )(f)  # fmt: skip


def _port(ctx: click.Context, _param: click.Parameter, value: int | None) -> int:
    from cogs.cluster import LocalCluster
    from cogs.errors import CogsError

    try:
        return LocalCluster.port_of(value, ctx.params.get("dir_"))
    except CogsError as e:
        raise click.BadParameter(str(e)) from None


@main.group()
def cluster() -> None:
    """A local coordinator cluster of redis-server processes on loopback."""


@cluster.command("up")
@_cluster_options
@click.option("--masters", default=3, show_default=True, help="Number of primaries.")
@click.option("--replicas", default=0, show_default=True, help="Replicas per primary.")
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(path_type=Path),
    help="State catalog to load (default: the bundled one).",
)
@click.option("--tls", is_flag=True, help="TLS only (clients, replication, bus), with a self-signed CA in DIR/tls.")
@click.option(
    "--persistence",
    type=click.Choice(["aof", "none"]),
    help="aof (default, or what DIR's cluster was started with): states survive a restart of every node "
    "(fsync each second); none: memory and replicas only, no AOF append per write (0-30% less coordinator CPU "
    "per trigger update measured here).",
)
@click.option("--no-keeper", is_flag=True,
              help="Do not start `cogs keeper` (it counts the NFs' usage for [limits] max_keys/max_memory).")
def cluster_up(
    port: int,
    dir_: Path | None,
    masters: int,
    replicas: int,
    catalog_path: Path | None,
    tls: bool,
    persistence: str | None,
    no_keeper: bool,
) -> None:
    """Start the nodes, form the cluster, load the library, start the keeper; print the seed URL."""
    from cogs.cluster import LocalCluster

    catalog = Catalog.from_file(catalog_path or DEFAULT_CATALOG)
    persistence = persistence or LocalCluster.from_dir(port, dir_).persistence
    lc = LocalCluster(port=port, masters=masters, replicas=replicas, dir=dir_, tls=tls, persistence=persistence)
    url = lc.up(progress=_progress)
    files = lc.tls_files
    if files is not None:
        _progress(f"TLS: clients need COGS_TLS_CA_FILE={files.ca}")
    _load(url, catalog, tls_ca_file=files.ca if files else None, admin=lc.admin())
    _progress(f"library loaded on {masters} primar{'y' if masters == 1 else 'ies'} (catalog {catalog.digest})")
    if not no_keeper and lc.start_keeper():
        _progress(f"keeper counting the NFs' usage for their limits (log: {lc.dir}/keeper.log)")
    click.echo(url)


@cluster.command("create")
@click.option(
    "--node",
    "nodes",
    multiple=True,
    required=True,
    help="host:port of a running empty node (repeat).",
)
@click.option("--replicas", default=0, show_default=True, help="Replicas per primary.")
@click.option("--catalog", "catalog_path", type=click.Path(path_type=Path), help="State catalog to load.")
def cluster_create(nodes: tuple[str, ...], replicas: int, catalog_path: Path | None) -> None:
    """Form a cluster from running nodes and load the library (compose's init service)."""
    from cogs.cluster import form_cluster

    addrs = []
    for n in nodes:
        host, _, port = n.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--node {n!r} is not host:port")
        addrs.append((host, int(port)))
    catalog = Catalog.from_file(catalog_path or DEFAULT_CATALOG)
    s = load_settings()  # a locked coordinator's admin (COGS_USERNAME/COGS_PASSWORD, COGS_AUTH_FILE)
    creds = {k: v for k, v in s.connection_kwargs().items() if k in ("username", "password")}
    form_cluster(addrs, replicas, progress=_progress, client_kw=creds)
    url = f"redis://{addrs[0][0]}:{addrs[0][1]}"
    _load(url, catalog)
    click.echo(url)


@cluster.command("scale")
@_cluster_options
@click.option("--masters", required=True, type=click.IntRange(1, 100), help="Primaries to have.")
@click.option("--replicas", type=click.IntRange(0, 10), help="Replicas per primary (default: as now).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the cluster at each step.")
def cluster_scale(port: int, dir_: Path | None, masters: int, replicas: int | None, timeout: float) -> None:
    """Grow or shrink the running local cluster to M primaries (R replicas each),
    moving slots while proxies keep working.

    New nodes get the ACL users (a locked cluster's admin password too) and the function
    libraries before any slot; nodes leaving give their slots away, are forgotten by the
    others and stopped. Run it again to finish a scale that was cut off. A locked
    cluster: as the admin of DIR/auth.conf (else COGS_USERNAME/COGS_PASSWORD)."""
    from cogs.cluster import LocalCluster

    lc = LocalCluster.from_dir(port, dir_)
    s = load_settings()
    creds = {k: v for k, v in s.connection_kwargs().items() if k in ("username", "password")}
    r = lc.scale(masters, replicas, progress=_progress, timeout=timeout, client_kw=creds)
    moved = f"{r.slots_moved} slots and {r.keys_moved:,} keys moved"
    _progress(
        f"scaled from {r.before[0]} primaries / {r.before[1]} nodes to {r.after[0]} / {r.after[1]} in "
        f"{r.seconds:.1f} s: {moved}"
        + (f"; added {', '.join(r.added)}" if r.added else "")
        + (f"; removed {', '.join(r.removed)}" if r.removed else "")
    )
    click.echo(lc.url)


@cluster.command("down")
@_cluster_options
@click.option("--purge", is_flag=True, help="Also delete the data directory.")
def cluster_down(port: int, dir_: Path | None, purge: bool) -> None:
    """Stop the local cluster's nodes (data kept unless --purge)."""
    from cogs.cluster import LocalCluster

    lc = LocalCluster.from_dir(port, dir_)
    lc.down(purge=purge)
    _progress(f"stopped nodes on ports {lc.ports[0]}-{lc.ports[-1]}" + (" and deleted their data" if purge else ""))


@cluster.command("status")
@_cluster_options
def cluster_status(port: int, dir_: Path | None) -> None:
    """Show each local node: running, role, slots, keys, memory. Exit 1 if any is down."""
    from cogs.cluster import LocalCluster

    lc = LocalCluster.from_dir(port, dir_)
    t = Table(title=f"cogs local cluster ({lc.dir})")
    for col in ("port", "running", "role", "slots", "keys", "memory", "cluster_state"):
        t.add_column(col)
    rows = lc.status()
    for s in rows:
        t.add_row(
            str(s.port),
            "yes" if s.running else "[red]no[/]",
            s.role,
            str(s.slots),
            str(s.keys),
            s.memory,
            s.error or s.state,
        )
    out_console.print(t)
    locked = next((s for s in rows if s.error.startswith(("NOAUTH", "WRONGPASS"))), None)
    if locked is not None:
        err_console.print(f"[red]error:[/] {escape(str(lc.refused(locked.port, locked.error)))}", highlight=False)
    if not all(s.running and s.state == "ok" for s in rows):
        sys.exit(1)


def _load(url: str, catalog: Catalog, tls_ca_file: Path | None = None, admin: AdminAuth | None = None) -> None:
    """Load the library; as the admin of auth.conf when the cluster is locked."""
    from cogs.coordinator.client import Coordinator

    creds = admin.client_kw() if admin else {}

    async def go() -> None:
        async with Coordinator(url=url, tls_ca_file=tls_ca_file, **creds) as co:
            await co.load_library(catalog)

    run(go)
