"""``cogs nf run`` and ``cogs trace synth``: the network functions on traces."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cogs.cli.base import err_console, main, out_console
from cogs.settings import load_settings

if TYPE_CHECKING:
    from cogs.nf.packets import TraceStats

#: cogs.nf.detectors.DETECTORS (a test checks), not imported here: the detectors need
#: dpkt, an extra ([nf]) that `cogs --help` and the rest of the CLI must not need
DETECTOR_NAMES = ("dnstunnel", "portscan", "sidejack")


@main.group()
def nf() -> None:
    """Network functions on cogs: replay traces through N middleboxes."""


def _bar() -> Progress:
    return Progress(
        TextColumn("[dim]{task.description}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not sys.stderr.isatty(),
    )  # fmt: skip


def _replay_task(bar: Progress, n: int) -> Any:
    """A bar that says what happens before the first packet (reading the capture,
    starting n middlebox processes, their proxies connecting), then counts packets."""
    task = bar.add_task(f"reading the capture, starting {n} middlebox(es)", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, description="replaying")

    return progress


@nf.command("run")
@click.argument("name", type=click.Choice([*DETECTOR_NAMES, "nat", "webcache"]))
@click.option("--trace", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="pcap or pcapng file.")
@click.option("--interface", "-i", help="Capture live traffic on this network interface instead of reading --trace.")
@click.option("--workers", "-w", default=1, show_default=True, type=click.IntRange(min=1),
              help="--interface: worker processes here (each a middlebox; the kernel splits flows).")  # fmt: skip
@click.option("--namespace", default="", help="--interface: key prefix shared by the hosts of one deployment.")
@click.option("--out-interface", help="nat --interface: where the translated packets go out.")
@click.option(
    "--middleboxes", "--instances", "-n", "middleboxes", default=1, show_default=True,
    help="Middlebox processes (webcache: caching proxies).",
)  # fmt: skip
@click.option(
    "--url", "--coordinator", "coordinator", envvar="COGS_URL",
    help="Any coordinator node (default: COGS_URL or the local cluster); --coordinator is an alias.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alert (nat: one summary) on stdout.")
@click.option(
    "--local-only", is_flag=True, help="Each middlebox keeps its own states (what a cluster without cogs sees)."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="nat: the translated packets (pcap).")
@click.option("--mode", type=click.Choice(["async", "sync"]), default="async", show_default=True, help="nat: lookups.")
@click.option("--state", "nat_state", default="nat", show_default=True, help="nat: the portmap state to use.")
@click.option("--internal", multiple=True, help="nat: an inside network (repeatable; default: RFC 1918).")
@click.option("--cooperation", type=click.Choice(["cogs", "icp", "local"]), default="cogs", show_default=True,
              help="webcache: find objects through cogs, by asking every sibling (ICP), or not at all.")  # fmt: skip
@click.option("--port", default=0, help="webcache: first HTTP proxy port (default: free ports).")
@click.option("--demo-origin", is_flag=True, help="webcache: also start an origin server to try it with.")
@click.option(
    "--duration", default=0.0, help="webcache, --interface: stop after this many seconds (default: Ctrl-C, SIGTERM)."
)
@click.option("--cache-mb", default=1024, show_default=True, type=click.IntRange(min=1),
              help="webcache: MB of objects each node keeps; past it the least recently used go.")  # fmt: skip
def nf_run(
    name: str,
    trace: Path | None,
    interface: str | None,
    workers: int,
    namespace: str,
    out_interface: str | None,
    middleboxes: int,
    coordinator: str | None,
    as_json: bool,
    local_only: bool,
    out: Path | None,
    mode: str,
    nat_state: str,
    internal: tuple[str, ...],
    cooperation: str,
    port: int,
    demo_origin: bool,
    duration: float,
    cache_mb: int,
) -> None:
    """Run NF NAME on N middleboxes. Detectors and nat replay --trace (the alerts, or
    the translated packets in --out) or capture --interface live with --workers
    processes; webcache starts N caching HTTP proxies."""
    url = load_settings(url=coordinator).url
    if name == "webcache":
        _webcache(middleboxes, url, cooperation, port, demo_origin, duration, as_json, cache_mb << 20)
        return
    if interface is not None:
        if trace is not None or local_only or out is not None:
            raise click.UsageError("--interface captures live: --trace, --local-only and --out are for captures")
        if middleboxes != 1:
            raise click.UsageError("--interface runs --workers capture processes on this host, not --middleboxes")
        if out_interface is not None and name != "nat":
            raise click.UsageError("--out-interface is where nat sends what it translated; the detectors send nothing")
        from cogs.cli.live import run_live_cli
        from cogs.nf.live_config import LiveConfig

        cfg = LiveConfig(name, interface, url, namespace, None, out_interface, nat_state, mode, internal)
        run_live_cli(cfg, workers, duration, as_json)
        return
    if workers != 1 or namespace or out_interface or duration:
        raise click.UsageError("--workers, --namespace, --out-interface and --duration are for --interface")
    if trace is None:
        raise click.UsageError(f"{name} reads a capture or an interface: give --trace FILE or --interface IF")
    if name == "nat":
        if out is None:
            raise click.UsageError("nat writes the translated packets: give --out FILE")
        if local_only:
            raise click.UsageError("--local-only is for the detectors: a NAT without its global table is no NAT")
        _nat(trace, middleboxes, url, out, mode, nat_state, internal, as_json)
        return
    from cogs.nf.runner import counters, run_nf

    with _bar() as bar:
        result = run_nf(name, trace, middleboxes, url, local_only=local_only, progress=_replay_task(bar, middleboxes))
    if as_json:
        for a in result.alerts:
            click.echo(json.dumps(a))
    else:
        t = Table(title=f"{name}: {len(result.alerts)} alert(s)")
        for col in ("time", "key", "value", "state", "detail"):
            t.add_column(col)
        for a in result.alerts:
            detail = ", ".join(a.get("clients", [])) or a.get("msg") or a["state_key"]
            t.add_row(a["time"][11:23], a["key"], a["value"], a["state"], detail)
        out_console.print(t)
    _trace_line(result.trace)
    for b in result.boxes:
        err_console.print(
            f"[dim]middlebox {b.box}: {b.packets} packets, {b.packets_per_s:,.0f} packets/s, "
            f"{b.updates} updates -> {b.ops_sent} ops[/]",
            highlight=False,
        )
    total = counters(result)
    extra = ", ".join(f"{v} {k}" for k, v in sorted(total.items()))
    err_console.print(f"[dim]total {result.packets_per_s:,.0f} packets/s; {extra}[/]", highlight=False)
    failed = {k: v for k, v in total.items() if k.startswith(("packets skipped", "updates refused", "finish failed"))}
    if failed:  # the boxes went on; say so plainly: detection may have missed what those carried
        err_console.print(
            "[yellow]warning:[/] " + ", ".join(f"{v} {k}" for k, v in sorted(failed.items())) + " (see the log)",
            highlight=False,
        )


def _webcache(
    n: int, url: str, cooperation: str, port: int, demo: bool, duration: float, as_json: bool, store_bytes: int
) -> None:
    import time

    from cogs.nf.webcache.cluster import web_cache

    with web_cache(n, cooperation, url, port=port, origin_delay_s=0.02 if demo else None, store_bytes=store_bytes) as c:
        if as_json:
            click.echo(json.dumps({"nodes": c.nodes, "origin": c.origin, "cooperation": cooperation}))
        else:
            t = Table(title=f"web cache: {n} caching HTTP proxies ({cooperation})")
            t.add_column("node")
            t.add_column("HTTP proxy")
            for i, addr in enumerate(c.nodes):
                t.add_row(f"cache-{i}", f"http://{addr}")
            out_console.print(t)
            example = f"{c.origin}/obj/1" if c.origin else "http://example.org/"
            err_console.print(f"try: curl -si -x http://{c.nodes[0]} {example}   (stats: {c.nodes[0]}/cogs/stats)")
            if c.origin:
                err_console.print(f"origin: {c.origin} (/obj/<n>, /nostore/<n>, /private/<n>, /status/<code>)")
            err_console.print("Ctrl-C stops the cluster" if not duration else f"running for {duration:g} s")
        sys.stdout.flush()
        try:
            deadline = time.monotonic() + duration if duration else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


def _trace_line(st: TraceStats) -> None:
    skipped = ", ".join(f"{n} {why}" for why, n in st.skipped.items()) or "none"
    whole = f" ({st.reassembled} reassembled from fragments)" if st.reassembled else ""
    err_console.print(
        f"[dim]{st.frames} frames, {st.packets} IP packets{whole}, skipped: {skipped}[/]", highlight=False
    )


def _nat(
    trace: Path, n: int, url: str, out: Path, mode: str, state: str, internal: tuple[str, ...], as_json: bool
) -> None:
    from cogs.nf.nat import PRIVATE, run_nat

    with _bar() as bar:
        result = run_nat(
            trace, n, url, out=out, state=state, mode=mode, internal=internal or PRIVATE,
            progress=_replay_task(bar, n),
        )  # fmt: skip
    summary = {
        "nf": "nat",
        "middleboxes": n,
        "mode": mode,
        "state": state,
        "flows": len(result.mappings),
        "packets_per_s": round(result.packets_per_s),
        "counters": dict(sorted(result.counters.items())),
        "out": str(out),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        t = Table(title=f"nat on {n} middlebox(es), {mode}, state {state}: {len(result.mappings)} flows -> {out}")
        t.add_column("packets")
        t.add_column("count", justify="right")
        for k, v in sorted(result.counters.items()):
            t.add_row(k, f"{v:,}")
        out_console.print(t)
    _trace_line(result.trace)
    for direction, boxes in (("outbound", result.outbound), ("inbound", result.inbound)):
        for b in boxes:
            err_console.print(
                f"[dim]{direction} middlebox {b.box}: {b.packets} packets, {b.packets_per_s:,.0f} packets/s, "
                f"{b.ops_sent} lookups at the coordinator, {b.cache_hits} replica hits[/]",
                highlight=False,
            )
    err_console.print(f"[dim]total {result.packets_per_s:,.0f} packets/s[/]", highlight=False)
    if result.counters["reverse translated WRONG"] or result.counters["external ports shared by two flows"]:
        raise click.ClickException("the NAT translated inconsistently (see the counts above)")


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
@click.option("--nat-flows", default=0, show_default=True, help="Flows from inside hosts to outside servers (NAT).")
@click.option("--nat-hosts", default=50, show_default=True, help="Inside hosts opening the NAT flows.")
@click.option("--duration", default=60.0, show_default=True, help="Seconds of traffic.")
def trace_synth(out: Path, **kw: int | float) -> None:
    """Write a pcap of benign traffic plus attacks, and OUT.truth.json (the expected alerts)."""
    from cogs.nf.synth import Synth

    with err_console.status(f"building {kw['benign_flows']:,} benign flows and the attacks"):
        s = Synth(**kw).build()  # type: ignore[arg-type]
    with err_console.status(f"writing {len(s.frames):,} frames to {out}"):
        pcap, truth = s.write(out)
    click.echo(f"{pcap}: {len(s.frames)} frames; expected alerts in {truth}")


@trace.command("replay")
@click.argument("capture", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--interface", "-i", required=True, help="Network interface to send the frames out of.")
@click.option("--pps", type=float, help="Packets per second.")
@click.option("--mbps", type=float, help="Megabits per second.")
@click.option("--topspeed", is_flag=True, help="As fast as the interface takes them.")
@click.option("--loop", "loops", default=1, show_default=True, type=click.IntRange(min=1), help="Times to send it.")
@click.option("--engine", type=click.Choice(["auto", "tcpreplay", "python"]), default="auto", show_default=True,
              help="tcpreplay where installed (Ethernet captures), else a Python sender.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
def trace_replay(
    capture: Path, interface: str, pps: float | None, mbps: float | None, topspeed: bool, loops: int, engine: str,
    as_json: bool,
) -> None:  # fmt: skip
    """Send the frames of CAPTURE out of an interface (default: at the capture's own timing)."""
    from cogs.nf.replay import Rate, replay

    r = replay(capture, interface, Rate(pps, mbps, topspeed), loops=loops, engine=engine)
    if as_json:
        click.echo(json.dumps(r.to_json()))
    else:
        click.echo(r.describe(f"out of {interface}"))
