"""The main demo: three NFs scaled out over N middleboxes, with and without cogs.

A synthetic trace (benign traffic plus port scans, a DNS tunnel and hijacked session
cookies, each made of many flows) is split by the flow hash over N middlebox
processes. With cogs, the multi-flow state is global and every attack is caught, as
the ground truth says; with each box's state kept to itself (``--local-only``), the
split attacks go unseen.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cogs.nf.runner import run_nf
from cogs.nf.synth import Synth
from cogs.settings import DEFAULT_PORT

NFS = ("portscan", "dnstunnel", "sidejack")
SCANS, TUNNELS, SIDEJACKS = 2, 1, 2


def cogs_command() -> str:
    """How the user runs cogs from here: ``cogs`` when that is on PATH and is this
    installation, else the path of this installation's script (``.venv/bin/cogs``)."""
    mine = Path(sys.executable).parent / "cogs"
    on_path = shutil.which("cogs")
    if on_path and (not mine.exists() or Path(on_path).resolve() == mine.resolve()):
        return "cogs"
    if not mine.exists():
        return f"{sys.executable} -m cogs.cli"
    try:
        rel = os.path.relpath(mine)
    except ValueError:  # another drive (Windows)
        return str(mine)
    return rel if not rel.startswith("..") else str(mine)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def run_demo(
    url: str, middleboxes: int = 4, console: Console | None = None, status: Console | None = None
) -> dict[str, Any]:
    """Run the demo against the coordinator at ``url``; results on ``console``, what
    it is doing meanwhile on ``status`` (stderr in the CLI)."""
    console = console or Console()
    status = status or console
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cogs-demo-") as d:
        with status.status("building the synthetic trace"):
            # 30 probed ports: twice the scan threshold, a handful per box once split
            synth = Synth(
                seed=11, benign_flows=2000, scans=SCANS, scan_ports=30, tunnels=TUNNELS, sidejacks=SIDEJACKS
            ).build()
            pcap, truth_file = synth.write(Path(d) / "demo.pcap")
        truth = json.loads(truth_file.read_text())["alerts"]
        expected = Counter(t["nf"] for t in truth)
        console.print(
            f"[bold]cogs demo[/]: {len(synth.frames):,} packets of benign traffic with "
            f"{_plural(SCANS, 'port scan', 'port scans')}, {_plural(TUNNELS, 'DNS tunnel', 'DNS tunnels')} "
            f"and {_plural(SIDEJACKS, 'hijacked session cookie', 'hijacked session cookies')}, split over "
            f"{middleboxes} middlebox processes; each NF runs twice: with cogs' global state, then with each "
            f"box's state kept to itself.\nGround truth: {expected['portscan']} portscan alerts (one per scanner), "
            f"{expected['dnstunnel']} dnstunnel (the tunnel's domain and its client), {expected['sidejack']} "
            "sidejack (one per stolen cookie).",
            highlight=False,
        )
        table = Table(title=f"alerts with {middleboxes} middleboxes")
        for col in ("NF", "expected alerts", "caught with cogs", "caught with local state only", "packets/s"):
            table.add_column(col)
        out: dict[str, Any] = {"truth": truth, "nfs": {}}
        for nf in NFS:
            want = {t["key"] for t in truth if t["nf"] == nf}
            runs = {}
            for label, local_only in (("with cogs", False), ("local state only", True)):
                t0 = time.monotonic()
                with status.status(f"{nf} {label}: starting {middleboxes} middleboxes") as st:

                    def progress(done: int, total: int, st: Any = st, what: str = f"{nf} {label}") -> None:
                        st.update(f"{what}: {done:,}/{total:,} packets replayed")

                    runs[label] = run_nf(nf, pcap, middleboxes, url, local_only=local_only, progress=progress)
                got = {a["key"] for a in runs[label].alerts}
                status.print(
                    f"[dim]·[/] {nf} {label}: {len(got & want)}/{len(want)} expected alerts "
                    f"({time.monotonic() - t0:.1f} s)",
                    highlight=False,
                )
            glob, local = runs["with cogs"], runs["local state only"]
            got_g = {a["key"] for a in glob.alerts}
            got_l = {a["key"] for a in local.alerts}
            table.add_row(
                nf,
                str(len(want)),
                f"[green]{len(got_g & want)}[/]" + (f" (+{len(got_g - want)} unexpected)" if got_g - want else ""),
                f"[red]{len(got_l & want)}[/]",
                f"{glob.packets_per_s:,.0f}",
            )
            out["nfs"][nf] = {"global": glob.alerts, "local": local.alerts}
        console.print(table)
        for nf in NFS:
            for a in out["nfs"][nf]["global"]:
                extra = f" clients {', '.join(a['clients'])}" if "clients" in a else ""
                why = a.get("msg") or f"{a['state']} = {a['value']}"
                console.print(f"  [green]ALERT[/] {nf} {escape(a['key'])}: {escape(why)}{extra}", highlight=False)
    cmd = cogs_command()
    port = urlsplit(url).port or DEFAULT_PORT
    where = "" if port == DEFAULT_PORT else f" --port {port}"
    console.print(
        f"Done in {time.monotonic() - t_start:.0f} s. The coordinator at {url} is still running, with these "
        f"alerts stored:\n  {cmd} alerts --url {url}    (every stored alert, and why it fired)\n"
        f"  {cmd} monitor --url {url}   (the live view)\n"
        f"  {cmd} cluster down{where}   (stops a local cluster started with `cogs cluster up`)",
        highlight=False,
        soft_wrap=True,
    )
    return out
