"""The main demo: three NFs scaled out over N middleboxes, with and without cogs.

A synthetic trace (benign traffic plus a port scan, a DNS tunnel and a hijacked
session cookie, each made of many flows) is split by the flow hash over N middlebox
processes. With cogs, the multi-flow state is global and every attack is caught, as
the ground truth says; with each box's state kept to itself (``--local-only``), the
split attacks go unseen.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cogs.nf.runner import run_nf
from cogs.nf.synth import Synth

NFS = ("portscan", "dnstunnel", "sidejack")


def run_demo(url: str, middleboxes: int = 4, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="cogs-demo-") as d:
        # 30 probed ports: twice the scan threshold, a handful per box once split
        synth = Synth(seed=11, benign_flows=2000, scans=2, scan_ports=30, tunnels=1, sidejacks=2).build()
        pcap, truth_file = synth.write(Path(d) / "demo.pcap")
        truth = json.loads(truth_file.read_text())["alerts"]
        console.print(
            f"[bold]cogs demo[/]: {len(synth.frames):,} packets of benign traffic with 2 port scans, "
            f"1 DNS tunnel and 2 hijacked session cookies, split over {middleboxes} middlebox processes"
        )
        table = Table(title=f"alerts with {middleboxes} middleboxes")
        for col in ("NF", "attacks", "caught with cogs", "caught with local state only", "packets/s"):
            table.add_column(col)
        out: dict[str, Any] = {"truth": truth, "nfs": {}}
        for nf in NFS:
            want = {t["key"] for t in truth if t["nf"] == nf}
            glob = run_nf(nf, pcap, middleboxes, url)
            local = run_nf(nf, pcap, middleboxes, url, local_only=True)
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
                console.print(
                    f"  [green]ALERT[/] {nf} {a['key']} ({a['state']} = {a['value']}){extra}", highlight=False
                )
        console.print("`cogs alerts` lists every alert stored in the coordinator.")
    return out
