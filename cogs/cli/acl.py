"""``cogs acl``: the Redis ACL users of proxies and the monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from redis.connection import parse_url

from cogs.cli.base import err_console, main, nf_option, url_option
from cogs.errors import CogsError, ConfigError
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
@click.option(
    "--admin-password", envvar="COGS_ACL_ADMIN_PASSWORD",
    help="Lock the coordinator: the default user (the admin) gets this password on every node, and every node "
    "masteruser/masterauth; a connection without credentials gets NOAUTH. Or COGS_ACL_ADMIN_PASSWORD.",
)  # fmt: skip
@click.option(
    "--cluster-dir", type=click.Path(file_okay=False, path_type=Path),
    help="The cluster's dir (`cogs cluster up --dir`, or a lab's): its auth.conf (mode 0600) keeps the admin "
    "credentials, which its nodes include and cogs commands on it use; without --admin-password, the password "
    "in it. Default --url: that cluster's.",
)  # fmt: skip
def acl_apply(
    url: str | None, nf: str | None, proxy_password: str, monitor_password: str, admin_password: str | None,
    cluster_dir: Path | None,
) -> None:  # fmt: skip
    """Create/replace the cogs users (of one NF: --nf) on every primary and replica (as an admin user);
    with --admin-password, lock the coordinator (the default user's password)."""
    from cogs import acl as acl_mod
    from cogs import adminauth
    from cogs.keys import namespace

    admin = adminauth.AdminAuth(admin_password) if admin_password is not None else None
    tls: dict[str, Any] = {}
    if cluster_dir is not None:
        url, tls = _cluster_dir(cluster_dir, url)
        if admin is None:
            admin = adminauth.read(adminauth.path_in(cluster_dir))
    settings = load_settings(url=url, nf=nf)
    ns = namespace(settings.nf)
    kw = {k: v for k, v in settings.connection_kwargs().items() if not k.startswith("socket")}
    if settings.url.startswith("rediss://"):
        kw["ssl"] = True
    kw = {**tls, **kw}
    made = acl_mod.users(proxy_password, monitor_password, ns)
    for u in made:
        u.setuser()  # a short password: refused before any node is asked anything
    if admin is not None:
        adminauth.check_password("--admin-password", admin.password)
    seed = parse_url(settings.url)
    if "path" in seed:
        raise ConfigError(f"{settings.url}: give a node's host and port (redis://host:port), not a socket path")
    host, port = str(seed.get("host", "127.0.0.1")), int(seed.get("port", 6379))
    find_kw = {**(admin.client_kw() if admin else {}), **kw}
    addrs = acl_mod.cluster_nodes(host, port, **find_kw)
    done = acl_mod.apply(addrs, made, admin, auth_dir=cluster_dir, **kw)
    names = " and ".join(u.name for u in made)
    click.echo(f"users {names} set on {len(done)} node(s): {', '.join(a.node for a in done)}")
    unsaved = [a.node for a in done if not a.saved]
    if unsaved:
        lost = "the users and the admin password (the node would be open again)" if admin else "the users"
        err_console.print(
            f"[yellow]not saved on {', '.join(unsaved)}: no aclfile configured there, so a restart loses {lost} "
            "(run `cogs acl apply` again, or give those nodes an aclfile)[/]"
        )
    if admin is None:
        return
    open_ = [a.node for a in done if not a.locked]
    if open_:
        raise CogsError(f"node(s) {', '.join(open_)} still answer a connection without credentials")
    click.echo(f"locked: {len(done)} node(s) refuse connections without credentials (NOAUTH)")
    if cluster_dir is not None:
        where = adminauth.path_in(cluster_dir)
        click.echo(f"admin credentials in {where} (mode 0600): its nodes include it, cogs commands on it use it")
    else:
        err_console.print(
            "[yellow]masteruser/masterauth set live only (no --cluster-dir): a restarted replica cannot sync with "
            "its primary until `cogs acl apply` runs again (or its config has them)[/]"
        )


def _cluster_dir(d: Path, url: str | None) -> tuple[str, dict[str, Any]]:
    """The URL (``url`` if given) and TLS keywords of the cluster in ``d``."""
    import json

    from cogs.cluster import LocalCluster

    if (d / "cluster.json").exists():
        try:
            port = int(json.loads((d / "cluster.json").read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--cluster-dir {d}: unreadable cluster.json ({e})") from e
        lc = LocalCluster.from_dir(port, d)
        return url or lc.url, lc.tls_kwargs()
    if (d / "lab.json").exists():
        if url is None:
            raise ConfigError(f"--cluster-dir {d} is a lab: run in it, `cogs lab exec --dir {d} node1 -- cogs acl ...`")
        return url, {}
    raise ConfigError(f"--cluster-dir {d}: no cogs cluster there (neither cluster.json nor lab.json)")


@acl.command("show")
@nf_option
def acl_show(nf: str | None) -> None:
    """Print the ACL rules of the cogs users (of one NF: --nf)."""
    from cogs import acl as acl_mod
    from cogs.keys import namespace

    ns = namespace(nf or "default")
    for u in acl_mod.users("x" * 12, "x" * 12, ns):
        click.echo(f"{u.name}: " + " ".join(u.rules))
