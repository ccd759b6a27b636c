"""``cogs monitor``: the live terminal view, or one snapshot for people and scripts."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click
from rich.console import Console

from cogs.cli.base import _until_signal, main, out_console, run, url_option
from cogs.settings import load_settings


@main.command("monitor")
@url_option
@click.option("--nf", "nfs", multiple=True, help="Only this NF (repeat for several; default: every NF loaded).")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.2, 60), help="Seconds per refresh.")
@click.option("--alerts", "n_alerts", default=8, show_default=True, type=click.IntRange(1, 100), help="Alerts shown.")
@click.option(
    "--once",
    is_flag=True,
    help="Print one complete snapshot (state counts of a whole pass, the latest stored alerts) and exit "
    "(3 if unreachable).",
)
@click.option("--json", "as_json", is_flag=True, help="With --once: the snapshot as one JSON object, for scripts.")
def monitor_cmd(
    url: str | None, nfs: tuple[str, ...], interval: float, n_alerts: int, once: bool, as_json: bool
) -> None:
    """Live view: nodes, states, proxies and alerts, refreshed every --interval.

    Every NF loaded on the cluster is shown, each apart (--nf: only those named)."""
    from collections import deque

    from rich.live import Live

    from cogs.alerts import Alert
    from cogs.monitor import Snapshot, snapshot_once, watch
    from cogs.monitor.render import render

    if as_json and not once:
        raise click.UsageError("--json prints one snapshot: use it with --once")
    settings = load_settings(url=url)
    from cogs.keys import namespace

    shown = [namespace(nf).nf for nf in nfs] or None  # a bad name: exit 2 now, not a retry loop
    if once:
        snap, stored = run(lambda: snapshot_once(settings, n_alerts, nfs=shown))
        if as_json:
            click.echo(json.dumps({**asdict(snap), "alerts": [a.to_json() for a in stored]}))
        else:
            wide = out_console if out_console.is_terminal else Console(width=150)  # pipes and files: no wrapping
            wide.print(render(snap, stored[::-1], interval=interval))
        if snap.problem:
            sys.exit(3)
        return

    alerts: deque[Alert] = deque(maxlen=n_alerts)
    with Live(console=out_console, screen=True, auto_refresh=False) as live:

        def show(snap: Snapshot) -> bool:
            live.update(render(snap, list(alerts)[::-1], interval=interval), refresh=True)
            return True

        if run(lambda: _until_signal(lambda: watch(settings, alerts, show, interval=interval, nfs=shown))):
            sys.exit(130)
