"""The README's benchmark figures, generated from the results files (never typed).

Each figure block in README.md sits between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` and is rendered from ``bench/results/NAME.json`` (a full
run) or, until one exists, ``bench/results/quick/NAME.json`` (a --quick smoke run,
and the block says so). ``cogs bench readme`` rewrites the blocks; ``--check`` (and
the test suite) fails when a block differs from what its results file gives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cogs.benchmarks.common import RESULTS_DIR, fmt_rate, md_table
from cogs.benchmarks.faults_report import readme_block as faults_block
from cogs.benchmarks.live_report import readme_block as live_block
from cogs.errors import ConfigError

BLOCK = re.compile(r"(<!-- bench:(?P<name>[a-z]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def source(name: str, results: Path = RESULTS_DIR) -> Path | None:
    """The results file a block is made from: the full run's, else the quick run's."""
    for p in (results / f"{name}.json", results / "quick" / f"{name}.json"):
        if p.exists():
            return p
    return None


def _s(x: dict[str, Any], fmt: Callable[[float], str] = fmt_rate) -> str:
    return f"**{fmt(x['median'])}** ({fmt(x['min'])}-{fmt(x['max'])}, n={x['n']})"


def _header(data: dict[str, Any], path: Path) -> str:
    e, c = data["environment"], data["calibration"]
    kind = ("a QUICK smoke run (3 repeats, small sizes, busy shared machine): not figures to quote"
            if data.get("quick") else "a full run")  # fmt: skip
    dirty = " + uncommitted changes" if e.get("dirty") else ""
    return (
        f"From `{path.as_posix()}`, {kind}: commit `{str(e['commit'])[:10]}`{dirty}, {e['when'][:16]}, "
        f"{e['cpu_model']} x {e['cores']} (load average {e['load_average'][0] if e.get('load_average') else '?'}), "
        f"Python {e['python']} on {e['event_loop']}, Redis {e['redis']}, {e['primaries']} primaries x "
        f"{e['replicas_per_primary']} replicas, AOF {e['aof']}. Same-run calibration: `redis-benchmark -t incr -P 64` "
        f"{_s(c['redis_incr_p64_per_s'])}/s on one node, PING from Python p50 {c['ping_us']['p50']:.0f} us. "
        "Medians of the repeats (min-max, n).\n\n"
    )


def design(data: dict[str, Any]) -> str:
    s = data["summary"]
    z = s["zipf_sensitivity"]
    nat = s["nat_packets_per_s"]
    others = ("0.99", "0.8", "uniform")
    rows = [
        ["trigger updates/s, Zipf(1.1), 1 NF process", _s(s["trigger_updates_per_s"]),
         f"{s['trigger_vs_redis_incr']} x redis-benchmark INCR"],
        ["... Zipf(0.99) / Zipf(0.8) / uniform", " / ".join(_s(z[k]["updates_per_s"]) for k in others),
         "ops/update " + " / ".join(f"{z[k]['ops_per_update']['median']:.3f}" for k in others)],
        ["... 2 NF processes / coordinator AOF off", f"{_s(s['trigger_updates_per_s_2procs'])} / "
         + (_s(s["trigger_updates_per_s_no_aof"]) if s.get("trigger_updates_per_s_no_aof") else "not run"), ""],
        ["coordinator ops/s (Zipf(1.1), 1 process)", _s(s["coordinator_ops_per_s"]),
         f"{s['ops_per_update']['median']:.3f} ops per update"],
        ["CPU per update: NF + coordinator", f"{s['trigger_cpu_us_per_update']['nf']['median']:.2f} + "
         f"{s['trigger_cpu_us_per_update']['coordinator']['median']:.2f} us",
         f"final states exact: {s['trigger_final_state_exact']}"],
        ["NAT sync / async, singleton (packets/s)",
         f"{_s(nat['sync_singleton'])} / {_s(nat['async_unmerged_singleton'])}",
         f"async/sync **{s['async_vs_sync_ratio']}x** without request merging, "
         f"{s['async_vs_sync_ratio_merged']}x with it"],
        ["NAT sync / async, replica (packets/s)",
         f"{_s(nat['sync_replica'])} / {_s(nat['async_unmerged_replica'])}", ""],
        ["sync retrieve p50 / p99", f"{s['sync_retrieve_p50_us']:.0f} / {s['sync_retrieve_p99_us']:.0f} us", ""],
        ["replica hit (`await syn_retrieve`)", _s(s["replica_hit_us"], lambda x: f"{x:.2f} us"), ""],
        ["discard p99, up to 16 holders", f"{s['discard_p99_ms']:.2f} ms", ""],
    ]  # fmt: skip
    met = ", ".join(k for k, v in s["targets_met"].items() if not v) or "none"
    return md_table(["what", "median (min-max, n)", ""], rows) + f"\nTargets missed (on medians): {met}.\n"


def coordinator(data: dict[str, Any]) -> str:
    s = data["summary"]
    h = data["headline"]
    rows = [[f"cogs, {int(n):,} states", _s(v)] for n, v in s["applied_ops_per_s_by_states"].items()]
    rows += [[f"cogs, {p} proxy process(es), {h['states']:,} states", _s(v)]
             for p, v in s["applied_ops_per_s_by_procs"].items() if int(p) != h["procs"]]  # fmt: skip
    rows += [[f"cogs, {m.replace('_', ' ')} only", _s(v)] for m, v in s["applied_ops_per_s_by_op"].items()]
    rows += [["redis-py pipelined per op (same processes, connections, mix)", _s(s["redis_py_pipelined_ops_per_s"])],
             ["redis-py one await per op (same concurrency)", _s(s["redis_py_naive_ops_per_s"])]]  # fmt: skip
    return md_table(["client (2 proxy processes unless said)", "applied ops/s"], rows) + (
        f"\ncogs / redis-py pipelined: **{s['applied_vs_pipelined']}x**; cogs / redis-benchmark INCR -P 64 on one "
        f"node: {s['applied_vs_redis_incr']}; every count read back: "
        f"{'exact' if s['read_back_exact'] else 'NOT exact'}.\n"
    )


def scaling(data: dict[str, Any]) -> str:
    s = data["summary"]
    nfs = [k for k, v in s.items() if isinstance(v, dict) and "packets_per_s" in v]
    ns = list(s[nfs[0]]["packets_per_s"])
    rows = [[nf, *[_s(s[nf]["packets_per_s"][n]) for n in ns],
             " / ".join(fmt_rate(s[nf]["per_box_packets_per_cpu_s"][n]["median"]) for n in ns),
             fmt_rate(s[nf]["model"]["packets_per_s"]["16"])] for nf in nfs]  # fmt: skip
    heads = ["NF", *[f"{n} middlebox(es), packets/s" for n in ns], "per box: packets per CPU-second",
             "model: 16 boxes"]  # fmt: skip
    return md_table(heads, rows) + (
        f"\nphysically_possible: {str(s['physically_possible']).lower()} (every run's CPU fit in its "
        f"{s['cores']} cores x wall time); each box worked >= {s['min_box_seconds']:g} s. The last column is a model, "
        "not a measurement.\n"
    )


def webcache(data: dict[str, Any]) -> str:
    s = data["summary"]
    rows = [[n, _s(s["requests_per_s"]["cogs"][n], _n), _s(s["requests_per_s"]["icp"][n], _n),
             f"{s['ratio_vs_icp'][n]}x", f"{s['requests_per_cpu_s']['cogs'][n]['median']:,.0f} / "
             f"{s['requests_per_cpu_s']['icp'][n]['median']:,.0f}",
             f"{s['hit_ratio']['cogs'][n]['median']:.1%} / {s['hit_ratio']['icp'][n]['median']:.1%}"]
            for n in s["ratio_vs_icp"]]  # fmt: skip
    place = data["environment"]["placement"]
    heads = ["caches", "cogs requests/s", "ICP requests/s", "cogs / ICP", "requests per CPU-second cogs / ICP",
             "hit ratio cogs / ICP"]  # fmt: skip
    mode = place.get("mode", place) if isinstance(place, dict) else place
    return (
        md_table(heads, rows) + f"\nPlacement: {mode} (both modes alike); modes alternated, both clusters up at once.\n"
    )


def indirect(data: dict[str, Any]) -> str:
    rows = [[r["value"], r["mode"], r["read"], _s(r["p50_us"], _us), f"{r['lookups_per_op']['median']:.1f}",
             _s(r["cpu_us_per_op"], _us)] for r in data["rows"]]  # fmt: skip
    return md_table(["value", "mode", "read", "p50", "coordinator lookups/op", "CPU/op, both proxies"], rows)


def soak(data: dict[str, Any]) -> str:
    s = data["summary"]
    return (
        f"{s['seconds']:.0f} s, {s['updates']:,} updates ({fmt_rate(s['updates_per_s'])}/s), proxies joined / left "
        f"{s['proxies_joined']} / {s['proxies_left']}; lost {s['lost']}, applied twice {s['applied_twice']}; alerts "
        f"missing / unexpected / repeated {s['alerts_missing']} / {s['alerts_unexpected']} / {s['alerts_repeated']}; "
        f"Redis memory {s['redis_mb_growth']:+.1%} and proxy RSS {s['proxy_rss_mb_growth']:+.1%}, 2nd half vs 1st.\n"
    )


def variants(name: str, results: Path = RESULTS_DIR) -> list[Path]:
    """``name``'s results on loopback and in the lab (each: the full run's file, else
    the quick one's), loopback first, then by round trip."""
    found: dict[str, Path] = {}
    for d in (results / "quick", results):  # a full run's file replaces a quick one
        for p in d.glob(f"{name}*.json"):
            if p.stem == name or p.stem.startswith(f"{name}-lab-"):
                found[p.stem] = p
    return [found[k] for k in sorted(found, key=lambda k: (k != name, _us_of(k)))]


