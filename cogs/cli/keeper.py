"""``cogs keeper``: counts each NF's keys and bytes for its usage limits (cogs/keeper.py)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click
import redis
from redis.connection import parse_url
from rich.table import Table

from cogs.cli.base import _progress, main, out_console, url_option
from cogs.errors import ConfigError
from cogs.settings import load_settings


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.1f} MiB"


@main.command("keeper")
@url_option
@click.option(
    "--cluster-dir", type=click.Path(file_okay=False, path_type=Path),
    help="A local cluster's dir (`cogs cluster up --dir`, a lab's): its URL and, when locked, its admin "
    "(auth.conf). Else the admin of COGS_USERNAME/COGS_PASSWORD or COGS_AUTH_FILE.",
)  # fmt: skip
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between passes (more when a pass is long: walks take at most 1/5 of the time).")
@click.option("--once", is_flag=True, help="One pass, print what it counted, exit (1 if a node could not be counted).")
@click.option("--json", "as_json", is_flag=True, help="With --once: JSON, one object per NF and primary.")
def keeper_cmd(url: str | None, cluster_dir: Path | None, interval: float, once: bool, as_json: bool) -> None:
    """Count every NF's keys and bytes on each primary, for its [limits] max_keys and
    max_memory, until Ctrl-C / SIGTERM (or --once).

    Needs an admin (SCAN, MEMORY USAGE); NFs without those limits cost nothing.
    Without a keeper an NF with them is refused once its library has created the
    limit's worth (expiries and deletions are credited only by a count)."""
    from cogs.keeper import Keeper, summary

    tls: dict[str, Any] = {}
    if cluster_dir is not None:
        from cogs.cli.acl import _cluster_dir

        url, tls = _cluster_dir(cluster_dir, url)
    settings = load_settings(url=url)
    seed = parse_url(settings.url)
    if "path" in seed:
        raise ConfigError(f"{settings.url}: give a node's host and port (redis://host:port), not a socket path")
    clients: dict[tuple[str, int], redis.Redis] = {}

    def creds() -> dict[str, Any]:
        """Read again for every new connection: a cluster locked after the keeper started
        (``cogs acl apply --admin-password``) is counted again once its auth.conf is there."""
        from cogs import adminauth

        admin = adminauth.read_dir(cluster_dir)
        kw = {k: v for k, v in load_settings(url=url).connection_kwargs().items() if not k.startswith("socket")}
        kw = {**tls, **(admin.client_kw() if admin else {}), **kw}
        if settings.url.startswith("rediss://"):
            kw["ssl"] = True
        return kw

    def client(host: str, port: int) -> redis.Redis:
        c = clients.get((host, port))
        if c is None:
            c = clients[(host, port)] = redis.Redis(host=host, port=port, socket_timeout=30, socket_connect_timeout=5,
                                                    **creds())  # fmt: skip
        return c

    def reconnect() -> None:
        for c in clients.values():
            c.close()
        clients.clear()

    keeper = Keeper(client, (str(seed.get("host", "127.0.0.1")), int(seed.get("port", 6379))))
    if once:
        p = keeper.count()
        if as_json:
            click.echo(json.dumps({"usage": [u.as_dict() for u in p.usages], "seconds": round(p.seconds, 3),
                                   "failed": p.failed}, indent=2))  # fmt: skip
        else:
            t = Table(title=f"usage counted in {p.seconds:.2f} s")
            for col in ("NF", "keys", "bytes", "primaries", "fullest primary", "limits per primary"):
                t.add_column(col)
            for nf, s in summary(p.usages).items():
                lim = ", ".join(x for x in (f"{s['max_keys']:,} keys" if s["max_keys"] else "",
                                            _mib(s["max_memory"]) if s["max_memory"] else "") if x)  # fmt: skip
                t.add_row(nf, f"{s['keys']:,}", _mib(s["bytes"]), str(s["primaries"]),
                          f"{s['fullest_keys']:,} keys, {_mib(s['fullest_bytes'])}", lim)  # fmt: skip
            out_console.print(t if p.usages else "no NF loaded sets max_keys or max_memory: nothing to count")
        for node, why in p.failed.items():
            _progress(f"not counted on {node}: {why}")
        raise SystemExit(1 if p.failed else 0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    last = [0.0]

    def report(p: Any) -> None:
        if p.failed:
            reconnect()
        if time.monotonic() - last[0] >= 60 or keeper.passes == 1:  # a line a minute, not one per pass
            last[0] = time.monotonic()
            shown = "; ".join(f"{nf} {s['keys']:,} keys {_mib(s['bytes'])}" for nf, s in summary(p.usages).items())
            _progress(f"pass {keeper.passes} in {p.seconds:.2f} s: {shown or 'no NF with usage limits'}")

    _progress(f"counting usage on {settings.url} every {interval:g} s (Ctrl-C stops)")
    keeper.run(stop, interval, report, on_fail=reconnect)
    _progress("stopped")
