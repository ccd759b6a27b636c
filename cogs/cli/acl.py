"""``cogs acl``: the Redis ACL users of proxies and the monitor."""

from __future__ import annotations

import click

from cogs.cli.base import err_console, main, run, url_option
from cogs.settings import load_settings


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
