"""``cogs nf run NF --interface IF``: the live capture's console (what the workers do,
second by second, the kernel's drops, and the summary at the end)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from cogs.cli.base import err_console, out_console
from cogs.nf.live import LiveResult, WorkerStats, run_live
from cogs.nf.live_config import LiveConfig

#: without a terminal: a progress line per worker this often
PLAIN_INTERVAL_S = 10.0


def _table(title: str, stats: list[WorkerStats]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("worker", "frames", "packets/s", "kernel drops", "updates", "ops sent", "CPU s", "skipped"):
        t.add_column(col, justify="right" if col != "skipped" else "left")
    for w in stats:
        rate = w.frames / w.seconds if w.seconds else 0.0
        skipped = sum(w.skipped.values()) + sum(v for k, v in w.counters.items() if k.startswith("packets skipped"))
        t.add_row(
            str(w.worker), f"{w.frames:,}", f"{rate:,.0f}",
            f"[red]{w.kernel_dropped:,}[/]" if w.kernel_dropped else "0",
            f"{w.updates:,}", f"{w.ops_sent:,}", f"{w.cpu_seconds:.1f}", f"{skipped:,}",
        )  # fmt: skip
    return t


class _Console:
    """Live per-worker counts: a table redrawn on a terminal, a line per worker now
    and then otherwise (a log stays readable)."""

    def __init__(self, cfg: LiveConfig, workers: int) -> None:
        self.title = f"{cfg.nf} on {cfg.interface}: {workers} worker(s)"
        self.tty = sys.stderr.isatty()
        self.live: Live | None = None
        self.last = 0.0

    def ready(self) -> None:
        err_console.print(f"[dim]·[/] {self.title} capturing (Ctrl-C or SIGTERM ends the run)", highlight=False)
        if self.tty:
            self.live = Live(_table(self.title, []), console=err_console, refresh_per_second=2, transient=True)
            self.live.start()

    def stats(self, stats: list[WorkerStats]) -> None:
        if self.live is not None:
            self.live.update(_table(self.title, stats))
        elif time.monotonic() - self.last >= PLAIN_INTERVAL_S:
            self.last = time.monotonic()
            for w in stats:
                err_console.print(
                    f"[dim]worker {w.worker}: {w.frames:,} frames, {w.kernel_dropped:,} dropped by the kernel, "
                    f"{w.updates:,} updates[/]",
                    highlight=False,
                )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def run_live_cli(cfg: LiveConfig, workers: int, duration: float, as_json: bool) -> None:
    console = _Console(cfg, workers)
    try:
        result = run_live(cfg, workers, duration=duration or None, on_ready=console.ready, on_stats=console.stats)
    finally:
        console.close()
    _summary(result, as_json)


def _summary(r: LiveResult, as_json: bool) -> None:
    if as_json:  # one object per alert, then the summary (the one with "workers")
        for a in r.alerts:
            click.echo(json.dumps(a))
        summary = {
            "nf": r.nf, "interface": r.interface, "seconds": round(r.seconds, 3), "namespace": r.namespace,
            "counters": dict(sorted(r.counters().items())), "kernel_dropped": r.kernel_dropped,
            "workers": [w.to_json() for w in r.workers], "failed": {str(k): v for k, v in r.failed.items()},
        }  # fmt: skip
        click.echo(json.dumps(summary))
    elif r.nf != "nat":
        t = Table(title=f"{r.nf}: {len(r.alerts)} alert(s)")
        for col in ("time", "key", "value", "state", "detail"):
            t.add_column(col)
        for a in r.alerts:
            t.add_row(
                a["time"][11:23], a["key"], a["value"], a["state"], ", ".join(a.get("clients", [])) or a["state_key"]
            )
        out_console.print(t)
    err_console.print(_table(f"{r.nf} on {r.interface}, {r.seconds:,.1f} s", r.workers))
    total: dict[str, Any] = dict(sorted(r.counters().items()))
    skipped: dict[str, int] = {}
    for w in r.workers:
        for k, v in w.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    err_console.print(
        f"[dim]{', '.join(f'{v:,} {k}' for k, v in total.items()) or 'nothing counted'}; "
        f"frames skipped: {', '.join(f'{v:,} {k}' for k, v in skipped.items()) or 'none'}[/]",
        highlight=False,
    )
    if r.kernel_dropped:
        err_console.print(
            f"[yellow]warning:[/] the kernel dropped {r.kernel_dropped:,} packet(s): the workers fell behind "
            "(more --workers, or a lower rate)",
            highlight=False,
        )
    if r.failed:
        for i, why in sorted(r.failed.items()):
            err_console.print(f"[red]error:[/] worker {i} ended early: {why}", highlight=False)
        raise SystemExit(1)
