"""``cogs acl``: the Redis ACL users of proxies and the monitor."""

from __future__ import annotations

import click

from cogs.cli.base import err_console, main, nf_option, run, url_option
from cogs.settings import load_settings


@main.group()
def acl() -> None:
    """Redis ACL users for proxies (cogs-proxy) and the monitor (cogs-monitor), per NF
    (cogs-NF-proxy, cogs-NF-monitor: confined to that NF's keys and channels)."""


@acl.command("apply")
@url_option
@nf_option
@click.option("--proxy-password", envvar="COGS_ACL_PROXY_PASSWORD", required=True, help="Or COGS_ACL_PROXY_PASSWORD.")
@click.option(
    "--monitor-password", envvar="COGS_ACL_MONITOR_PASSWORD", required=True, help="Or COGS_ACL_MONITOR_PASSWORD."
)
def acl_apply(url: str | None, nf: str | None, proxy_password: str, monitor_password: str) -> None:
    """Create/replace the cogs users (of one NF: --nf) on every primary and replica (as an admin user)."""
    from cogs import acl as acl_mod
    from cogs.coordinator.client import Coordinator
    from cogs.keys import namespace

    settings = load_settings(url=url, nf=nf)
    ns = namespace(settings.nf)

    async def nodes() -> list[tuple[str, int]]:
        async with Coordinator(settings) as co:
            assert co.topology is not None
            return [(n.host, n.port) for n in co.topology.nodes] + [r for n in co.topology.nodes for r in n.replicas]

    kw = {k: v for k, v in settings.connection_kwargs().items() if not k.startswith("socket")}
    if settings.url.startswith("rediss://"):
        kw["ssl"] = True
    made = acl_mod.users(proxy_password, monitor_password, ns)
    done = acl_mod.apply(run(nodes), made, **kw)
    names = " and ".join(u.name for u in made)
    click.echo(f"users {names} set on {len(done)} node(s): {', '.join(a.node for a in done)}")
    unsaved = [a.node for a in done if not a.saved]
    if unsaved:
        err_console.print(
            f"[yellow]not saved on {', '.join(unsaved)}: no aclfile configured there, so a restart loses the "
            "users (run `cogs acl apply` again, or give those nodes an aclfile)[/]"
        )


@acl.command("show")
@nf_option
def acl_show(nf: str | None) -> None:
    """Print the ACL rules of the cogs users (of one NF: --nf)."""
    from cogs import acl as acl_mod
    from cogs.keys import namespace

    ns = namespace(nf or "default")
    for u in acl_mod.users("x" * 12, "x" * 12, ns):
        click.echo(f"{u.name}: " + " ".join(u.rules))