def _us_of(stem: str) -> float:
    m = re.search(r"-lab-([\d.]+)(us|ms)$", stem)
    return float(m[1]) * (1000 if m[2] == "ms" else 1) if m else 0.0


def _where(data: dict[str, Any]) -> str:
    p = data["environment"].get("placement")
    q = " (quick)" if data.get("quick") else ""
    if isinstance(p, dict) and p.get("kind") == "lab":
        return f"lab, --rtt {p['rtt']} (ping {p['ping_mb1_node1_us']['median']} us){q}"
    return f"loopback{q}"


def lab(results: Path, root: Path | None) -> str:
    """Loopback and lab runs side by side: what a LAN round trip changes."""
    out = ""
    for name, heads, row in (("design", _DESIGN_HEADS, _design_row), ("coordinator", _COORD_HEADS, _coord_row),
                             ("webcache", _WEB_HEADS, _web_row)):  # fmt: skip
        rows = []
        for path in variants(name, results):
            data = json.loads(path.read_text())
            shown = path.relative_to(root) if root and path.is_relative_to(root) else path
            rows.append([_where(data), *row(data), f"`{shown.as_posix()}`"])
        if rows:
            out += f"\n`cogs bench {name}`:\n\n" + md_table(["where", *heads, "results"], rows)
    return out.lstrip("\n") or "No results yet: run `cogs bench design --lab --rtt 500us` (root).\n"


