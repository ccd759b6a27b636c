"""``cogs nf run`` and ``cogs trace synth``: the network functions on traces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cogs.cli import err_console, main, out_console
from cogs.nf.detectors import DETECTORS
from cogs.settings import load_settings


@main.group()
def nf() -> None:
    """Network functions on cogs: replay traces through N middleboxes."""


@nf.command("run")
@click.argument("name", type=click.Choice(sorted(DETECTORS)))
@click.option(
    "--trace", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="pcap or pcapng file."
)
@click.option("--middleboxes", "-n", default=1, show_default=True, help="Middlebox processes behind the flow splitter.")
@click.option("--coordinator", envvar="COGS_URL", help="Coordinator URL (default: COGS_URL or the local cluster).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alert on stdout.")
@click.option(
    "--local-only", is_flag=True, help="Each middlebox keeps its own states (what a cluster without cogs sees)."
)
def nf_run(name: str, trace: Path, middleboxes: int, coordinator: str | None, as_json: bool, local_only: bool) -> None:
    """Replay TRACE through NF NAME and print the alerts it raised."""
    from cogs.nf.runner import counters, run_nf

    url = load_settings(url=coordinator).url
    with Progress(
        TextColumn("[dim]replaying[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not sys.stderr.isatty(),
    ) as bar:  # fmt: skip
        task = bar.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = run_nf(name, trace, middleboxes, url, local_only=local_only, progress=progress)
    if as_json:
        for a in result.alerts:
            click.echo(json.dumps(a))
    else:
        t = Table(title=f"{name}: {len(result.alerts)} alert(s)")
        for col in ("time", "key", "value", "state", "detail"):
            t.add_column(col)
        for a in result.alerts:
            detail = ", ".join(a.get("clients", [])) or a["state_key"]
            t.add_row(a["time"][11:23], a["key"], a["value"], a["state"], detail)
        out_console.print(t)
    st = result.trace
    skipped = ", ".join(f"{n} {why}" for why, n in st.skipped.items()) or "none"
    err_console.print(f"[dim]{st.frames} frames, {st.packets} IP packets, skipped: {skipped}[/]", highlight=False)
    for b in result.boxes:
        err_console.print(
            f"[dim]middlebox {b.box}: {b.packets} packets, {b.packets_per_s:,.0f} packets/s, "
            f"{b.updates} updates -> {b.ops_sent} ops[/]",
            highlight=False,
        )
    extra = ", ".join(f"{v} {k}" for k, v in sorted(counters(result).items()))
    err_console.print(f"[dim]total {result.packets_per_s:,.0f} packets/s; {extra}[/]", highlight=False)


@main.group()
def trace() -> None:
    """Synthetic traces for the NFs."""


@trace.command("synth")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="pcap file to write.")
@click.option("--seed", default=7, show_default=True)
@click.option("--benign-flows", default=300, show_default=True, help="Benign HTTP/DNS/failed flows.")
@click.option("--scans", default=1, show_default=True, help="Port scans (one scanner, one target each).")
@click.option("--scan-ports", default=40, show_default=True, help="Ports each scan probes.")
@click.option("--tunnels", default=1, show_default=True, help="DNS tunnels (one client, one domain each).")
@click.option("--tunnel-queries", default=150, show_default=True)
@click.option("--sidejacks", default=1, show_default=True, help="Session cookies reused from a second client.")
@click.option("--duration", default=60.0, show_default=True, help="Seconds of traffic.")
def trace_synth(out: Path, **kw: int | float) -> None:
    """Write a pcap of benign traffic plus attacks, and OUT.truth.json (the expected alerts)."""
    from cogs.nf.synth import Synth

    s = Synth(**kw).build()  # type: ignore[arg-type]
    pcap, truth = s.write(out)
    click.echo(f"{pcap}: {len(s.frames)} frames; expected alerts in {truth}")
