"""The ``cogs`` command.

Exit codes: 0 success, 1 an operation failed (one clear line on stderr),
2 bad usage or configuration, 3 the coordinator is unreachable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from rich.console import Console
from rich.table import Table

from cogs import runtime
from cogs.catalog import Catalog
from cogs.errors import CogsError, ConfigError, CoordinatorUnavailable
from cogs.settings import DEFAULT_PORT, load_settings

T = TypeVar("T")
err_console = Console(stderr=True, soft_wrap=True)
out_console = Console()
DEFAULT_CATALOG = Path(__file__).with_name("catalogs") / "default.toml"


class CogsGroup(click.Group):
    """Turns cogs errors into one line on stderr and a meaningful exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CoordinatorUnavailable as e:
            err_console.print(f"[red]error:[/] {e}", highlight=False)
            sys.exit(3)
        except ConfigError as e:
            err_console.print(f"[red]error:[/] {e}", highlight=False)
            sys.exit(2)
        except CogsError as e:
            err_console.print(f"[red]error:[/] {e}", highlight=False)
            sys.exit(1)
        except redis.ConnectionError as e:
            err_console.print(f"[red]error:[/] coordinator unreachable: {e}", highlight=False)
            sys.exit(3)
        except redis.RedisError as e:
            err_console.print(f"[red]error:[/] coordinator refused: {e}", highlight=False)
            sys.exit(1)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return runtime.run(fn)
    except KeyboardInterrupt:
        sys.exit(130)


