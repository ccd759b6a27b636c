"""``cogs lab``: coordinator nodes and middleboxes as hosts of an emulated LAN (root)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cogs.cli.base import _progress, err_console, main, out_console

DEFAULT_DIR = Path(".cogs") / "lab"


def _dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dir", "dir_", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DIR, show_default=True,
        help="The lab's directory: its state, node data and logs; names its namespaces.",
    )(f)  # fmt: skip


@main.group()
def lab() -> None:
    """A multi-host lab on network namespaces: one host per coordinator node and per
    middlebox, links with a round-trip time, jitter and rate (needs root)."""


@lab.command("up")
@_dir_option
@click.option("--nodes", default=6, show_default=True, help="Coordinator nodes (primaries + replicas).")
@click.option("--replicas", default=1, show_default=True, help="Replicas per primary.")
@click.option("--middleboxes", "-m", default=1, show_default=True, type=click.IntRange(0, 250), help="Middlebox hosts.")
@click.option(
    "--rtt", default="200us", show_default=True, help="Round trip node <-> middlebox (rtt/4 per link, each way)."
)
@click.option(
    "--jitter", default="0us", show_default=True, help="± on the round trip (uniform, jitter/4 per link crossing)."
)
@click.option("--rate", help="Each link's rate, each direction (e.g. 1gbit; default: unlimited).")
@click.option("--loss", help="Each link crossing's loss (e.g. 0.1%; default: none).")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="State catalog to load.")
def lab_up(
    dir_: Path, nodes: int, replicas: int, middleboxes: int, rtt: str, jitter: str, rate: str | None,
    loss: str | None, catalog: Path | None,
) -> None:  # fmt: skip
    """Build the lab, start the nodes, form the cluster; print the cluster's URL (valid
    inside the lab: `cogs lab exec HOST -- CMD` sets COGS_URL to it)."""
    from cogs.lab import Lab

    lb = Lab.up(
        dir_, nodes=nodes, replicas=replicas, middleboxes=middleboxes, rtt=rtt, jitter=jitter, rate=rate, loss=loss,
        catalog=catalog, progress=_progress,
    )  # fmt: skip
    _progress(f"hosts: {', '.join(f'{h.name} {h.addr}' for h in lb.hosts.values())}")
    _progress(f"run commands in a host: cogs lab exec --dir {dir_} mb1 -- CMD; remove: cogs lab down --dir {dir_}")
    click.echo(lb.url)


@lab.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_dir_option
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(dir_: Path, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in HOST's namespace (node1.., mb1..) with COGS_URL set to the lab
    cluster; exits with CMD's status. Put `--` before CMD."""
    from cogs.lab import Lab

    argv = list(cmd[1:] if cmd[0] == "--" else cmd)  # click keeps the `--` of an unprocessed tail
    if not argv:
        raise click.UsageError("no command given after --")
    lb = Lab.from_dir(dir_)
    try:
        r = lb.exec(host, argv, capture=False)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    sys.exit(r.returncode)


@lab.command("status")
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def lab_status(dir_: Path, as_json: bool) -> None:
    """Hosts, addresses, links (delay, jitter, rate, loss, frames) and the cluster's
    health. Exit 1 when the lab is not up or the cluster not ok."""
    from cogs.lab import Lab
    from cogs.lab.units import fmt_rate, fmt_us

    st = Lab.from_dir(dir_).status()
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
    else:
        t = Table(title=f"cogs lab {st.tag}: {'up' if st.up else 'DOWN'}, cluster {st.cluster['state']} ({st.dir})")
        for col in ("host", "address", "link, one way", "frames in/out", "redis", "cut off from"):
            t.add_column(col)
        for h in st.hosts:
            lk = h.link
            link = f"{fmt_us(lk.get('delay_us', 0))}±{fmt_us(lk.get('jitter_us', 0))} {fmt_rate(lk.get('rate_bps'))}"
            link += f" loss {lk['loss']:.3%}" if lk.get("loss") else ""
            redis_col = (
                "-"
                if h.role != "node"
                else h.process
                if h.process != "running"
                else f"{h.redis_role} {h.cluster_state}"
            )
            frames = f"{lk.get('rx_frames', '-')}/{lk.get('tx_frames', '-')}"
            name = h.name if h.up else f"[red]{h.name}[/]"
            t.add_row(name, h.addr, link, frames, redis_col, escape(", ".join(h.blocked)) or "-")
        out_console.print(t)
        sw = st.switch
        switch = f"pid {sw['pid']}, frames {sw['max_late_us']} us late at most" if sw else "[red]not answering[/]"
        c = st.cluster
        err_console.print(
            f"switch: {switch}; cluster {c['state']}: {c['primaries']} primaries, {c['replicas']} replicas, "
            f"{c['answering']}/{c['nodes']} answering; url {st.url}",
            highlight=False,
        )
    if not (st.up and st.cluster["state"] == "ok"):
        sys.exit(1)


