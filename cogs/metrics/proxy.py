"""The statistics of this process's proxies on an HTTP port, for Prometheus.

Opt-in: ``StateProxy(metrics_port=P)`` or ``COGS_METRICS_PORT=P`` (and
``COGS_METRICS_HOST``, default 127.0.0.1; port 0 picks a free one, advertised in the
proxy's heartbeat). Proxies of one process asking for the same port share one
endpoint, one sample per proxy (label ``proxy``). A scrape reads each proxy's
``statistics()`` on the proxy's own event loop (the HTTP server is a thread), so it
never races the proxy; a loop that does not answer within ``READ_TIMEOUT_S`` leaves
that proxy out of the scrape instead of stalling it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cogs.logs import fields
from cogs.metrics.server import MetricsServer
from cogs.metrics.stats import families

log = logging.getLogger("cogs.metrics")
READ_TIMEOUT_S = 2.0
PREFIX = "cogs_proxy"


class HasStatistics(Protocol):
    id: str

    def statistics(self) -> Any: ...


class ProxyCollector(Collector):
    """Families built from the statistics of the registered proxies at scrape time."""

    def __init__(self) -> None:
        self.proxies: dict[str, tuple[HasStatistics, asyncio.AbstractEventLoop | None]] = {}
        self.lock = threading.Lock()

    def _read(self, proxy: HasStatistics, loop: asyncio.AbstractEventLoop | None) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or not loop.is_running():
            return proxy.statistics()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def read() -> None:
            try:
                fut.set_result(proxy.statistics())
            except BaseException as e:
                fut.set_exception(e)

        loop.call_soon_threadsafe(read)
        return fut.result(READ_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            proxies = list(self.proxies.items())
        rows = []
        for pid, (proxy, loop) in proxies:
            try:
                rows.append(((pid,), self._read(proxy, loop)))
            except (concurrent.futures.TimeoutError, RuntimeError) as e:
                log.warning("metrics: proxy %s did not report (%s)", pid, e or "timeout", extra=fields(proxy=pid))
        up = GaugeMetricFamily(f"{PREFIX}_up", "1 for each proxy of this process that reported", labels=["proxy"])
        for (pid,), _ in rows:
            up.add_metric([pid], 1.0)
        yield up
        yield from families(rows, PREFIX, ["proxy"])


class _Endpoint:
    def __init__(self, host: str, port: int) -> None:
        self.collector = ProxyCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        self.server = MetricsServer(registry, host, port)


_endpoints: dict[tuple[str, int], _Endpoint] = {}
_lock = threading.Lock()


def serve(proxy: HasStatistics, host: str, port: int) -> MetricsServer:
    """Export ``proxy``'s statistics on ``host:port`` (shared with this process's
    other proxies on that port; port 0: an endpoint of its own on a free port).
    Raises ConfigError if the port cannot be had."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    with _lock:
        ep = _endpoints.get((host, port)) if port else None
        if ep is None:
            ep = _Endpoint(host, port)
            _endpoints[(host, ep.server.port)] = ep
        with ep.collector.lock:
            ep.collector.proxies[proxy.id] = (proxy, loop)
    log.info("proxy %s: metrics on %s", proxy.id, ep.server.url, extra=fields(proxy=proxy.id))
    return ep.server


def unserve(proxy: HasStatistics, server: MetricsServer) -> None:
    """Stop exporting ``proxy``; the endpoint closes with its last proxy."""
    with _lock:
        key = (server.host, server.port)
        ep = _endpoints.get(key)
        if ep is None:
            return
        with ep.collector.lock:
            ep.collector.proxies.pop(proxy.id, None)
            last = not ep.collector.proxies
        if last:
            del _endpoints[key]
    if last:
        ep.server.close()
