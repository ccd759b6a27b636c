"""``cogs monitor``: a live view of the coordinator, its states, proxies and alerts.

``watch()`` hands one Snapshot per refresh to a callback and never gives up: an unreachable
coordinator or a node that is down becomes part of the picture (and the loop keeps
retrying) rather than a traceback. Alerts arrive on their own task, live.

Several NFs may share the cluster: by default every NF whose library was loaded
(``cogs!nfs``, and the default NF) is shown, each apart; ``nfs`` names the ones to show.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

import anyio

from cogs.alerts import Alert, Unreadable, follow_alerts, read_alerts
from cogs.catalog import Catalog, Limits
from cogs.coordinator.client import Coordinator
from cogs.errors import CALL_ERRORS, CogsError, CoordinatorUnavailable, LibraryOutdated
from cogs.keys import namespace
from cogs.monitor.collect import Collector, Snapshot, Tenant
from cogs.settings import CogsSettings

__all__ = ["Collector", "Snapshot", "snapshot_once", "watch"]
_NET = CALL_ERRORS

OnAlert = Callable[[Alert], None]


async def _follow(
    coord: Coordinator,
    tenant: Tenant,
    alerts: deque[Alert],
    on_alert: OnAlert | None,
    history: int | None,
    retry_s: float = 2.0,
) -> None:
    seen = {a.uid for a in alerts}
    while True:
        with contextlib.suppress(CogsError, *_NET):  # reading the history needs every primary
            async for a in follow_alerts(coord, limit=history, ns=tenant.ns):
                if a.uid not in seen:
                    seen.add(a.uid)
                    alerts.append(a)
                    if on_alert is not None:
                        on_alert(a)
        await anyio.sleep(retry_s)


Show = Callable[[Snapshot], bool]


async def watch(
    settings: CogsSettings,
    alerts: deque[Alert],
    show: Show,
    interval: float = 1.0,
    on_alert: OnAlert | None = None,
    *,
    all_history: bool = False,
    nfs: Sequence[str] | None = None,
) -> None:
    """Calls ``show`` with a Snapshot every ``interval`` seconds until it returns
    False; latest alerts are appended to ``alerts`` as they are raised (and handed
    to ``on_alert``): the stored ones first, the latest ``alerts.maxlen`` of them
    (every one with ``all_history``), then the live ones. ``nfs``: the NFs to show
    (default: every one loaded)."""
    history = None if all_history else alerts.maxlen
    while True:
        try:
            coord = Coordinator(settings)
            await coord.connect()
        except (CogsError, *_NET) as e:
            if not show(Snapshot(settings.url, time.time(), problem=str(e))):
                return
            await anyio.sleep(interval)
            continue
        try:
            if not await _watch(coord, settings.url, alerts, show, interval, on_alert, history, nfs):
                return
        except (CogsError, *_NET) as e:  # no library yet, or the catalog could not be read
            if not show(Snapshot(settings.url, time.time(), problem=str(e))):
                return
            await anyio.sleep(interval)
        finally:
            with anyio.CancelScope(shield=True):
                await coord.aclose()


async def _catalog(coord: Coordinator, nf: str | None = None) -> Catalog:
    """The stored catalog of NF ``nf`` (default: the Coordinator's), from the first
    primary that answers: a monitor starts while a node is down, and shows it."""
    ns = namespace(nf) if nf else coord.ns
    last: Exception | None = None
    for i in range(len(coord.nodes)):
        try:
            info = await coord.node_info(i, ns)
            cat = Catalog.from_wire(json.loads(info["catalog_json"]), coord.spec)
            cat.limits = Limits.model_validate(info.get("limits") or {})
            return cat
        except (CoordinatorUnavailable, *_NET) as e:
            last = e
    what = "the cogs catalog" if ns.default else f"the catalog of NF {ns.nf}"
    raise CoordinatorUnavailable(f"no primary answered with {what} (last error: {last})")


async def tenants(coord: Coordinator, nfs: Sequence[str] | None = None) -> tuple[list[Tenant], dict[str, str]]:
    """The NFs to show with their catalogs (``nfs``, else every NF loaded: ``cogs!nfs``
    and the default one), and those that cannot be shown with the reason. A user
    that may not read ``cogs!nfs`` (an NF's own monitor user) sees its own NF."""
    if nfs is None:
        try:
            nfs = await coord.nfs()
        except CogsError:
            nfs = [coord.ns.nf]
    out, problems = [], {}
    for nf in dict.fromkeys(nfs):
        try:
            out.append(Tenant(namespace(nf), await _catalog(coord, nf)))
        except LibraryOutdated as e:
            problems[nf] = str(e)
    if not out:
        raise LibraryOutdated("; ".join(problems.values()) or "no NF to show")
    return out, problems


async def _watch(
    coord: Coordinator,
    url: str,
    alerts: deque[Alert],
    show: Show,
    interval: float,
    on_alert: OnAlert | None,
    history: int | None,
    nfs: Sequence[str] | None = None,
) -> bool:
    shown, problems = await tenants(coord, nfs)
    collector = Collector(coord, shown, url, problems)
    keep = True
    async with anyio.create_task_group() as tg:
        for t in shown:
            tg.start_soon(_follow, coord, t, alerts, on_alert, history)
        while keep:
            t0 = time.monotonic()
            try:
                snap = await collector.snapshot()
            except (CogsError, *_NET) as e:
                snap = Snapshot(url, time.time(), problem=str(e))
                with contextlib.suppress(CogsError, *_NET):
                    await coord.refresh()
            keep = show(snap)
            if keep:
                await anyio.sleep(max(0.0, interval - (time.monotonic() - t0)))
        tg.cancel_scope.cancel()
    return keep


async def snapshot_once(
    settings: CogsSettings, n_alerts: int, *, within_s: float = 30.0, step: float = 0.2,
    nfs: Sequence[str] | None = None,
) -> tuple[Snapshot, list[Alert]]:  # fmt: skip
    """One complete Snapshot (state counts of a whole pass, or what ``within_s``
    allowed) and the latest ``n_alerts`` stored alerts, read from the streams: what
    ``monitor --once`` prints. Alerts of a node that is down are missing, and the
    snapshot's ``alerts_problem`` says so."""
    try:
        coord = Coordinator(settings)
        await coord.connect()
    except (CogsError, *_NET) as e:
        return Snapshot(settings.url, time.time(), problem=str(e)), []
    try:
        shown, nf_problems = await tenants(coord, nfs)
        collector = Collector(coord, shown, settings.url, nf_problems)
        deadline = time.monotonic() + within_s
        # a SCAN pass is bounded work per step: there is no event to wait on
        while (snap := await collector.snapshot()).scan_done < 1.0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await anyio.sleep(step)
        down: list[str] = []
        skipped = Unreadable()
        alerts: list[Alert] = []
        for t in shown:
            alerts += await read_alerts(coord, limit=n_alerts, unreachable=down, unreadable=skipped, ns=t.ns)
        alerts = sorted(alerts, key=lambda a: a.sort_key)[-n_alerts:]
        problems = ["alerts of unreachable nodes missing: " + "; ".join(down)] if down else []
        if skipped.count:
            problems.append(skipped.summary())
        if problems:
            snap = replace(snap, alerts_problem="; ".join(problems))
        return snap, alerts
    except (CogsError, *_NET) as e:
        return Snapshot(settings.url, time.time(), problem=str(e)), []
    finally:
        with anyio.CancelScope(shield=True):
            await coord.aclose()