async def _until_signal(fn: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``fn`` until it returns or SIGINT/SIGTERM comes; True if a signal ended it.
    A cancel scope, not asyncio's one-shot task cancel: a library that swallows one
    cancellation (a redis connect under way) is cancelled again at its next await."""
    import signal

    import anyio

    stopped = False
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            nonlocal stopped
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stopped = True
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
        await fn()
        tg.cancel_scope.cancel()
    return stopped


def _progress(msg: str) -> None:
    err_console.print(f"[dim]·[/] {msg}", highlight=False)


url_option = click.option(
    "--url",
    envvar="COGS_URL",
    help="Any coordinator node (default: COGS_URL or the local cluster).",
)


@click.group(cls=CogsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cogs-nf")
def main() -> None:
    """cogs: global states of network functions, coordinated on Redis Cluster."""


# -- cluster ---------------------------------------------------------------------------


def _cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--dir",
        "dir_",
        type=click.Path(path_type=Path),
        help="Data directory (default .cogs/cluster-PORT).",
    )(f)
    return click.option("--port", default=DEFAULT_PORT, show_default=True, help="First node's port.")(f)


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
def cluster_up(
    port: int,
    dir_: Path | None,
    masters: int,
    replicas: int,
    catalog_path: Path | None,
    tls: bool,
    persistence: str | None,
) -> None:
    """Start the nodes, form the cluster, load the library; print the seed URL."""
    from cogs.cluster import LocalCluster

    catalog = Catalog.from_file(catalog_path or DEFAULT_CATALOG)
    persistence = persistence or LocalCluster.from_dir(port, dir_).persistence
    lc = LocalCluster(port=port, masters=masters, replicas=replicas, dir=dir_, tls=tls, persistence=persistence)
    url = lc.up(progress=_progress)
    files = lc.tls_files
    if files is not None:
        _progress(f"TLS: clients need COGS_TLS_CA_FILE={files.ca}")
    _load(url, catalog, tls_ca_file=files.ca if files else None)
    _progress(f"library loaded on {masters} primar{'y' if masters == 1 else 'ies'} (catalog {catalog.digest})")
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
    form_cluster(addrs, replicas, progress=_progress)
    url = f"redis://{addrs[0][0]}:{addrs[0][1]}"
    _load(url, catalog)
    click.echo(url)


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
    if not all(s.running and s.state == "ok" for s in rows):
        sys.exit(1)


def _load(url: str, catalog: Catalog, tls_ca_file: Path | None = None) -> None:
    from cogs.coordinator.client import Coordinator

    async def go() -> None:
        async with Coordinator(url=url, tls_ca_file=tls_ca_file) as co:
            await co.load_library(catalog)

    run(go)


# -- catalog ---------------------------------------------------------------------------


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
    from cogs.coordinator.library import describe, library_spec

    click.echo(json.dumps(describe(library_spec()), indent=2))


# -- acl -------------------------------------------------------------------------------


@main.group()
def acl() -> None:
    """Redis ACL users for proxies (cogs-proxy) and the monitor (cogs-monitor)."""


@acl.command("apply")
@url_option
@click.option("--proxy-password", envvar="COGS_ACL_PROXY_PASSWORD", required=True, help="Or COGS_ACL_PROXY_PASSWORD.")
@click.option(
    "--monitor-password", envvar="COGS_ACL_MONITOR_PASSWORD", required=True, help="Or COGS_ACL_MONITOR_PASSWORD."
)
def acl_apply(url: str | None, proxy_password: str, monitor_password: str) -> None:
    """Create/replace the cogs users on every primary and replica (as an admin user)."""
    from cogs import acl as acl_mod
    from cogs.coordinator.client import Coordinator

    settings = load_settings(url=url)

    async def nodes() -> list[tuple[str, int]]:
        async with Coordinator(settings) as co:
            assert co.topology is not None
            return [(n.host, n.port) for n in co.topology.nodes] + [r for n in co.topology.nodes for r in n.replicas]

    kw = {k: v for k, v in settings.connection_kwargs().items() if not k.startswith("socket")}
    if settings.url.startswith("rediss://"):
        kw["ssl"] = True
    done = acl_mod.apply(run(nodes), acl_mod.users(proxy_password, monitor_password), **kw)
    click.echo(f"users cogs-proxy and cogs-monitor set on {len(done)} node(s): {', '.join(a.node for a in done)}")
    unsaved = [a.node for a in done if not a.saved]
    if unsaved:
        err_console.print(
            f"[yellow]not saved on {', '.join(unsaved)}: no aclfile configured there, so a restart loses the "
            "users (run `cogs acl apply` again, or give those nodes an aclfile)[/]"
        )


@acl.command("show")
def acl_show() -> None:
    """Print the ACL rules of the cogs users."""
    from cogs import acl as acl_mod

    click.echo("cogs-proxy:   " + " ".join(acl_mod.PROXY_RULES))
    click.echo("cogs-monitor: " + " ".join(acl_mod.MONITOR_RULES))


# -- alerts ----------------------------------------------------------------------------


@main.command("alerts")
@url_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing alerts as they are raised.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--state", help="Only alerts of this state.")
@click.option("--limit", type=int, help="Only the latest N stored alerts.")
def alerts_cmd(url: str | None, follow: bool, as_json: bool, state: str | None, limit: int | None) -> None:
    """Print the alerts raised by checkers (stored ones, then live with --follow)."""
    from cogs.alerts import Alert, follow_alerts, read_alerts
    from cogs.coordinator.client import Coordinator

    def show(a: Alert) -> None:
        if as_json:
            click.echo(json.dumps(a.to_json()))
        else:
            click.echo(
                f"{a.time:%Y-%m-%d %H:%M:%S.%f}"[:-3]
                + f"  {a.state}  {a.key}  value={a.value}  ({a.checker} {json.dumps(a.params)})"
            )
        sys.stdout.flush()

    async def go() -> None:
        async with Coordinator(load_settings(url=url)) as co:
            if follow:
                async for a in follow_alerts(co, state=state):
                    show(a)
            else:
                for a in await read_alerts(co, state=state, limit=limit):
                    show(a)

    run(go)


# -- monitor ---------------------------------------------------------------------------


@main.command("monitor")
@url_option
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.2, 60), help="Seconds per refresh.")
@click.option("--alerts", "n_alerts", default=8, show_default=True, type=click.IntRange(1, 100), help="Alerts shown.")
@click.option("--once", is_flag=True, help="Print one complete snapshot and exit (3 if unreachable).")
def monitor_cmd(url: str | None, interval: float, n_alerts: int, once: bool) -> None:
    """Live view: nodes, states, proxies and alerts, refreshed every --interval."""
    from collections import deque

    from rich.live import Live

    from cogs.alerts import Alert
    from cogs.monitor import Snapshot, watch
    from cogs.monitor.render import render

    settings = load_settings(url=url)
    alerts: deque[Alert] = deque(maxlen=n_alerts)

    if once:
        last: list[Snapshot] = []
        deadline = time.monotonic() + 30

        def keep(snap: Snapshot) -> bool:  # the first snapshot with complete counts
            last[:] = [snap]
            return not (snap.problem or snap.scan_done >= 1.0 or time.monotonic() > deadline)

        run(lambda: watch(settings, alerts, keep, interval=0.2))
        wide = out_console if out_console.is_terminal else Console(width=150)  # pipes and files: no wrapping
        wide.print(render(last[0], list(alerts)[::-1], interval=interval))
        if last[0].problem:
            sys.exit(3)
        return

    with Live(console=out_console, screen=True, auto_refresh=False) as live:

        def show(snap: Snapshot) -> bool:
            live.update(render(snap, list(alerts)[::-1], interval=interval), refresh=True)
            return True

        if run(lambda: _until_signal(lambda: watch(settings, alerts, show, interval=interval))):
            sys.exit(130)


# -- demo ------------------------------------------------------------------------------


@main.command("demo")
@url_option
@click.option("--middleboxes", "-n", default=4, show_default=True, help="Middlebox processes.")
def demo_cmd(url: str | None, middleboxes: int) -> None:
    """A port scan split over N middleboxes: cogs' global state catches it, local state does not."""
    from cogs.demo import run_demo

    run_demo(load_settings(url=url).url, middleboxes, out_console)


# -- bench -----------------------------------------------------------------------------


@main.group()
def bench() -> None:
    """Benchmarks; each writes JSON + Markdown under bench/results/."""


BENCHES = {
    "coordinator": "Coordinator throughput (paper Fig. 12) vs naive and pipelined redis-py.",
    "design": "Design choices (paper Fig. 10 + Table III): sync/async x singleton/replica, trigger path.",
    "scaling": "NF scaling (paper Fig. 11a): packets/s vs middleboxes, and a capacity model.",
    "soak": "Soak: minutes of steady load with proxies joining and leaving; nothing lost, memory flat.",
    "indirect": "Indirect states: local vs remote retrieve latency (1 KB, 1 MB), coordinator lookups per op.",
    "webcache": "Cooperative web cache (paper Fig. 11c): throughput and hit ratio, cogs vs ICP, 1..9 proxies.",
}


#: options only some benches take (passed to their main() as keywords)
BENCH_OPTIONS: dict[str, list[Any]] = {
    "webcache": [
        click.option(
            "--placement",
            type=click.Choice(["split", "shared"]),
            default="split",
            show_default=True,
            help="split: caching proxies on half the CPUs; load generators, origin and coordinator on the other "
            "half (as separate machines); shared: all on every CPU.",
        )
    ],
}


def _bench_command(name: str, doc: str) -> None:
    @url_option
    @click.option("--quick", is_flag=True, help="Small sizes, under a minute.")
    @click.option("--out", type=click.Path(path_type=Path), help="JSON output file.")
    def run_bench(url: str | None, quick: bool, out: Path | None, **extra: Any) -> None:
        import importlib

        mod = importlib.import_module(f"cogs.benchmarks.{name}")
        mod.main(url=url, quick=quick, out=out, progress=_progress, **extra)

    for opt in BENCH_OPTIONS.get(name, []):
        run_bench = opt(run_bench)
    bench.command(name, help=doc)(run_bench)


for _name, _doc in BENCHES.items():
    _bench_command(_name, _doc)


# the NF commands live in their own module; importing it registers them on `main`
from cogs import cli_nf  # noqa: E402,F401

if __name__ == "__main__":
    main()
