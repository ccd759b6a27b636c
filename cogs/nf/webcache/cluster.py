"""Start a web cache cluster: N caching proxies (one process each) and, for demos
and benches, an origin server; stop them cleanly (proxies unregister)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import secrets
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from cogs import runtime
from cogs.errors import CogsError
from cogs.nf.webcache.http import HttpServer
from cogs.nf.webcache.node import CacheNode, NodeConfig
from cogs.nf.webcache.origin import Origin
from cogs.ports import free_port_base


@dataclass
class WebCacheCluster:
    mode: str
    nodes: list[str]  # HTTP proxy addresses, host:port
    origin: str | None = None  # http://host:port when started here
    procs: list[Any] = field(default_factory=list, repr=False)
    #: each node's peer address (host:port): the peer channel (TCP) and, in icp mode, ICP (UDP)
    peers: list[str] = field(default_factory=list)

    def proxy_url(self, i: int) -> str:
        return f"http://{self.nodes[i]}"

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``, as a crash would (no unregistering)."""
        p = self.procs[i + (1 if self.origin else 0)]
        p.kill()
        p.join(10)


async def _until_stopped() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def _node_main(cfg: NodeConfig, q: Any) -> None:
    node = CacheNode(cfg)
    try:
        async with anyio.create_task_group() as tg:
            addr = await node.start(tg)
            q.put(("ready", cfg.name, addr))
            await _until_stopped()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await node.aclose()


def _node_proc(cfg: NodeConfig, q: Any) -> None:
    try:
        runtime.run(_node_main, cfg, q)
    except BaseException as e:  # the parent reports it in one line
        q.put(("error", cfg.name, f"{type(e).__name__}: {e}"))


async def _origin_main(host: str, port: int, delay_s: float, q: Any) -> None:
    server = HttpServer(Origin(delay_s).handle, host, port)
    addr = await server.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        q.put(("ready", "origin", addr))
        await _until_stopped()
        tg.cancel_scope.cancel()


def _origin_proc(host: str, port: int, delay_s: float, q: Any) -> None:
    try:
        runtime.run(_origin_main, host, port, delay_s, q)
    except BaseException as e:
        q.put(("error", "origin", f"{type(e).__name__}: {e}"))


@contextlib.contextmanager
def web_cache(
    instances: int,
    mode: str = "cogs",
    coordinator: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    origin_delay_s: float | None = None,
    peer_secret: str | None = None,
    hosts: Sequence[str] | None = None,
    start: Callable[[str, Any], None] | None = None,
    **node_opts: Any,
) -> Iterator[WebCacheCluster]:
    """``instances`` caching proxies on ``port``.. (0: free ports) and, when
    ``origin_delay_s`` is given, an origin server; all stopped on exit.

    ``hosts[i]``: the address cache ``i`` listens on (default ``host`` for all);
    ``start(name, process)`` starts each process ("origin", "cache-0", ...) instead of
    ``process.start()``, e.g. inside a lab host (the bench's lab runs)."""
    if hosts is not None and len(hosts) != instances:
        raise CogsError(f"{len(hosts)} host addresses for {instances} web cache instances")
    if instances < 1:
        raise CogsError("need at least one web cache instance")
    secret = peer_secret or secrets.token_hex(16)
    base = port or free_port_base(instances, 21000, 26000, bus=False)
    peer_base = free_port_base(instances, 26000, 31000, bus=False)
    addrs = list(hosts) if hosts is not None else [host] * instances
    peers = [f"{addrs[i]}:{peer_base + i}" for i in range(instances)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs: list[Any] = []
    names: list[str] = []
    cluster = WebCacheCluster(mode, [], procs=procs, peers=peers)
    try:
        if origin_delay_s is not None:
            op = free_port_base(1, 31000, 32000, bus=False)
            procs.append(ctx.Process(target=_origin_proc, args=(host, op, origin_delay_s, q)))
            names.append("origin")
        for i in range(instances):
            cfg = NodeConfig(
                name=f"cache-{i}", mode=mode, coordinator=coordinator, host=addrs[i], port=base + i,
                peer_secret=secret, peer_port=peer_base + i, peers=tuple(p for j, p in enumerate(peers) if j != i),
                **node_opts,
            )  # fmt: skip
            procs.append(ctx.Process(target=_node_proc, args=(cfg, q)))
            names.append(cfg.name)
        for name, p in zip(names, procs, strict=True):
            if start is None:
                p.start()
            else:
                start(name, p)
        ready: dict[str, str] = {}
        while len(ready) < len(procs):
            kind, name, payload = q.get(timeout=60)
            if kind != "ready":
                raise CogsError(f"{name}: {payload}")
            ready[name] = payload
        cluster.nodes = [ready[f"cache-{i}"] for i in range(instances)]
        if "origin" in ready:
            cluster.origin = f"http://{ready['origin']}"
        yield cluster
    finally:
        started = [p for p in procs if p.pid is not None]
        for p in started:
            if p.is_alive():
                p.terminate()  # SIGTERM: a node closes its proxy (unregisters) and exits
        for p in started:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
