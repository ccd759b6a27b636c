"""A closed proxy says so (issue 15, attack pass).

* an op issued while the proxy closes, or after, is refused at once with
  :class:`ProxyClosed` (it used to be queued on channels nobody serves: a sync op
  hung forever, an update vanished);
* every waiter pending when the proxy closes is answered: a sync op, an async op's
  error callback, a waiter of a shared read (they used to hang forever when the
  coordinator did not answer during the drain).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio
import pytest

import cogs
from cogs.cluster import LocalCluster
from cogs.errors import CogsError, DeliveryTimeout, ProxyClosed
from cogs.proxy import StateProxy
from cogs.settings import load_settings


def test_proxy_closed_is_public() -> None:
    assert cogs.ProxyClosed is ProxyClosed
    assert issubclass(ProxyClosed, cogs.CogsError)
    assert "ProxyClosed" in cogs.__all__


def test_ops_after_close_are_refused(freezable: tuple[LocalCluster, list[int]]) -> None:
    lc, _ = freezable

    async def go() -> None:
        p = StateProxy(lc.url)
        async with p:
            await p.syn_up("nat", "closed-k", "add", 1)
            assert await p.syn_retrieve("nat", "closed-k") == 1  # a replica is cached
            p.update("cnt", "closed-hot", "add", 1)  # a key in the hot lane
        with anyio.fail_after(5):
            with pytest.raises(ProxyClosed):
                p.update("cnt", "closed-hot", "add", 1)
            with pytest.raises(ProxyClosed):
                p.update("cnt", "closed-new", "add", 1)
            with pytest.raises(ProxyClosed):
                await p.syn_up("cnt", "closed-k", "add", 1)
            with pytest.raises(ProxyClosed):
                await p.syn_retrieve("nat", "closed-k")  # not from the (no longer trusted) cache
            with pytest.raises(ProxyClosed):
                p.asyn_up("cnt", "closed-k", "add", 1, lambda v, pkt: None)
            with pytest.raises(ProxyClosed):
                p.asyn_retrieve("cnt", "closed-k", None, lambda v, pkt: None)
            with pytest.raises(ProxyClosed):
                await p.aupdate("cnt", "closed-k", "add", 1)
            with pytest.raises(ProxyClosed):
                await p.syn_retrieve("objects", "closed-obj")
            with pytest.raises(ProxyClosed):
                await p.flush()
        async with StateProxy(lc.url) as q:
            assert await q.syn_retrieve("cnt", "closed-hot") == 1  # only the one issued while open

    anyio.run(go)


def test_every_waiter_pending_at_close_is_answered(freezable: tuple[LocalCluster, list[int]]) -> None:
    """The coordinator frozen: ops pending when the proxy closes end with an error
    (ProxyClosed, or DeliveryTimeout if their bound came first), ops issued while it
    closes are refused at once; nothing is left hanging."""
    lc, pids = freezable
    settings = load_settings(url=lc.url, delivery_timeout_s=20)
    errors: list[CogsError] = []

    async def go() -> dict[str, Any]:
        p = StateProxy(settings=settings, on_error=lambda e, _pkt: errors.append(e))
        await p.__aenter__()
        outcomes: dict[str, Any] = {}
        try:
            await p.syn_up("cnt", "pending-k", "add", 1)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)

            async def sync(name: str, call: Any) -> None:
                t0 = time.monotonic()
                try:
                    outcomes[name] = await call
                except CogsError as e:
                    outcomes[name] = (type(e).__name__, round(time.monotonic() - t0, 1))

            failed_packets: list[Any] = []
            with anyio.fail_after(15):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sync, "syn_up", p.syn_up("cnt", "pending-k", "add", 1))
                    tg.start_soon(sync, "read", p.syn_retrieve("cnt", "pending-r"))
                    tg.start_soon(sync, "shared read", p.syn_retrieve("cnt", "pending-r"))
                    p.asyn_up("cnt", "pending-a", "add", 1, lambda v, pkt: outcomes.setdefault("async", v), "pkt")
                    p.update("cnt", "pending-u", "add", 1)
                    await anyio.sleep(0.3)
                    tg.start_soon(p.aclose)  # drains for up to 5 s, the nodes frozen
                    await anyio.sleep(0.2)
                    tg.start_soon(sync, "while closing", p.syn_up("cnt", "pending-k", "add", 1))
                failed_packets = [e for e in errors if isinstance(e, ProxyClosed | DeliveryTimeout)]
            outcomes["errors"] = [type(e).__name__ for e in failed_packets]
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            await p.aclose()
        return outcomes

    out = anyio.run(go)
    print(f"\n[closed with waiters] {out}")
    assert out["while closing"][0] == "ProxyClosed"
    assert out["while closing"][1] < 1.0  # refused at once, not after the drain
    for name in ("syn_up", "read", "shared read"):
        assert out[name][0] in ("ProxyClosed", "DeliveryTimeout"), out
    assert "async" not in out  # its callback never ran: its error went to on_error
    assert "ProxyClosed" in out["errors"], out
