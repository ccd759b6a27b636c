"""``cogs exporter``: the coordinator's view on an HTTP port, for Prometheus."""

from __future__ import annotations

import sys

import click

from cogs.cli.base import _progress, _until_signal, hold_stop_signals, main, run, url_option
from cogs.settings import load_settings


@main.command("exporter")
@url_option
@click.option("--nf", "nfs", multiple=True, help="Only this NF (repeat for several; default: every NF loaded).")
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP port for /metrics (0: a free one, printed).")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.2, 300),
              help="Seconds between reads of the coordinator; a scrape serves the latest.")  # fmt: skip
def exporter_cmd(url: str | None, nfs: tuple[str, ...], port: int, host: str, interval: float) -> None:
    """Serve the coordinator's view as Prometheus metrics until Ctrl-C / SIGTERM.

    Per node: up, health, ops/s, memory, keys, library and catalog version; per
    state: keys, replica entries and holders; proxies alive and lost, their heartbeat
    age; alerts by state; each NF apart (label nf), every NF loaded unless --nf.
    Read-only (the cogs-monitor ACL user is enough); keeps
    serving, with cogs_up 0, while the coordinator is unreachable. /targets lists
    the proxies that serve their own metrics (Prometheus HTTP service discovery).
    """
    from cogs.keys import namespace
    from cogs.metrics.exporter import CoordinatorView, registry, targets
    from cogs.metrics.exporter import run as feed
    from cogs.metrics.server import MetricsServer

    settings = load_settings(url=url)
    shown = [namespace(nf).nf for nf in nfs] or None  # a bad name: exit 2 now
    view = CoordinatorView()
    hold_stop_signals()  # it serves from here on: a SIGTERM before the loop runs still stops it cleanly
    with MetricsServer(registry(view), host, port, {"/targets": lambda: targets(view)}) as server:
        _progress(f"serving {settings.url}'s metrics on {server.url} (every {interval:g} s; Ctrl-C stops)")
        _progress(f"proxies serving metrics, for Prometheus' http_sd_configs: http://{server.address}/targets")
        sys.stderr.flush()
        if run(lambda: _until_signal(lambda: feed(settings, view, interval, shown))):
            _progress("stopped")
