"""``cogs bench``: the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cogs.cli.base import _progress, main, url_option
from cogs.faults import SCENARIO_NAMES


@main.group()
def bench() -> None:
    """Benchmarks; each writes JSON + Markdown (+ PNG) under bench/results/ (--quick: bench/results/quick/).

    Every figure is the median of repeated runs (5, or 3 with --quick) with min, max and n, beside a
    same-run calibration (redis-benchmark -t incr -P 64 on one coordinator node); the environment
    (commit, CPU, Redis, loop, placement) is recorded, and a run whose CPU does not fit in this
    machine's cores fails instead of reporting an impossible rate."""


BENCHES = {
    "coordinator": "Coordinator throughput (paper Fig. 12): the same op mix at 1k/100k/1M states, per op type, "
    "vs redis-py with the same concurrency; every count read back.",
    "design": "Design choices (paper Fig. 10 + Table III): trigger path (Zipf sensitivity), NAT sync/async with "
    "request merging on and off, replica hits, discards.",
    "scaling": "NF scaling (paper Fig. 11a, 11b): packets/s vs middleboxes for 3 detectors and the NAT, parsing "
    "included, behind a start barrier; a labelled model beyond this box.",
    "soak": "Soak: minutes of steady load with proxies joining and leaving; nothing lost, memory flat.",
    "indirect": "Indirect states: local vs remote retrieve latency (1 KB, 1 MB), coordinator lookups per op.",
    "live": "Live capture (issue 21): the highest rate of the packet mix (591 B mean) each detector sustains "
    "with zero kernel drops on a lab middlebox host, 1 and 2 workers; CPU and coordinator ops per packet (root).",
    "scale": "Coordinator capacity at 3 vs 6 primaries, same run, in a lab (root) with every node on its own "
    "host: `cogs lab scale` between the runs, every count read back; a labelled model beside it.",
    "webcache": "Cooperative web cache (paper Fig. 11c): cogs vs ICP, 1..9 caches, alternated, same CPUs; "
    "requests/s, per CPU-second, and the CPU of one lookup in each design.",
    "faults": "Network faults (issue 20): partitions, loss, freezes, kills and restarts in a lab of its own, "
    "under load in default and durable mode; histories checked: acked updates lost, applied twice, stale reads, "
    "calls unanswered, recovery (root).",
}


LAB_OPTIONS = [
    click.option("--lab", is_flag=True, help="Run in a fresh lab (cogs lab; root): the coordinator's 3+3 nodes and "
                 "the bench's processes on separate hosts of an emulated LAN."),
    click.option("--rtt", help="With --lab: the middlebox <-> node round trip (default 500us; e.g. 100us)."),
]  # fmt: skip

#: options only some benches take (passed to their main() as keywords)
BENCH_OPTIONS: dict[str, list[Any]] = {
    "design": LAB_OPTIONS,
    "coordinator": LAB_OPTIONS,
    "scale": [
        click.option("--rtt", default="200us", show_default=True, help="The lab's node <-> middlebox round trip.")
    ],
    "faults": [
        click.option(
            "--scenario",
            multiple=True,
            type=click.Choice(SCENARIO_NAMES),
            help="Run only this scenario (repeatable; default: all of them).",
        ),
    ],
    "webcache": [
        *LAB_OPTIONS,
        click.option(
            "--placement",
            type=click.Choice(["shared", "split"]),
            default="shared",
            show_default=True,
            help="shared: every process on every CPU; split: caches and coordinator on half the CPUs, load "
            "generators and origin on the other half. Both modes get the same placement either way.",
        ),
    ],
}


def _bench_command(name: str, doc: str) -> None:
    @url_option
    @click.option("--quick", is_flag=True, help="3 repeats of small sizes (a smoke run, a minute or two).")
    @click.option("--out", type=click.Path(path_type=Path), help="JSON output file (default: bench/results/...).")
    def run_bench(url: str | None, quick: bool, out: Path | None, **extra: Any) -> None:
        import importlib

        mod = importlib.import_module(f"cogs.benchmarks.{name}")
        if "lab" in extra:
            lab, rtt = extra.pop("lab"), extra.pop("rtt")
            if rtt and not lab:
                raise click.UsageError("--rtt is the lab's round trip: give --lab too")
            if lab and url:
                raise click.UsageError("--lab makes its own cluster in the lab: give either --lab or --url")
            extra["lab_rtt"] = (rtt or "500us") if lab else None
        mod.main(url=url, quick=quick, out=out, progress=_progress, **extra)

    for opt in BENCH_OPTIONS.get(name, []):
        run_bench = opt(run_bench)
    bench.command(name, help=doc)(run_bench)


for _name, _doc in BENCHES.items():
    _bench_command(_name, _doc)


@bench.command("readme")
@click.option("--check", is_flag=True, help="Only check: exit 1 if a README block differs from its results file.")
@click.option("--readme", "path", type=click.Path(path_type=Path, exists=True, dir_okay=False), default="README.md",
              show_default=True)  # fmt: skip
def readme_cmd(check: bool, path: Path) -> None:
    """Rewrite the README's benchmark blocks (<!-- bench:NAME -->) from bench/results/*.json."""
    from cogs.benchmarks.common import RESULTS_DIR
    from cogs.benchmarks.readme import rewrite

    root = path.resolve().parent
    text, changed = rewrite(path, root / RESULTS_DIR, root)
    if check:
        if changed:
            raise click.ClickException(f"README blocks differ from their results: {', '.join(changed)} "
                                       "(run `cogs bench readme`)")  # fmt: skip
        click.echo("README benchmark blocks match their results files")
        return
    path.write_text(text)
    click.echo(f"rewrote {', '.join(changed) or 'nothing (all blocks current)'}")
