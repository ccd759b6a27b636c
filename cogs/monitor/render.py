"""A Snapshot as rich renderables: one panel each for the cluster, states, proxies
and alerts. Pure functions of their input, so tests render to a recorded console."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cogs.alerts import Alert
from cogs.keys import DEFAULT_NF
from cogs.monitor.collect import NfView, NodeView, ProxyView, Snapshot, StateView


def _n(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _age(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def nodes_table(nodes: Sequence[NodeView]) -> Table:
    t = Table(expand=True, box=None, header_style="bold")
    for col in ("node", "role", "slots", "ops/s", "memory", "keys", "library"):
        t.add_column(col, justify="right" if col in ("ops/s", "keys") else "left", no_wrap=True)
    t.add_column("health", ratio=1, min_width=12)
    for n in nodes:
        role = Text(n.role, style="red bold" if n.role == "down" else "cyan" if n.role == "primary" else "")
        health = Text(n.problem or "ok", style="red" if n.problem else "green")
        t.add_row(n.addr, role, n.slots, _n(n.ops_per_sec), n.memory, _n(n.keys), n.library, health)
    return t


def _several(items: Sequence[StateView] | Sequence[ProxyView]) -> bool:
    return len({x.nf for x in items}) > 1 or any(x.nf != DEFAULT_NF for x in items)


def nfs_table(nfs: Sequence[NfView]) -> Table:
    t = Table(expand=True, box=None, header_style="bold")
    for col in ("NF", "library", "catalog", "states", "limits per primary", "usage (fullest primary)", "proxies"):
        t.add_column(col, justify="right" if col in ("states", "proxies") else "left", no_wrap=True)
    t.add_column("health", ratio=1, min_width=12)
    for n in nfs:
        health = Text(n.problem or "ok", style="red" if n.problem else "green")
        limits = [f"{n.ops_per_s:,} ops/s"] if n.ops_per_s else []
        limits += [f"{n.max_keys:,} keys"] if n.max_keys else []
        limits += [_mib(n.max_memory)] if n.max_memory else []
        t.add_row(n.nf, n.library, n.catalog_digest[:8], str(n.states), ", ".join(limits) or "none", _usage(n),
                  str(n.proxies_alive), health)  # fmt: skip
    return t


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _usage(n: NfView) -> Text:
    """The fullest primary against the usage limits, and how old the keeper's count is."""
    if not n.usage:
        return Text("-" if not (n.max_keys or n.max_memory) else "unreadable", style="dim")
    keys, size = max(u.keys for u in n.usage), max(u.bytes for u in n.usage)
    parts = [f"{keys:,}/{n.max_keys:,} keys"] if n.max_keys else [f"{keys:,} keys"]
    parts += [f"{_mib(size)}/{_mib(n.max_memory)}"] if n.max_memory else []
    ages = [u.age_s for u in n.usage]
    if any(a is None for a in ages):
        return Text(", ".join(parts) + ", never counted: no keeper?", style="red")
    full = (n.max_keys and keys >= n.max_keys) or (n.max_memory and size >= n.max_memory)
    oldest = max(a for a in ages if a is not None)
    return Text(", ".join(parts) + f", counted {oldest:.0f} s ago", style="red" if full or oldest > 60 else "")


def states_table(states: Sequence[StateView]) -> Table:
    t = Table(expand=True, box=None, header_style="bold")
    several = _several(states)
    if several:
        t.add_column("NF", no_wrap=True)
    t.add_column("state", no_wrap=True)
    t.add_column("class / mode", no_wrap=True)
    t.add_column("type")
    t.add_column("values", justify="right")
    t.add_column("state refs", justify="right")
    t.add_column("replica refs", justify="right")
    for s in states:
        mode = s.state_class if s.state_class == "trigger" else f"{s.state_class} / {s.mode}"
        replicas = f"{s.replica_entries:,}" if s.mode == "replica" else "-"
        nf = (s.nf,) if several else ()
        if s.state_class == "indirect":  # values live on the proxies; the coordinator keeps locators
            t.add_row(*nf, s.name, mode, "bytes", "on proxies", f"{s.values:,}", replicas)
        else:
            t.add_row(*nf, s.name, mode, s.type, f"{s.values:,}", "-", replicas)
    return t