@lab.command("netem")
@_dir_option
@click.argument("host")
@click.option("--delay", help="One-way delay of HOST's link, each direction (e.g. 1ms).")
@click.option("--jitter", help="± on that delay (uniform).")
@click.option("--loss", help="Loss per crossing (e.g. 1%).")
@click.option("--rate", help="Rate (e.g. 100mbit; 0: unlimited).")
def lab_netem(dir_: Path, host: str, delay: str | None, jitter: str | None, loss: str | None, rate: str | None) -> None:
    """Change HOST's link now (parameters not given keep their value)."""
    from cogs.lab import Lab

    link = Lab.from_dir(dir_).netem(host, delay=delay, jitter=jitter, loss=loss, rate=rate)
    click.echo(json.dumps({host: link}))


@lab.command("scale")
@_dir_option
@click.option("--masters", required=True, type=click.IntRange(1, 100), help="Primaries to have.")
@click.option("--replicas", type=click.IntRange(0, 10), help="Replicas per primary (default: as now).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the cluster at each step.")
def lab_scale(dir_: Path, masters: int, replicas: int | None, timeout: float) -> None:
    """Grow or shrink the lab's cluster to M primaries (R replicas each) while it serves:
    node hosts join (own namespace, link, address) or leave, slots move."""
    from cogs.lab import Lab, scale_lab

    r = scale_lab(Lab.from_dir(dir_), masters, replicas, progress=_progress, timeout=timeout)
    _progress(
        f"scaled from {r.before[0]} primaries / {r.before[1]} nodes to {r.after[0]} / {r.after[1]} in "
        f"{r.seconds:.1f} s: {r.slots_moved} slots and {r.keys_moved:,} keys moved"
        + (f"; added {', '.join(r.added)}" if r.added else "")
        + (f"; removed {', '.join(r.removed)}" if r.removed else "")
    )


@lab.command("down")
@_dir_option
@click.option("--purge", is_flag=True, help="Also delete the lab's directory (node data, logs).")
def lab_down(dir_: Path, purge: bool) -> None:
    """Remove every namespace, link and process of the lab in DIR (idempotent; works
    after a crash too: everything is found by the names DIR gives it)."""
    from cogs.lab import teardown

    done = teardown(dir_)
    if purge:
        shutil.rmtree(dir_, ignore_errors=True)
    _progress(
        f"removed {done['namespaces']} namespace(s) and {done['processes']} process(es)"
        + (f"; deleted {dir_}" if purge else "")
    )


@lab.command("replay")
@_dir_option
@click.argument("capture", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "host", required=True, help="The middlebox host whose eth0 receives it (mb1, mb2, ...).")
@click.option("--pps", type=float, help="Packets per second.")
@click.option("--mbps", type=float, help="Megabits per second.")
@click.option("--topspeed", is_flag=True, help="As fast as the link takes them.")
@click.option("--loop", "loops", default=1, show_default=True, type=click.IntRange(min=1), help="Times to send it.")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
def lab_replay(
    dir_: Path, capture: Path, host: str, pps: float | None, mbps: float | None, topspeed: bool, loops: int,
    as_json: bool,
) -> None:  # fmt: skip
    """Feed CAPTURE to a middlebox host's eth0 (what `cogs nf run NF --interface eth0` there
    captures); default pace: the capture's own timing."""
    from cogs.lab import Lab
    from cogs.nf.replay import Rate, replay_in_lab

    r = replay_in_lab(Lab.from_dir(dir_), host, capture, Rate(pps, mbps, topspeed), loops=loops)
    if as_json:
        click.echo(json.dumps(r.to_json()))
    else:
        click.echo(r.describe(f"into {host}"))
