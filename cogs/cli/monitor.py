"""``cogs monitor``: the live terminal view."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console

from cogs.cli.base import _until_signal, main, out_console, run, url_option
from cogs.settings import load_settings


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