def proxies_table(proxies: Sequence[ProxyView]) -> Table:
    t = Table(expand=True, box=None, header_style="bold")
    several = _several(proxies)
    if several:
        t.add_column("NF", no_wrap=True)
    for col in ("proxy", "host", "peer", "heartbeat", "ops/s", "batch", "hit rate", "pkts waiting", "ops pending",
                "errors"):  # fmt: skip
        named = col in ("proxy", "host", "peer")  # the proxy's own words: none may take the table
        t.add_column(col, justify="left" if named or col == "heartbeat" else "right", no_wrap=True,
                     max_width=(32 if col == "proxy" else 24) if named else None)  # fmt: skip
    for p in proxies:
        who = (*((p.nf,) if several else ()), Text(p.id), Text(p.host), Text(p.peer))  # Text: "[/x]" is no markup
        if p.problem:
            t.add_row(*who, Text(p.problem, style="red"), *["-"] * 6)
        elif not p.alive:
            t.add_row(*who, Text(f"lost {_age(p.age_s)} ago", style="red"), *["-"] * 6)
        else:
            t.add_row(*who, f"{_age(p.age_s)} ago", _n(p.ops_per_sec), f"{p.batch_size:.1f}",
                      f"{p.cache_hit_rate:.0%}", f"{p.pending_packets:,}", f"{p.pending_ops:,}",
                      Text(str(p.errors), style="red" if p.errors else ""))  # fmt: skip
    return t


def alerts_table(alerts: Sequence[Alert]) -> Table:
    t = Table(expand=True, box=None, header_style="bold")
    t.add_column("time", no_wrap=True)
    t.add_column(Text("why (state[key]: the figures that crossed the checker's threshold)"), ratio=1, overflow="fold")
    t.add_column("checker", overflow="ellipsis", no_wrap=True)
    for a in alerts:
        when = datetime.fromtimestamp(a.time_ms / 1000).strftime("%H:%M:%S")
        why = a.explanation if a.nf == DEFAULT_NF else f"({a.nf}) {a.explanation}"
        t.add_row(when, Text(why), a.checker)  # Text: a key like [x] is not markup
    return t


def _left_out(snap: Snapshot) -> str:
    """What the proxies table leaves out: entries that name no proxy, the ones past the cap."""
    parts = [f"{snap.proxies_not_shown:,} more not shown"] if snap.proxies_not_shown else []
    if snap.proxies_unreadable:
        parts.append(f"{snap.proxies_unreadable:,} index entries naming no proxy left out")
    return f" ({'; '.join(parts)})" if parts else ""


def render(snap: Snapshot, alerts: Sequence[Alert] = (), *, interval: float = 1.0) -> RenderableType:
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.time))
    head = Text.assemble(("cogs monitor", "bold"), f"  {snap.url}  {stamp}  every {interval:g}s  (Ctrl-C quits)")
    if snap.problem:
        return Group(head, Panel(Text(snap.problem, style="red"), title="coordinator unreachable — retrying"))
    down = sum(n.role == "down" or bool(n.problem) for n in snap.nodes)
    cluster_title = f"cluster: {len(snap.nodes)} nodes" + (f", [red]{down} unhealthy[/]" if down else "")
    counted = "counts complete" if snap.scan_done >= 1.0 else f"counting keys {snap.scan_done:.0%}"
    if snap.counts_note:
        counted = snap.counts_note
    alive = sum(p.alive for p in snap.proxies)
    nfs = [Panel(nfs_table(snap.nfs), title=f"NFs: {len(snap.nfs)}", title_align="left")] if (
        len(snap.nfs) > 1 or any(n.problem or n.nf != DEFAULT_NF for n in snap.nfs)) else []  # fmt: skip
    return Group(
        head,
        Panel(nodes_table(snap.nodes), title=cluster_title, title_align="left"),
        *nfs,
        Panel(states_table(snap.states), title=f"states ({counted})", title_align="left"),
        Panel(proxies_table(snap.proxies), title=f"proxies: {alive} alive{_left_out(snap)}", title_align="left"),
        Panel(
            alerts_table(alerts) if alerts else Text("none yet", style="dim"),
            title="alerts" + (f" ([red]{snap.alerts_problem}[/])" if snap.alerts_problem else ""),
            title_align="left",
        ),
    )
