"""``cogs alerts``: stored and live alerts."""

from __future__ import annotations

import json
import sys

import click

from cogs.cli.base import main, run, url_option
from cogs.settings import load_settings


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
