"""``cogs demo``: the distributed port-scan demo."""

from __future__ import annotations

import click

from cogs.cli.base import main, out_console, url_option
from cogs.settings import load_settings


@main.command("demo")
@url_option
@click.option("--middleboxes", "-n", default=4, show_default=True, help="Middlebox processes.")
def demo_cmd(url: str | None, middleboxes: int) -> None:
    """A port scan split over N middleboxes: cogs' global state catches it, local state does not."""
    from cogs.demo import run_demo

    run_demo(load_settings(url=url).url, middleboxes, out_console)
