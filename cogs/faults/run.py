"""One fault scenario in a lab, start to verdict: load on the middlebox hosts, the fault,
recovery, the final state read back, the histories checked.

    from cogs.faults.run import Plan, run_scenario
    from cogs.faults.scenarios import SCENARIOS

    with Lab.up(d, nodes=6, middleboxes=2, catalog=CATALOG) as lab:
        result = run_scenario(lab, SCENARIOS["host-cut"], Plan(quick=True), work_dir)
        result["figures"]  # acked_lost_durable, applied_twice, stale_reads_beyond_bound, ...

The lab must have been formed with :data:`CATALOG` (the states the load uses).
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogs import runtime
from cogs.catalog import Catalog
from cogs.faults.check import Bounds, Report, check, recovery
from cogs.faults.collect import final_state
from cogs.faults.history import History, HistoryError
from cogs.faults.load import COUNT, OBJ, REG, LoadConfig
from cogs.faults.scenarios import OWNER, READER, Ctx, Scenario, wait_healthy
from cogs.lab import Lab, LabError
from cogs.proxy.discard import DEAD_AFTER
from cogs.settings import CogsSettings, load_settings

CATALOG = Path(__file__).with_name("catalog.toml")
THRESHOLD = int(Catalog.from_file(CATALOG).get(COUNT).params["threshold"])
#: the checker's bound on replica reads. By design a replica is served at most DEAD_AFTER s
#: past the send time of the last PING whose PONG proved every discard published before it
#: handled (ReplicaCache.fresh_until), a deadline no code has to run for: a write
#: acknowledged elsewhere is missed at most DEAD_AFTER s, even by a stalled event loop. The
#: 0.5 s margin is for what the proof does not cover: a discard that reaches a proxy only
#: over the cluster bus while a key's primary changes and the proxy has not seen it yet.
STALENESS_BOUND_S = DEAD_AFTER + 0.5
STATS = ("cache_hits", "cache_drops", "discard_links_lost", "discards", "outages", "longest_pause_s",
         "resent_batches", "lost_batches", "lost_ops", "overdue_batches", "errors", "backpressure", "lease_lost",
         "stale_locators")  # fmt: skip
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Plan:
    """How long each phase lasts, and the load (LoadConfig fields)."""

    quick: bool = False
    warmup_s: float = 5.0
    #: after the heal: at least this long, then until every proxy and key recovered (at most max)
    min_cooldown_s: float = 5.0
    max_cooldown_s: float = 20.0
    load: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, quick: bool, **load: Any) -> Plan:
        if quick:
            return cls(quick=True, warmup_s=3.0, min_cooldown_s=3.0, max_cooldown_s=15.0, load=load)
        return cls(load=load)

    def hold(self, sc: Scenario) -> float:
        return sc.quick_hold_s if self.quick else sc.hold_s


def bounds(cfg: LoadConfig, settings: CogsSettings | None = None) -> Bounds:
    """What the proxy promises the load: every sync op and flush() answered within the
    delivery bound (noticed at the next watch step, min(0.5, T/4) s), an indirect op
    within one coordinator call, one peer request and one registry read; replica reads
    no staler than the discard-silence bound; indirect values are read at their owner."""
    t, p = cfg.delivery_timeout_s, cfg.peer_timeout_s
    c = (settings or load_settings()).command_timeout_s
    step, slack = min(0.5, t / 4), 1.0
    direct = t + step + slack
    indirect = t + p + c + step + slack
    return Bounds(
        calls={"add": direct, "inc": direct, "read": direct, "oset": indirect, "oget": indirect},
        staleness={REG: STALENESS_BOUND_S, OBJ: 0.0},
    )


def _ready(p: subprocess.Popen[str], host: str, log: Path, timeout: float = 90.0) -> dict[str, Any]:
    assert p.stdout is not None
    r, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if r else ""
    if not line.startswith("{"):
        with contextlib.suppress(OSError):
            p.kill()
        tail = log.read_text()[-1500:] if log.exists() else ""
        raise LabError(f"the load on {host} did not start (exit {p.poll()}): {tail}")
    out: dict[str, Any] = json.loads(line)
    return out


def _recovered(files: list[Path], heal: float) -> bool:
    try:
        h = History.from_files(files)
    except HistoryError:
        return False
    rep = Report()
    recovery(h, heal, rep)
    return rep.recovery_s is not None


def run_scenario(
    lab: Lab, sc: Scenario, plan: Plan, work: Path, progress: Progress = _quiet
) -> dict[str, Any]:  # fmt: skip
    """Run ``sc`` in ``lab`` under load; its figures and the checker's full report."""
    took = wait_healthy(lab)
    ns = f"{sc.name.split('-')[0][:5]}{uuid.uuid4().hex[:6]}"
    d = work / sc.name
    d.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(lab, plan.hold(sc))
    load = plan.load | (sc.setup(ctx) if sc.setup else {})
    hosts = (OWNER, READER)
    cfgs = {h: LoadConfig(host=h, ns=ns, out=str(d / f"{h}.jsonl"), owner=h == OWNER, index=i, hosts=len(hosts), **load)
            for i, h in enumerate(hosts)}  # fmt: skip
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for h, cfg in cfgs.items():  # the owner first: its values exist before anyone reads them
            (d / f"{h}.json").write_text(cfg.to_json())
            log = d / f"{h}.log"
            with open(log, "w") as err:
                procs[h] = lab.popen(h, [sys.executable, "-m", "cogs.faults.load", str(d / f"{h}.json")],
                                     stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
            _ready(procs[h], h, log)
        ctx.mark("load")
        progress(f"{sc.name}: load on {', '.join(procs)} ({ns}); fault in {plan.warmup_s:g} s")
        time.sleep(plan.warmup_s)
        sc.inject(ctx)
        progress(f"{sc.name}: healed after {ctx.marks['heal'] - ctx.marks['fault']:.1f} s; waiting for recovery")
        files = [Path(c.out) for c in cfgs.values()]
        time.sleep(plan.min_cooldown_s)
        while time.monotonic() < ctx.marks["heal"] + plan.max_cooldown_s and not _recovered(files, ctx.marks["heal"]):
            time.sleep(1.0)
        time.sleep(1.0)
        ctx.mark("stop")
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for h, p in procs.items():
            try:
                code = p.wait(cfgs[h].drain_s + 30)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                ctx.facts.setdefault("load_failed", {})[h] = code
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
    wait_healthy(lab)
    history = History.from_files([Path(c.out) for c in cfgs.values()])
    final, alerts = lab.call(READER, lambda: runtime.run(final_state, lab.url, history, COUNT, ns))
    b = bounds(cfgs[OWNER])
    report = check(history, final, bounds=b, alerts=alerts, alert_state=COUNT, threshold=THRESHOLD,
                   heal=ctx.marks["heal"])  # fmt: skip
    res = result(sc, ctx, history, report, b)
    res["healthy_before_s"] = round(took, 2)
    progress(f"{sc.name}: {json.dumps(res['figures'])}")
    return res


def result(sc: Scenario, ctx: Ctx, history: History, rep: Report, b: Bounds) -> dict[str, Any]:
    """A scenario's figures (what the bench's summary adds up) and everything behind them."""
    t0 = ctx.marks["load"]
    lost = {m: (f.lost_min, f.lost_max) for m, f in rep.modes.items()}
    figures = {
        "acked_lost_durable": lost.get("durable", (0, 0))[0],
        "acked_lost_durable_max": lost.get("durable", (0, 0))[1],
        "acked_lost_default": lost.get("default", (0, 0))[0],
        "acked_lost_default_max": lost.get("default", (0, 0))[1],
        "applied_twice": rep.applied_twice,
        "stale_reads_beyond_bound": rep.stale_reads + rep.phantom_reads,
        "calls_unanswered": rep.calls_unanswered,
        "recovery_s": rep.recovery_s,
        "unreported_loss": any(f.unreported_loss for f in rep.modes.values()),
        "alerts_repeated": rep.alerts_repeated,
        "alerts_missing": rep.alerts_missing,
        "alerts_unexpected": rep.alerts_unexpected,
    }
    proxies: dict[str, dict[str, Any]] = {}
    unexpected = []
    for ev in history.events:
        if ev.get("ev") == "end":
            proxies[str(ev["p"])] = {m: {k: s.get(k) for k in STATS} for m, s in ev.get("stats", {}).items()}
        elif ev.get("ev") == "unexpected":
            unexpected.append(str(ev.get("error", ""))[-400:])
    kinds: dict[str, dict[str, int]] = {}
    for o in history.ops:
        k = kinds.setdefault(o.kind, {"ok": 0, "fail": 0, "info": 0, "none": 0})
        k[o.result or "none"] += 1
    return {
        "name": sc.name, "number": sc.number, "title": sc.title, "hold_s": ctx.hold_s,
        "marks": {k: round(v - t0, 2) for k, v in ctx.marks.items()},
        "fault_s": round(ctx.marks["heal"] - ctx.marks["fault"], 2),
        "facts": ctx.facts, "figures": figures, "ops": kinds, "proxies": proxies,
        "unexpected_errors": unexpected[:5], "bounds": {"calls_s": dict(b.calls), "staleness_s": dict(b.staleness)},
        "report": rep.to_json(),
    }  # fmt: skip


__all__ = ["CATALOG", "STALENESS_BOUND_S", "THRESHOLD", "Plan", "bounds", "result", "run_scenario"]
