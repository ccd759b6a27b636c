"""NAT mappings as global state: a ``portmap`` state seen through a StateProxy.

The pool (external IPs, port range, block size) is declared once, in the catalog,
so every middlebox and the coordinator agree on it. An internal flow
``(proto, ip, port)`` hashes to one block of external ports; the coordinator
allocates a port of that block and writes both directions in one atomic call
(lua/types/portmap.lua), so no two flows ever share an external (ip, port) however
many middleboxes ask at once. A reverse packet names its block by its destination
(ip, port). In replica mode each middlebox caches the mappings it used (per flow and
per external port), re-reading one at half its idle time — which keeps a busy
mapping alive — and dropping it when the coordinator reclaims or releases it.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cogs.errors import CogsError, ConfigError, Exhausted
from cogs.proxy.proxy import StateProxy

log = logging.getLogger("cogs.nat")

Mapping = tuple[str, int]  # (ip, port)
FLOW_CACHE = 200_000  # flows whose block is remembered (then the memo starts over)
NatCallback = Callable[[Mapping | None, Any], Any]


@dataclass(frozen=True)
class Pool:
    ips: tuple[str, ...]
    port_min: int
    port_max: int
    block: int

    @classmethod
    def from_params(cls, params: dict[str, Any], state: str) -> Pool:
        ips = tuple(str(params.get("external", "")).split())
        pmin, pmax, size = int(params["port_min"]), int(params["port_max"]), int(params["block"])
        if not ips or not 0 < pmin <= pmax <= 65535 or size < 1:
            raise ConfigError(
                f"state {state}: a NAT pool needs external IPs, 0 < port_min <= port_max <= 65535 and block >= 1 "
                f"(got external={params.get('external')!r}, ports {pmin}-{pmax}, block {size})"
            )
        return cls(ips, pmin, pmax, size)

    @property
    def blocks(self) -> list[str]:
        return [f"{ip}|{lo}" for ip in self.ips for lo in range(self.port_min, self.port_max + 1, self.block)]

    @property
    def size(self) -> int:
        return len(self.ips) * (self.port_max - self.port_min + 1)

    def block_of_port(self, ip: str, port: int) -> str | None:
        if ip not in self.ips or not self.port_min <= port <= self.port_max:
            return None
        return f"{ip}|{port - (port - self.port_min) % self.block}"


def flow_id(proto: int, ip: str, port: int) -> str:
    return f"{proto}|{ip}|{port}"


class NatTable:
    """Outbound and inbound translation against the portmap state ``state``.

    ``merge`` (default): lookups of one mapping made while one is in flight wait for
    that one (a flow's packets in a burst cost one round trip). ``merge=False`` sends
    one lookup per packet: what the design bench sets beside it, so that the async
    gain from pipelining is not mixed with the gain from merging."""

    def __init__(self, proxy: StateProxy, state: str = "nat", *, merge: bool = True) -> None:
        if state not in proxy.catalog:
            raise ConfigError(f"no state {state!r} in the catalog: declare a direct state of type portmap")
        st = proxy.catalog.get(state)
        if st.type != "portmap":
            raise ConfigError(f"state {state!r} is of type {st.type}, not portmap")
        self.proxy, self.state, self.merge = proxy, state, merge
        self.pool = Pool.from_params(dict(st.params), state)
        self._blocks = self.pool.blocks
        self._flows: dict[str, tuple[str, str, str]] = {}
        self.exhausted = 0  # new flows dropped: their block had no free port
        self.errors = 0  # async lookups that failed otherwise (dropped, and reported)

    def block_of_flow(self, flow: str) -> str:
        return self._blocks[zlib.crc32(flow.encode()) % len(self._blocks)]

    def _exhausted(self, err: Exhausted, flow: str) -> None:
        self.exhausted += 1
        n = self.exhausted
        if n <= 10 or n % 1000 == 0:
            log.warning("NAT %s: dropped a packet of new flow %s: %s (%d so far)", self.state, flow, err, n)

    @staticmethod
    def _ip(block: str) -> str:
        return block.partition("|")[0]

    # -- sync --------------------------------------------------------------------------

    async def outbound(self, proto: int, ip: str, port: int) -> Mapping | None:
        """The external (ip, port) of an internal flow, allocated on its first packet;
        None when its block is exhausted (drop the packet)."""
        flow = flow_id(proto, ip, port)
        block = self.block_of_flow(flow)
        try:
            ext = await self.proxy.entries.syn(self.state, block, "map", flow, "o|" + flow, share=self.merge)
        except Exhausted as e:
            self._exhausted(e, flow)
            return None
        return self._ip(block), int(ext)

    async def inbound(self, proto: int, ip: str, port: int) -> Mapping | None:
        """The internal (ip, port) a packet to external (ip, port) goes to; None when
        no live mapping has it (drop the packet)."""
        block = self.pool.block_of_port(ip, port)
        if block is None:
            return None
        flow = await self.proxy.entries.syn(self.state, block, "in", port, f"i|{ip}|{port}", share=self.merge)
        return _internal(flow, proto)

    async def release(self, proto: int, ip: str, port: int) -> bool:
        """End a flow's mapping now (its port is free again); False if it had none.
        This proxy's cached copies of both directions go with it, so a port handed to
        another flow right after is never shadowed here by the released one."""
        flow = flow_id(proto, ip, port)
        block = self.block_of_flow(flow)
        ext_ip, entries = self._ip(block), ["o|" + flow]
        cached = self.proxy.cached(self.state, entries[0])
        if isinstance(cached, int):
            entries.append(f"i|{ext_ip}|{cached}")
        self.proxy.entries.forget(self.state, entries)
        freed = await self.proxy.syn_up(self.state, block, "release", flow)
        if freed:  # the port is known now, cached here or not
            self.proxy.entries.forget(self.state, [f"i|{ext_ip}|{int(freed)}"])
        return bool(freed)

    async def stats(self) -> tuple[int, int]:
        """(live mappings, free ports) over the whole pool (one read per block)."""
        live = free = 0
        for b in self._blocks:
            n, f = await self.proxy.syn_retrieve(self.state, b, "size")
            live, free = live + int(n), free + int(f)
        return live, free

    # -- async -------------------------------------------------------------------------

    # The async paths run per packet: no closures (a packet's context rides in a tuple
    # to bound methods), and a flow's block is hashed once.

    def _flow(self, proto: int, ip: str, port: int) -> tuple[str, str, str]:
        """(flow id, its block, the block's external IP), remembered per flow."""
        flow = flow_id(proto, ip, port)
        got = self._flows.get(flow)
        if got is None:
            if len(self._flows) >= FLOW_CACHE:
                self._flows.clear()
            block = self.block_of_flow(flow)
            got = self._flows[flow] = (flow, block, self._ip(block))
        return got

    def asyn_outbound(self, proto: int, ip: str, port: int, callback: NatCallback, packet: Any = None) -> None:
        """``callback(mapping or None, packet)``: at once on a cached mapping."""
        flow, block, ext_ip = self._flow(proto, ip, port)
        self.proxy.entries.asyn(
            self.state, block, "map", flow, "o|" + flow, self._out_done, (callback, ext_ip, flow, packet),
            share=self.merge, on_fail=self._out_failed,
        )  # fmt: skip

    @staticmethod
    def _out_done(ext: Any, ctx: tuple[NatCallback, str, str, Any]) -> None:
        ctx[0]((ctx[1], int(ext)), ctx[3])

    def _out_failed(self, err: CogsError, ctx: tuple[NatCallback, str, str, Any]) -> None:
        callback, _, flow, pkt = ctx
        if isinstance(err, Exhausted):
            self._exhausted(err, flow)
        else:  # the coordinator refused or was out of reach: the packet is dropped too
            self.errors += 1
            self.proxy.report_error(err, pkt)
        callback(None, pkt)

    def asyn_inbound(self, proto: int, ip: str, port: int, callback: NatCallback, packet: Any = None) -> None:
        block = self.pool.block_of_port(ip, port)
        if block is None:
            callback(None, packet)
            return
        entry = f"i|{ip}|{port}"
        self.proxy.entries.asyn(
            self.state, block, "in", port, entry, self._in_done, (callback, proto, packet),
            share=self.merge, on_fail=self._in_failed,
        )  # fmt: skip

    @staticmethod
    def _in_done(flow: Any, ctx: tuple[NatCallback, int, Any]) -> None:
        ctx[0](_internal(flow, ctx[1]), ctx[2])

    def _in_failed(self, err: CogsError, ctx: tuple[NatCallback, int, Any]) -> None:
        self.errors += 1  # the lookup failed: the packet is dropped, and the error reported
        self.proxy.report_error(err, ctx[2])
        ctx[0](None, ctx[2])


def _internal(flow: Any, proto: int) -> Mapping | None:
    if flow is None:
        return None
    p, ip, port = str(flow).split("|")
    if int(p) != proto:  # the port is mapped for another protocol
        return None
    return ip, int(port)
