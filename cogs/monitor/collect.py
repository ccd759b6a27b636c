"""What the monitor shows, read from the coordinator: a Snapshot per refresh.

Everything here is read-only (the ``cogs-monitor`` ACL user is enough) and cheap
enough to run every second against a busy cluster:

* nodes: ``CLUSTER NODES`` from any reachable node, then ``INFO`` on each node with
  a short timeout, so a node that is down shows as down instead of stalling the rest;
* proxies: the ``cogs:proxies`` index, then each proxy's heartbeat key (the
  statistics it publishes about itself, with its ops/s since the last beat); any
  client the ACL lets register can write there, so a heartbeat that cannot be read
  is shown as such (``problem``) and an id that is not UTF-8 is left out, counted;
* states: counted by an incremental ``SCAN`` on each primary, a bounded number of
  keys per refresh; counts are those of the last complete pass (a first pass shows
  its progress), never a blocking ``KEYS``;
* alerts: the live ``follow_alerts`` feed, kept by the caller (see ``Monitor``).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from redis import exceptions as rexc

from cogs.catalog import Catalog
from cogs.coordinator.client import Coordinator
from cogs.errors import NETWORK_ERRORS, CogsError
from cogs.keys import PREFIX, PROXY_INDEX, proxy_key, slot

NODE_TIMEOUT = 0.8  # per node and refresh: a hung node must not freeze the screen
SCAN_BUDGET = 20_000  # keys per primary per refresh
#: a heartbeat larger than this is not one (a proxy's statistics take a few KiB)
MAX_HEARTBEAT_BYTES = 256 * 1024
#: characters of a proxy's id, host or address shown (they are the proxy's to choose)
SHOW_CHARS = 100
_NET = NETWORK_ERRORS


@dataclass(frozen=True)
class NodeView:
    addr: str
    role: str  # primary | replica | down
    slots: str
    ops_per_sec: int | None = None
    memory: str = "-"
    keys: int | None = None
    library: str = "-"  # "<library version>/<catalog digest>", both cut to 8 characters
    problem: str = ""  # why the node is shown as unhealthy
    memory_bytes: int | None = None
    #: in full (primaries that answered cogs_info; "" elsewhere)
    library_version: str = ""
    catalog_digest: str = ""


@dataclass(frozen=True)
class StateView:
    name: str
    state_class: str
    mode: str
    type: str
    values: int
    #: replica reference table entries (keys with holders) or, for indirect states,
    #: state reference table entries (locators) — the values column counts those
    replica_entries: int
    #: replicas held by proxies: the members of all those entries (a key cached by 3
    #: proxies counts 3)
    holders: int = 0


@dataclass(frozen=True)
class ProxyView:
    id: str
    host: str
    peer: str
    age_s: float  # since its last heartbeat
    alive: bool
    ops_per_sec: float | None
    batch_size: float
    cache_hit_rate: float
    pending_packets: int
    pending_ops: int
    errors: int
    #: where Prometheus scrapes it (host:port), if it serves metrics
    metrics: str = ""
    #: why its heartbeat cannot be read ("": it can); such a proxy is not ``alive``
    problem: str = ""


@dataclass(frozen=True)
class Snapshot:
    url: str
    time: float
    nodes: list[NodeView] = field(default_factory=list)
    states: list[StateView] = field(default_factory=list)
    #: fraction of the current state-count pass done (1.0: counts are complete)
    scan_done: float = 0.0
    proxies: list[ProxyView] = field(default_factory=list)
    problem: str = ""  # the coordinator as a whole is unreachable or not cogs
    #: stored alerts could not be read (a node down); set by the reader of alerts
    alerts_problem: str = ""
    #: why the states are not counted ("": they are)
    counts_note: str = ""
    #: entries of the proxy index left out: their id is not UTF-8
    proxies_unreadable: int = 0


def _ranges(slots: list[list[str]]) -> str:
    return ",".join("-".join(r) for r in slots) or "-"


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {NODE_TIMEOUT} s"
    return f"{type(e).__name__}: {e}"


def _flat(stats: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """A proxy's published statistics with nested components' fields lifted to the top
    (the first of a name wins): the monitor reads ``ops_sent`` wherever it lives."""
    out = {} if out is None else out
    if isinstance(stats, dict):
        for k, v in stats.items():
            if isinstance(v, dict):
                _flat(v, out)
            else:
                out.setdefault(k, v)
    return out


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _count(v: Any) -> int:
    """A figure of a heartbeat: a finite number, else 0 (a heartbeat is the proxy's word)."""
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 2**63 else 0


def _cut(v: Any) -> str:
    text = str(v)
    return text if len(text) <= SHOW_CHARS else f"{text[:SHOW_CHARS]}... ({len(text)} chars)"


class StateCounter:
    """Per-state key counts by an incremental SCAN on every primary."""

    def __init__(self, catalog: Catalog, budget: int = SCAN_BUDGET) -> None:
        self.names = {st.name for st in catalog}
        self.budget = budget
        self.cursors: dict[str, int] = {}
        self.partial: dict[str, Counter[tuple[str, str]]] = {}
        self.done: dict[str, Counter[tuple[str, str]]] = {}
        self.seen: dict[str, int] = {}
        self.total: dict[str, int] = {}
        #: why states are not counted: the user may not SCAN (cogs-monitor may not: it
        #: would list every key name of the node, as Redis ACLs do not filter SCAN)
        self.denied = ""

    def _tally(self, counts: Counter[tuple[str, str]], key: bytes) -> str | None:
        """Count ``key``; its state's name if it is a replica reference table entry."""
        # cogs:<state>:{<key>}[suffix]; suffix "" (value or locator), ":r" (holders)
        k = key.decode(errors="replace")
        brace = k.find(":{")
        if brace < 0:
            return None
        name = k[len(PREFIX) : brace]
        if name not in self.names:
            return None
        suffix = k[k.rfind("}") + 1 :]
        counts[(name, suffix)] += 1
        return name if suffix == ":r" else None

    async def step(self, addr: str, client: Any, dbsize: int) -> None:
        """Scan up to ``budget`` more keys of the primary at ``addr``."""
        if self.denied:
            return
        cursor = self.cursors.get(addr, 0)
        counts = self.partial.setdefault(addr, Counter())
        self.total[addr] = dbsize
        scanned = 0
        while scanned < self.budget:
            try:
                cursor, keys = await client.scan(cursor, match=f"{PREFIX}*", count=2000)
            except rexc.NoPermissionError:
                self.denied = "not counted: this user may not SCAN (run the monitor as an admin for counts)"
                return
            scanned += 2000
            self.seen[addr] = self.seen.get(addr, 0) + len(keys)
            tables = [(k, name) for k in keys if (name := self._tally(counts, k)) is not None]
            if tables:  # the holders of each entry: one pipelined SCARD each
                async with client.pipeline(transaction=False) as pipe:
                    for k, _ in tables:
                        pipe.scard(k)
                    for (_, name), n in zip(tables, await pipe.execute(), strict=True):
                        counts[(name, ":holders")] += int(n)
            if cursor == 0:
                self.done[addr], self.partial[addr], self.seen[addr] = counts, Counter(), 0
                break
        self.cursors[addr] = cursor

    def forget(self, live: set[str]) -> None:
        for d in (self.cursors, self.partial, self.done, self.seen, self.total):
            for addr in list(d):
                if addr not in live:
                    del d[addr]

    def counts(self) -> tuple[Counter[tuple[str, str]], float]:
        """Counts of the last complete pass of every primary, and how far the first
        pass is where none is complete yet."""
        out: Counter[tuple[str, str]] = Counter()
        if self.denied:
            return out, 1.0
        for c in self.done.values():
            out.update(c)
        pending = [a for a in self.total if a not in self.done]
        if not pending:
            return out, 1.0
        seen = sum(min(self.seen.get(a, 0), self.total[a]) for a in pending)
        total = sum(self.total[a] for a in pending)
        return out, (seen / total if total else 0.0) * 0.99


class Collector:
    """Reads a Snapshot from a connected Coordinator."""

    def __init__(self, coord: Coordinator, catalog: Catalog, url: str) -> None:
        self.coord, self.catalog, self.url = coord, catalog, url
        self.counter = StateCounter(catalog)
        self._library: dict[str, tuple[str, str, str]] = {}  # addr -> (shown, version, digest)

    async def snapshot(self) -> Snapshot:
        nodes = await self._nodes()
        states, done = self._states()
        proxies, unreadable = await self._proxies()
        return Snapshot(self.url, time.time(), nodes, states, done, proxies, counts_note=self.counter.denied,
                        proxies_unreadable=unreadable)  # fmt: skip

    # -- nodes ---------------------------------------------------------------------------

    async def _cluster_nodes(self) -> list[dict[str, Any]]:
        topo = self.coord.topology
        assert topo is not None
        if not topo.cluster:
            n = topo.nodes[0]
            return [{"addr": n.addr, "host": n.host, "port": n.port, "role": "primary", "slots": "all", "fail": False}]
        last: Exception | None = None
        for i in range(len(topo.nodes)):
            try:
                with anyio.fail_after(NODE_TIMEOUT):
                    raw = await self.coord.node_client(i).execute_command("CLUSTER NODES")
                break
            except (*_NET, rexc.ResponseError) as e:
                last = e
        else:
            raise CogsError(f"no node answered CLUSTER NODES: {last}")
        out = []
        for addr, n in sorted(raw.items()):
            host, _, port = addr.rpartition(":")
            host = host or topo.nodes[0].host  # a node may list itself without its address
            flags = str(n.get("flags", ""))
            role = "primary" if "master" in flags else "replica"
            fail = "fail" in flags or not n.get("connected", True)
            slots = _ranges(n.get("slots") or []) if role == "primary" else "-"
            out.append({"addr": addr, "host": host, "port": int(port), "role": role, "slots": slots, "fail": fail})
        return out

    async def _nodes(self) -> list[NodeView]:
        listed = await self._cluster_nodes()
        views: list[NodeView | None] = [None] * len(listed)

        async def probe(i: int, n: dict[str, Any]) -> None:
            addr = f"{n['host']}:{n['port']}"
            client = self.coord.client_at(n["host"], n["port"])
            try:
                with anyio.fail_after(NODE_TIMEOUT):
                    info = await client.info()
                    if n["role"] == "primary":
                        self._library[addr] = await self._library_of(client, addr)
                        await self.counter.step(addr, client, int(info.get("db0", {}).get("keys", 0)))
            except (*_NET, rexc.ResponseError) as e:
                views[i] = NodeView(addr, "down", n["slots"], problem=_why(e))
                return
            keys = _int(info.get("db0", {}).get("keys", 0))
            problem = "marked failing by the cluster" if n["fail"] else ""
            if info.get("loading"):
                problem = "loading its data"
            shown, version, digest = self._library.get(addr, ("-", "", "")) if n["role"] == "primary" else ("-", "", "")
            views[i] = NodeView(addr, n["role"], n["slots"], _int(info.get("instantaneous_ops_per_sec")),
                                str(info.get("used_memory_human", "-")), keys, shown, problem,
                                _int(info.get("used_memory")), version, digest)  # fmt: skip

        async with anyio.create_task_group() as tg:
            for i, n in enumerate(listed):
                tg.start_soon(probe, i, n)
        self.counter.forget({f"{n['host']}:{n['port']}" for n in listed if n["role"] == "primary"})
        return [v for v in views if v is not None]

    async def _library_of(self, client: Any, addr: str) -> tuple[str, str, str]:
        """(shown, library version, catalog digest) of the primary behind ``client``."""
        try:
            info = json.loads(await client.execute_command("FCALL_RO", "cogs_info", 0))
        except rexc.ResponseError as e:
            return ("missing" if "not found" in str(e).lower() else f"error: {e}"), "", ""
        version, digest = str(info["version"]), str(info["catalog_digest"])
        return f"{version[:8]}/{digest[:8]}", version, digest  # library / catalog

    # -- states --------------------------------------------------------------------------

    def _states(self) -> tuple[list[StateView], float]:
        counts, done = self.counter.counts()
        views = []
        for st in self.catalog:
            entries, holders = counts[(st.name, ":r")], counts[(st.name, ":holders")]
            views.append(StateView(st.name, st.state_class, st.mode, st.type, counts[(st.name, "")], entries, holders))
        return views, done

    # -- proxies -------------------------------------------------------------------------

    async def _proxies(self, linger_s: float = 60.0) -> tuple[list[ProxyView], int]:
        """The proxies registered in the last ``linger_s``, and how many index entries
        were left out (an id that is not UTF-8: no proxy has one)."""
        topo = self.coord.topology
        assert topo is not None
        now = time.time()
        try:
            with anyio.fail_after(NODE_TIMEOUT):
                index = self.coord.node_client(topo.node_of(slot(PROXY_INDEX)))
                since = int((now - linger_s) * 1000)
                got = await index.zrangebyscore(PROXY_INDEX, since, "+inf", withscores=True)
        except (*_NET, rexc.ResponseError):
            return [], 0  # its node is down (the nodes table says so), or the index is not a sorted set
        listed = cast(list[tuple[bytes, float]], got)
        views, unreadable = [], 0
        for pid_b, score in listed:
            try:
                pid = pid_b.decode()
            except UnicodeDecodeError:
                unreadable += 1
                continue
            last = min(score / 1000, now)  # a score from the future is no younger than now
            try:
                with anyio.fail_after(NODE_TIMEOUT):
                    raw = cast(bytes | None, await self.coord.node_client(topo.node_of(slot(pid))).get(proxy_key(pid)))
            except _NET:
                raw = None
            except rexc.ResponseError as e:  # not a string (WRONGTYPE), or not where its id says (MOVED)
                views.append(self._unreadable(pid, last, now, (str(e).split() or ["error"])[0][:20]))
                continue
            views.append(self._proxy_view(pid, raw, last, now))
        return views, unreadable

    def _unreadable(self, pid: str, last: float, now: float, why: str) -> ProxyView:
        return ProxyView(_cut(pid), "-", "-", now - last, False, None, 0.0, 0.0, 0, 0, 0, "", f"unreadable: {why}")

    def _proxy_view(self, pid: str, raw: bytes | None, last: float, now: float) -> ProxyView:
        if raw is None:  # listed but its heartbeat key expired: it died or was cut off
            return ProxyView(_cut(pid), "-", "-", now - last, False, None, 0.0, 0.0, 0, 0, 0, "")
        if len(raw) > MAX_HEARTBEAT_BYTES:
            return self._unreadable(pid, last, now, f"{len(raw) >> 10} KiB")
        try:
            info = json.loads(raw)
            s = _flat(info.get("stats")) if isinstance(info, dict) else None
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested beyond reason
            return self._unreadable(pid, last, now, "not JSON")
        if not isinstance(info, dict) or s is None:
            return self._unreadable(pid, last, now, "not a JSON object")
        t, rate = info.get("time"), info.get("ops_per_s")
        rate = float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None
        t = float(t) if isinstance(t, int | float) and not isinstance(t, bool) and abs(t) < 1e12 else now
        sent, batches = _count(s.get("ops_sent")), _count(s.get("batches"))
        hits, misses = _count(s.get("cache_hits")), _count(s.get("cache_misses"))
        return ProxyView(
            _cut(pid),
            _cut(info.get("host", "-")),
            _cut(info.get("peer") or "-"),
            max(0.0, now - t),
            True,
            float(rate)
            if isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate)
            else None,
            sent / batches if batches else 0.0,
            hits / (hits + misses) if hits + misses > 0 else 0.0,
            _count(s.get("pending_packets")),
            _count(s.get("pending_ops")) + _count(s.get("inflight_ops")),
            _count(s.get("errors")),
            _cut(info.get("metrics") or ""),
        )
