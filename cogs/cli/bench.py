"""``cogs bench``: the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cogs.cli.base import _progress, main, url_option


@main.group()
def bench() -> None:
    """Benchmarks; each writes JSON + Markdown under bench/results/."""


BENCHES = {
    "coordinator": "Coordinator throughput (paper Fig. 12) vs naive and pipelined redis-py.",
    "design": "Design choices (paper Fig. 10 + Table III): sync/async x singleton/replica, trigger path.",
    "scaling": "NF scaling (paper Fig. 11a): packets/s vs middleboxes, and a capacity model.",
    "soak": "Soak: minutes of steady load with proxies joining and leaving; nothing lost, memory flat.",
    "indirect": "Indirect states: local vs remote retrieve latency (1 KB, 1 MB), coordinator lookups per op.",
    "webcache": "Cooperative web cache (paper Fig. 11c): throughput and hit ratio, cogs vs ICP, 1..9 proxies.",
}


#: options only some benches take (passed to their main() as keywords)
BENCH_OPTIONS: dict[str, list[Any]] = {
    "webcache": [
        click.option(
            "--placement",
            type=click.Choice(["split", "shared"]),
            default="split",
            show_default=True,
            help="split: caching proxies on half the CPUs; load generators, origin and coordinator on the other "
            "half (as separate machines); shared: all on every CPU.",
        )
    ],
}


def _bench_command(name: str, doc: str) -> None:
    @url_option
    @click.option("--quick", is_flag=True, help="Small sizes, under a minute.")
    @click.option("--out", type=click.Path(path_type=Path), help="JSON output file.")
    def run_bench(url: str | None, quick: bool, out: Path | None, **extra: Any) -> None:
        import importlib

        mod = importlib.import_module(f"cogs.benchmarks.{name}")
        mod.main(url=url, quick=quick, out=out, progress=_progress, **extra)

    for opt in BENCH_OPTIONS.get(name, []):
        run_bench = opt(run_bench)
    bench.command(name, help=doc)(run_bench)


for _name, _doc in BENCHES.items():
    _bench_command(_name, _doc)
