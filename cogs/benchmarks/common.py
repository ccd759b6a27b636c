"""What every bench shares: its own cluster when no URL is given, process placement,
result files, tables, plots (the measuring itself: harness.py, cpu.py, workers.py)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cogs import runtime
from cogs.catalog import Catalog
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.errors import CatalogMismatch
from cogs.ports import free_port_base

Progress = Callable[[str], None]
RESULTS_DIR = Path("bench") / "results"
BENCH_CATALOG = Path(__file__).resolve().parents[1] / "catalogs" / "bench.toml"


def noop(_: str) -> None:
    pass


def zipf_keys(n_keys: int, n: int, s: float, seed: int, prefix: str) -> list[str]:
    """``n`` keys out of ``prefix0..`` with Zipf(``s``) popularity (``s == 0``: uniform)."""
    keys = [f"{prefix}{i}" for i in range(n_keys)]
    if s == 0:
        rng = random.Random(seed)
        return [keys[rng.randrange(n_keys)] for _ in range(n)]
    cum = list(itertools.accumulate(1 / (k**s) for k in range(1, n_keys + 1)))
    return random.Random(seed).choices(keys, cum_weights=cum, k=n)


@contextmanager
def bench_cluster(
    url: str | None, progress: Progress, masters: int = 3, catalog: Path = BENCH_CATALOG
) -> Iterator[str]:
    """A coordinator URL running ``catalog``: the given one, or a fresh local cluster.

    A given coordinator must already store the catalog's states (``cogs catalog load
    FILE``): a bench never replaces someone's catalog.
    """
    path = catalog
    catalog_ = Catalog.from_file(path)
    if url:

        async def verify() -> None:
            async with Coordinator(url=url) as co:
                stored, _ = await co.stored_catalog()
                missing = [s.name for s in catalog_ if s.name not in stored]
                if missing:
                    raise CatalogMismatch(
                        f"the coordinator at {url} lacks the bench states {missing}: "
                        f"load them with `cogs catalog load {path}` or run without --url"
                    )

        runtime.run(verify)
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="cogs-bench-") as d:
        lc = LocalCluster(port=free_port_base(masters), masters=masters, dir=Path(d))
        progress(f"starting a {masters}-primary cluster on ports {lc.ports[0]}-{lc.ports[-1]}")
        lc.up()
        try:

            async def load() -> None:
                async with Coordinator(url=lc.url) as co:
                    await co.load_library(catalog_)

            runtime.run(load)
            yield lc.url
        finally:
            lc.down()


def coordinator_nodes(url: str, *, replicas: bool = True) -> list[str]:
    """host:port of the coordinator's primaries (and their replicas)."""

    async def nodes() -> list[str]:
        async with Coordinator(url=url) as co:
            assert co.topology is not None
            out = [n.addr for n in co.topology.nodes]
            return out + [f"{h}:{p}" for n in co.topology.nodes for h, p in n.replicas] if replicas else out

    return runtime.run(nodes)


PLACEMENTS = ("split", "shared")


class Placement:
    """Which CPUs a bench's processes run on. ``split``: the processes under test on
    one half of this process's CPUs and the rest (load generators, servers they talk
    to) on the other, as separate machines would be; ``shared``: wherever the OS puts
    them. Pinned processes get their CPUs back on ``restore()`` (a coordinator given
    by URL outlives the bench)."""

    def __init__(self, mode: str) -> None:
        if mode not in PLACEMENTS:
            raise ValueError(f"unknown placement {mode!r} (have: {', '.join(PLACEMENTS)})")
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.note = ""
        if mode == "split" and len(cpus) < 2:
            mode, self.note = "shared", f"split needs 2 CPUs, this process may use {len(cpus) or 'an unknown number'}"
        self.mode = mode
        half = len(cpus) // 2
        self.rest, self.tested = set(cpus[:half]), set(cpus[half:])
        self._pinned: list[tuple[int, set[int]]] = []

    def describe(self) -> dict[str, Any]:
        if self.mode == "shared":
            return {"mode": "shared", "note": self.note}
        return {"mode": "split", "tested_cpus": sorted(self.tested), "rest_cpus": sorted(self.rest)}

    def pin(self, pid: int, side: str) -> None:
        """Pin ``pid`` to the ``tested`` or the ``rest`` CPUs (nothing in shared mode)."""
        if self.mode == "shared":
            return
        try:
            before = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, self.tested if side == "tested" else self.rest)
        except (ProcessLookupError, PermissionError):
            return  # gone, or not ours to place: it runs where it runs
        self._pinned.append((pid, before))

    @contextmanager
    def spawning_rest(self) -> Iterator[None]:
        """Processes started inside inherit the rest's CPUs."""
        if self.mode == "shared":
            yield
            return
        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.rest)
        try:
            yield
        finally:
            os.sched_setaffinity(0, own)

    def restore(self) -> None:
        for pid, cpus in reversed(self._pinned):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(pid, cpus)
        self._pinned.clear()


def results_path(name: str, quick: bool, out: Path | None = None) -> Path:
    """Where a bench writes: ``out``, else bench/results/<name>.json (a full run) or
    bench/results/quick/<name>.json (a --quick smoke run never replaces a full one)."""
    return out or (RESULTS_DIR / "quick" if quick else RESULTS_DIR) / f"{name}.json"


def write_results(name: str, data: dict[str, Any], markdown: str, out: Path | None) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` (or ``out`` and its .md sibling)."""
    path = results_path(name, bool(data.get("quick")), out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    return path


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def pyplot() -> Any:
    """matplotlib's pyplot on the file backend, or None when matplotlib is missing
    (plots are extras: the JSON and Markdown results are written regardless)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_plot(fig: Any, path: Path) -> None:
    """Write ``fig`` as the PNG next to a bench's JSON results."""
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
