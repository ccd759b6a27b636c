"""``cogs demo``: three NFs split over N middleboxes, with and without cogs."""

from __future__ import annotations

import click

from cogs.cli.base import err_console, main, out_console, url_option
from cogs.settings import load_settings


@main.command("demo")
@url_option
@click.option("--middleboxes", "-n", default=4, show_default=True, help="Middlebox processes.")
def demo_cmd(url: str | None, middleboxes: int) -> None:
    """Three attack detectors scaled over N middleboxes: cogs' global state catches what local state misses.

    Builds a synthetic trace (benign traffic, 2 port scans, a DNS tunnel, 2 hijacked
    session cookies), splits it by flow hash over N middlebox processes and runs the
    portscan, dnstunnel and sidejack NFs on it twice: with their states global at the
    coordinator, then with each box keeping its states to itself. Prints what each
    caught against the ground truth (~30 s). Needs a running coordinator with the
    bundled catalog (`cogs cluster up`); it stays up afterwards with the alerts.
    """
    from cogs.demo import run_demo

    run_demo(load_settings(url=url).url, middleboxes, out_console, err_console)