_DESIGN_HEADS = ["trigger updates/s", "NAT sync, singleton (packets/s)", "NAT async, no merging", "async / sync",
                 "sync retrieve p50"]  # fmt: skip


def _design_row(d: dict[str, Any]) -> list[str]:
    s = d["summary"]
    nat = s["nat_packets_per_s"]
    return [fmt_rate(s["trigger_updates_per_s"]["median"]), fmt_rate(nat["sync_singleton"]["median"]),
            fmt_rate(nat["async_unmerged_singleton"]["median"]), f"{s['async_vs_sync_ratio']}x",
            f"{s['sync_retrieve_p50_us']:.0f} us"]  # fmt: skip


_COORD_HEADS = ["applied ops/s", "1k / 100k states", "redis-py pipelined", "cogs / pipelined"]


def _coord_row(d: dict[str, Any]) -> list[str]:
    s = d["summary"]
    by = s["applied_ops_per_s_by_states"]
    return [fmt_rate(s["applied_ops_per_s"]["median"]), f"{fmt_rate(by['1000']['median'])} / "
            f"{fmt_rate(by['100000']['median'])}", fmt_rate(s["redis_py_pipelined_ops_per_s"]["median"]),
            f"{s['applied_vs_pipelined']}x"]  # fmt: skip


_WEB_HEADS = ["caches", "cogs / ICP requests/s", "cogs / ICP", "lookup p50: cogs / ICP"]


def _web_row(d: dict[str, Any]) -> list[str]:
    s = d["summary"]
    top = max(s["ratio_vs_icp"], key=int)
    q = s["query_cost"][top]
    rps = s["requests_per_s"]
    return [top, f"{rps['cogs'][top]['median']:,.0f} / {rps['icp'][top]['median']:,.0f}", f"{s['ratio_vs_icp'][top]}x",
            f"{q['cogs']['p50_us']['median']:,.0f} / {q['icp']['p50_us']['median']:,.0f} us"]  # fmt: skip


def scale(data: dict[str, Any]) -> str:
    from cogs.benchmarks.scale import table

    return table(data)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _us(x: float) -> str:
    return f"{x:,.1f} us" if x < 100 else f"{x:,.0f} us"


RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "design": design, "coordinator": coordinator, "scaling": scaling, "webcache": webcache, "indirect": indirect,
    "soak": soak, "live": live_block, "faults": faults_block,
    "scale": scale,
}  # fmt: skip


def render(name: str, results: Path = RESULTS_DIR, root: Path | None = None) -> str:
    """A block's body from its results file (``root``: what paths are shown relative to)."""
    if name == "lab":
        return lab(results, root)
    if name not in RENDER:
        raise ConfigError(f"README block bench:{name}: no such bench (have: {', '.join(RENDER)}, lab)")
    path = source(name, results)
    if path is None:
        return f"No results yet: run `cogs bench {name}`.\n"
    data = json.loads(path.read_text())
    shown = path.relative_to(root) if root and path.is_relative_to(root) else path
    body = (_header(data, shown) if "calibration" in data else f"From `{shown.as_posix()}`.\n\n") + RENDER[name](data)
    png = path.with_suffix(".png")
    if png.exists():
        rel = png.relative_to(root) if root and png.is_relative_to(root) else png
        body += f"\n![{name}]({rel.as_posix()})\n"
    return body


def rewrite(readme: Path, results: Path = RESULTS_DIR, root: Path | None = None) -> tuple[str, list[str]]:
    """README text with every block rendered anew, and the names of blocks that changed."""
    text = readme.read_text()
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        body = render(m["name"], results, root)
        if body != m["body"]:
            changed.append(m["name"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(sub, text), changed


def blocks(text: str) -> list[str]:
    return [m["name"] for m in BLOCK.finditer(text)]
