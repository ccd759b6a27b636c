"""``cogs alerts``: stored and live alerts, each saying why it fired."""

from __future__ import annotations

import json
import sys

import click

from cogs.cli.base import main, nf_option, run, url_option
from cogs.settings import load_settings

FORMATS = ("text", "json", "zeek")


@main.command("alerts")
@url_option
@nf_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing alerts as they are raised.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: one line each; json: every field, one object per line; zeek: JSON lines with "
    "Zeek notice.log fields (ts, note, msg, sub, src, n, ...).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--state", help="Only alerts of this state.")
@click.option(
    "--limit", type=click.IntRange(min=1), help="Only the latest N stored alerts (with --follow: then the live ones)."
)
def alerts_cmd(
    url: str | None, nf: str | None, follow: bool, fmt: str, as_json: bool, state: str | None, limit: int | None
) -> None:
    """Print the alerts raised by checkers (stored ones, then live with --follow).

    Each alert says why it fired: the figures that crossed its checker's threshold,
    over how long of which window, e.g. `dns_qtypes[10.0.0.5]: odd/all = 81/81 = 100%
    >= 50% (all >= 50) in 4.2s of a 10m window`.
    """
    from cogs.alerts import Alert, Unreadable, follow_alerts, read_alerts
    from cogs.coordinator.client import Coordinator

    fmt = "json" if as_json else fmt

    def show(a: Alert) -> None:
        if fmt == "json":
            click.echo(json.dumps(a.to_json()))
        elif fmt == "zeek":
            click.echo(json.dumps(a.to_notice()))
        else:
            params = " ".join(f"{k}={v}" for k, v in sorted(a.params.items()))
            click.echo(f"{a.time:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {a.explanation}  ({a.checker} {params})")
        sys.stdout.flush()

    skipped = Unreadable()  # what is not an alert: logged as met (bounded), summed up at the end

    async def go() -> None:
        async with Coordinator(load_settings(url=url, nf=nf)) as co:
            if follow:
                async for a in follow_alerts(co, state=state, limit=limit, unreadable=skipped):
                    show(a)
            else:
                for a in await read_alerts(co, state=state, limit=limit, unreadable=skipped):
                    show(a)
                if skipped.count:
                    click.echo(f"cogs alerts: {skipped.summary()}", err=True)

    run(go)
