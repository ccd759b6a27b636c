"""What the monitor shows, read from the coordinator: a Snapshot per refresh.

Everything here is read-only (the ``cogs-monitor`` ACL user is enough) and cheap
enough to run every second against a busy cluster:

* nodes: ``CLUSTER NODES`` from any reachable node, then ``INFO`` on each node with
  a short timeout, so a node that is down shows as down instead of stalling the rest;
* proxies: the ``cogs:proxies`` index, then each proxy's heartbeat key (the
  statistics it publishes about itself, with its ops/s since the last beat); any
  client the ACL lets register can write there, so a heartbeat that cannot be read
  is shown as such (``problem``), an entry that names no proxy (VALID_ID) is left
  out and counted, and only the latest MAX_PROXIES are read (one pipelined GET per
  node), the rest counted;
* NFs: several share a cluster, each in its own namespace (cogs/keys.py); a
  Collector is given the NFs to show (:class:`Tenant`: namespace and catalog) and
  keeps their states and proxies apart;
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
from cogs.errors import CALL_ERRORS, NETWORK_ERRORS, CogsError
from cogs.keys import DEFAULT_NF, Namespace, slot, valid_proxy_id

NODE_TIMEOUT = 0.8  # per node and refresh: a hung node must not freeze the screen
SCAN_BUDGET = 20_000  # keys per primary per refresh
#: a heartbeat larger than this is not one (a proxy's statistics take a few KiB)
MAX_HEARTBEAT_BYTES = 256 * 1024
#: characters of a proxy's id, host or address shown (they are the proxy's to choose)
SHOW_CHARS = 100
#: proxies shown per NF, the latest to beat first: any client allowed to register can
#: list a million, and a refresh must stay a few round trips
MAX_PROXIES = 1000
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
    #: in full (primaries that answered cogs_info; "" elsewhere): the first NF's
    library_version: str = ""
    catalog_digest: str = ""
    #: (nf, library version, catalog digest) of every NF shown whose library the node runs
    libraries: tuple[tuple[str, str, str], ...] = ()


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
    nf: str = DEFAULT_NF


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
    nf: str = DEFAULT_NF


@dataclass(frozen=True)
class NodeUsage:
    """The keeper's last count of one NF on one primary (cogs/keeper.py), and what the
    library created since; ``age_s`` None: never counted there."""

    node: str
    keys: int
    bytes: int
    age_s: float | None


@dataclass(frozen=True)
class NfView:
    """One NF of those shown: its library, catalog and limits, its proxies."""

    nf: str
    library: str
    catalog_digest: str
    states: int
    #: its ops-rate limit per primary (None: none)
    ops_per_s: int | None
    proxies_alive: int
    problem: str = ""  # e.g. its library is not loaded
    #: entries of its proxy index left out: they name no proxy (VALID_ID)
    proxies_unreadable: int = 0
    #: its proxies registered in the last minute past the MAX_PROXIES latest shown
    proxies_not_shown: int = 0
    #: its usage limits per primary (None: none), and what each primary holds of it
    max_keys: int | None = None
    max_memory: int | None = None
    usage: tuple[NodeUsage, ...] = ()


@dataclass(frozen=True)
class Tenant:
    """An NF the monitor shows: its names and stored catalog."""

    ns: Namespace
    catalog: Catalog

    @property
    def nf(self) -> str:
        return self.ns.nf


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
    #: entries of the proxy index left out: they name no proxy (VALID_ID)
    proxies_unreadable: int = 0
    nfs: list[NfView] = field(default_factory=list)
    #: proxies registered in the last minute past the MAX_PROXIES latest (per NF) shown
    proxies_not_shown: int = 0


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


Count = Counter[tuple[str, str, str]]  # (nf, state, key suffix) -> keys


class StateCounter:
    """Per-state key counts of the NFs shown, by an incremental SCAN on every primary."""

    def __init__(self, tenants: list[Tenant], budget: int = SCAN_BUDGET) -> None:
        self.names = {t.ns.prefix: (t.nf, {st.name for st in t.catalog}) for t in tenants}
        # one NF: only its keys; several: every cogs key (each NF's prefix starts with cogs)
        self.match = f"{tenants[0].ns.prefix}*" if len(tenants) == 1 else "cogs*"
        self.budget = budget
        self.cursors: dict[str, int] = {}
        self.partial: dict[str, Count] = {}
        self.done: dict[str, Count] = {}
        self.seen: dict[str, int] = {}
        self.total: dict[str, int] = {}
        #: why states are not counted: the user may not SCAN (cogs-monitor may not: it
        #: would list every key name of the node, as Redis ACLs do not filter SCAN)
        self.denied = ""

    def _tally(self, counts: Count, key: bytes) -> tuple[str, str] | None:
        """Count ``key``; its (nf, state) if it is a replica reference table entry."""
        # <prefix><state>:{<key>}[suffix]; suffix "" (value or locator), ":r" (holders)
        k = key.decode(errors="replace")
        brace = k.find(":{")
        colon = k.find(":")
        if brace < 0 or colon < 0:
            return None
        tenant = self.names.get(k[: colon + 1])
        if tenant is None:
            return None
        nf, names = tenant
        name = k[colon + 1 : brace]
        if name not in names:
            return None
        suffix = k[k.rfind("}") + 1 :]
        counts[(nf, name, suffix)] += 1
        return (nf, name) if suffix == ":r" else None

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
                cursor, keys = await client.scan(cursor, match=self.match, count=2000)
            except rexc.NoPermissionError:
                self.denied = "not counted: this user may not SCAN (run the monitor as an admin for counts)"
                return
            scanned += 2000
            self.seen[addr] = self.seen.get(addr, 0) + len(keys)
            tables = [(k, owner) for k in keys if (owner := self._tally(counts, k)) is not None]
            if tables:  # the holders of each entry: one pipelined SCARD each
                async with client.pipeline(transaction=False) as pipe:
                    for k, _ in tables:
                        pipe.scard(k)
                    got = await pipe.execute(raise_on_error=False)
                for (_, (nf, state)), n in zip(tables, got, strict=True):
                    if isinstance(n, int):  # (an error: a key of another type, written outside cogs)
                        counts[(nf, state, ":holders")] += n
            if cursor == 0:
                self.done[addr], self.partial[addr], self.seen[addr] = counts, Counter(), 0
                break
        self.cursors[addr] = cursor

    def forget(self, live: set[str]) -> None:
        for d in (self.cursors, self.partial, self.done, self.seen, self.total):
            for addr in list(d):
                if addr not in live:
                    del d[addr]

    def counts(self) -> tuple[Count, float]:
        """Counts of the last complete pass of every primary, and how far the first
        pass is where none is complete yet."""
        out: Count = Counter()
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
    """Reads a Snapshot of the NFs ``tenants`` from a connected Coordinator (a
    Catalog alone: the Coordinator's own NF)."""

    def __init__(
        self, coord: Coordinator, tenants: list[Tenant] | Catalog, url: str, problems: dict[str, str] | None = None
    ) -> None:
        if isinstance(tenants, Catalog):
            tenants = [Tenant(coord.ns, tenants)]
        if not tenants:
            raise CogsError("no NF to show")
        self.coord, self.tenants, self.url = coord, tenants, url
        self.catalog = tenants[0].catalog
        #: NFs that could not be shown, and why (e.g. their library is not loaded)
        self.problems = dict(problems or {})
        self.counter = StateCounter(tenants)
        #: addr -> (shown, (nf, version, digest) per NF found)
        self._library: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {}
        self._left_out: dict[str, int] = {}  # nf -> index entries left out at the last refresh
        self._not_shown: dict[str, int] = {}  # nf -> proxies past MAX_PROXIES at the last refresh

    async def snapshot(self) -> Snapshot:
        nodes = await self._nodes()
        states, done = self._states()
        proxies, unreadable, more = await self._proxies()
        usage = {t.nf: await self._usage(t) for t in self.tenants if t.catalog.limits.usage}
        return Snapshot(self.url, time.time(), nodes, states, done, proxies, counts_note=self.counter.denied,
                        proxies_unreadable=unreadable, nfs=self._nfs(states, proxies, usage),
                        proxies_not_shown=more)  # fmt: skip

    def _nfs(self, states: list[StateView], proxies: list[ProxyView],
             usage: dict[str, tuple[NodeUsage, ...]]) -> list[NfView]:  # fmt: skip
        out = []
        for t in self.tenants:
            n_states, alive = sum(s.nf == t.nf for s in states), sum(p.alive and p.nf == t.nf for p in proxies)
            lim = t.catalog.limits
            out.append(NfView(t.nf, t.ns.library, t.catalog.digest, n_states, lim.ops_per_s, alive,
                              proxies_unreadable=self._left_out.get(t.nf, 0),
                              proxies_not_shown=self._not_shown.get(t.nf, 0), max_keys=lim.max_keys,
                              max_memory=lim.max_memory, usage=usage.get(t.nf, ())))  # fmt: skip
        return out + [NfView(nf, "-", "-", 0, None, 0, why) for nf, why in sorted(self.problems.items())]

    async def _usage(self, t: Tenant) -> tuple[NodeUsage, ...]:
        """What each primary holds of NF ``t``: the keeper's count plus what was created
        since (as its library adds them up, lua/api.lua); a node that cannot be read is left out."""
        topo = self.coord.topology
        assert topo is not None
        out = []
        for i, n in enumerate(topo.nodes):
            stream = t.ns.alert_stream(n.first_slot)
            try:
                async with self.coord.node_client(i).pipeline(transaction=False) as pipe:
                    pipe.hmget(t.ns.usage_key(stream), "k", "b", "ck", "cb", "t")
                    pipe.hmget(t.ns.created_key(stream), "k", "b")
                    pipe.time()
                    (k, b, ck0, cb0, at), (ck, cb), (sec, usec) = await pipe.execute()
            except (*CALL_ERRORS, ValueError, TypeError):
                continue
            now_ms = int(sec) * 1000 + int(usec) // 1000
            counted = _int(at)
            out.append(NodeUsage(n.addr, (_int(k) or 0) + max(0, (_int(ck) or 0) - (_int(ck0) or 0)),
                                 (_int(b) or 0) + max(0, (_int(cb) or 0) - (_int(cb0) or 0)),
                                 None if counted is None else max(0.0, (now_ms - counted) / 1000)))  # fmt: skip
        return tuple(out)

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
            shown, libs = self._library.get(addr, ("-", ())) if n["role"] == "primary" else ("-", ())
            first = next((x for x in libs if x[0] == self.tenants[0].nf), ("", "", ""))
            views[i] = NodeView(addr, n["role"], n["slots"], _int(info.get("instantaneous_ops_per_sec")),
                                str(info.get("used_memory_human", "-")), keys, shown, problem,
                                _int(info.get("used_memory")), first[1], first[2], libs)  # fmt: skip

        async with anyio.create_task_group() as tg:
            for i, n in enumerate(listed):
                tg.start_soon(probe, i, n)
        self.counter.forget({f"{n['host']}:{n['port']}" for n in listed if n["role"] == "primary"})
        return [v for v in views if v is not None]

    async def _library_of(self, client: Any, addr: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
        """What the primary behind ``client`` runs of each NF's library: a short text
        (library / catalog of the first NF, what is missing) and (nf, version, digest)."""
        found, missing = [], []
        for t in self.tenants:
            try:
                info = json.loads(await client.execute_command("FCALL_RO", t.ns.fn_info, 0))
            except rexc.ResponseError as e:
                missing.append(t.nf if "not found" in str(e).lower() else f"{t.nf} (error: {e})")
                continue
            found.append((t.nf, str(info["version"]), str(info["catalog_digest"])))
        if found:
            shown = f"{found[0][1][:8]}/{found[0][2][:8]}"  # library / catalog
        else:
            shown = "missing" if missing[0] == self.tenants[0].nf else missing[0].split(" ", 1)[1].strip("()")
        if len(self.tenants) > 1:
            shown = f"{len(found)} NFs" + (f", {found[0][1][:8]}" if found else "")
            if missing:
                shown += f", missing: {', '.join(missing)}"
        return shown, tuple(found)

    # -- states --------------------------------------------------------------------------

    def _states(self) -> tuple[list[StateView], float]:
        counts, done = self.counter.counts()
        views = []
        for t in self.tenants:
            for st in t.catalog:
                entries, holders = counts[(t.nf, st.name, ":r")], counts[(t.nf, st.name, ":holders")]
                views.append(StateView(st.name, st.state_class, st.mode, st.type, counts[(t.nf, st.name, "")],
                                       entries, holders, t.nf))  # fmt: skip
        return views, done

    # -- proxies -------------------------------------------------------------------------

    async def _proxies(self) -> tuple[list[ProxyView], int, int]:
        """The proxies of every NF shown, the index entries left out (no proxy id) and
        those not shown (past MAX_PROXIES)."""
        views, unreadable, more = [], 0, 0
        for t in self.tenants:
            mine, bad, over = await self._proxies_of(t.ns)
            views += mine
            unreadable += bad
            more += over
            self._left_out[t.nf], self._not_shown[t.nf] = bad, over
        return views, unreadable, more

    async def _proxies_of(self, ns: Namespace, linger_s: float = 60.0) -> tuple[list[ProxyView], int, int]:
        """The proxies of NF ``ns`` registered in the last ``linger_s`` (the latest
        MAX_PROXIES of them), how many index entries were left out as they name no proxy
        (not a proxy id: written outside cogs), and how many more were not shown."""
        topo = self.coord.topology
        assert topo is not None
        now = time.time()
        since = int((now - linger_s) * 1000)
        try:
            with anyio.fail_after(NODE_TIMEOUT):
                index = self.coord.node_client(topo.node_of(slot(ns.proxy_index)))
                listed = await index.zcount(ns.proxy_index, since, "+inf")
                got = await index.zrevrangebyscore(ns.proxy_index, "+inf", since, 0, MAX_PROXIES, withscores=True)
        except (*_NET, rexc.ResponseError):
            return [], 0, 0  # its node is down (the nodes table says so), or the index is not a sorted set
        latest = cast(list[tuple[bytes, float]], got)
        named: list[tuple[str, float]] = []
        for raw, score in latest:
            pid = valid_proxy_id(raw)
            if pid is not None:
                named.append((pid, min(score / 1000, now)))  # a score from the future is no younger than now
        beats = await self._heartbeats(ns, [pid for pid, _ in named])
        views = []
        for pid, last in sorted(named, key=lambda x: -x[1]):
            raw_beat = beats.get(pid)
            if isinstance(raw_beat, rexc.ResponseError):  # not a string (WRONGTYPE), or not where its id says
                views.append(self._unreadable(pid, last, now, (str(raw_beat).split() or ["error"])[0][:20], ns.nf))
            else:
                views.append(self._proxy_view(pid, raw_beat, last, now, ns.nf))
        return views, len(latest) - len(named), max(0, int(listed) - len(latest))

    async def _heartbeats(self, ns: Namespace, pids: list[str]) -> dict[str, Any]:
        """Each proxy's heartbeat key: bytes, None (gone, or its node is down) or the
        error reply; one pipelined GET per node, each within the node timeout."""
        topo = self.coord.topology
        assert topo is not None
        by_node: dict[int, list[str]] = {}
        for pid in pids:
            by_node.setdefault(topo.node_of(slot(pid)), []).append(pid)
        out: dict[str, Any] = {}

        async def read(node: int, mine: list[str]) -> None:
            try:
                with anyio.fail_after(NODE_TIMEOUT):
                    async with self.coord.node_client(node).pipeline(transaction=False) as pipe:
                        for pid in mine:
                            pipe.get(ns.proxy_key(pid))
                        got = await pipe.execute(raise_on_error=False)
            except _NET:
                return  # shown as lost: the nodes table says why
            out.update(zip(mine, got, strict=True))

        async with anyio.create_task_group() as tg:
            for node, mine in by_node.items():
                tg.start_soon(read, node, mine)
        return out

    def _unreadable(self, pid: str, last: float, now: float, why: str, nf: str) -> ProxyView:
        return ProxyView(_cut(pid), "-", "-", now - last, False, None, 0.0, 0.0, 0, 0, 0, "", f"unreadable: {why}",
                         nf)  # fmt: skip

    def _proxy_view(self, pid: str, raw: bytes | None, last: float, now: float, nf: str = DEFAULT_NF) -> ProxyView:
        if raw is None:  # listed but its heartbeat key expired: it died or was cut off
            return ProxyView(_cut(pid), "-", "-", now - last, False, None, 0.0, 0.0, 0, 0, 0, "", nf=nf)
        if len(raw) > MAX_HEARTBEAT_BYTES:
            return self._unreadable(pid, last, now, f"{len(raw) >> 10} KiB", nf)
        try:
            info = json.loads(raw)
            s = _flat(info.get("stats")) if isinstance(info, dict) else None
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested beyond reason
            return self._unreadable(pid, last, now, "not JSON", nf)
        if not isinstance(info, dict) or s is None:
            return self._unreadable(pid, last, now, "not a JSON object", nf)
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
            nf=nf,
        )
