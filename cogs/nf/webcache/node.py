"""One caching HTTP proxy of the cooperative web cache cluster.

A client uses it as its HTTP proxy (``curl -x http://node GET http://origin/x``). A
fresh object is served from this node; else from the node that holds it; else from
the origin, and then kept here. Where an object lives is found by the mode:

* ``cogs`` — cached objects are an indirect-retrieval state (``web_objects``): the
  coordinator keeps one locator per URL, so a miss here costs one lookup, then one
  fetch from the owner; an object from the origin is created here (this node owns
  it); in replica mode a fetched object is kept here until the owner changes it.
* ``icp`` — the baseline, in the same code: no coordinator; a miss here asks every
  sibling whether it has the object (ICP queries over UDP, icp.py), waits for the
  first hit or all misses, then fetches from the hit — and keeps a copy.
* ``local`` — no cooperation at all.

Only basic HTTP caching: GET 200 responses without ``no-store``/``private``/
``no-cache``, within the object size limit, fresh for ``s-maxage``/``max-age`` (or
an hour). Requests that must not be answered from a cache go to the origin.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio

from cogs.errors import CogsError, ConfigError, PeerError, show
from cogs.keys import key_problem
from cogs.logs import Throttle
from cogs.nf.ident import bounded_message, ident_str
from cogs.nf.webcache.http import HttpRequest, HttpResponse, HttpServer, OriginClient, OriginError, error
from cogs.nf.webcache.icp import IcpAgent
from cogs.nf.webcache.objects import Cached, decode, encode, request_bypasses, storable
from cogs.proxy import MISS, StateProxy
from cogs.proxy.peer import PeerClient, PeerRefusal, PeerServer
from cogs.settings import load_settings

log = logging.getLogger("cogs.nf.webcache")
MODES = ("cogs", "icp", "local")
PEER_TIMEOUT_S = 5.0  # an object transfer from a sibling, as COGS_PEER_TIMEOUT_S for cogs
ICP_STATE = "icp"  # the state name siblings use on the peer channel in icp mode


@dataclass
class NodeConfig:
    name: str
    mode: str = "cogs"
    coordinator: str | None = None
    state: str = "web_objects"
    host: str = "127.0.0.1"
    port: int = 0
    peer_secret: str = ""
    peer_port: int = 0
    #: icp: the siblings' peer addresses (host:port)
    peers: tuple[str, ...] = ()
    max_object: int = 4 << 20
    #: bytes of objects a node keeps before the least recently used go (cogs: the
    #: proxy's owned values, COGS_MAX_OWNED_BYTES; icp/local: the node's own store)
    store_bytes: int = 1 << 30
    origin_timeout: float = 10.0
    icp_timeout: float = 1.0


class LocalStore:
    """Objects kept by an icp/local node: URL -> blob, least recently used dropped first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.evicted = max_bytes, 0, 0
        self._d: OrderedDict[str, bytes] = OrderedDict()

    def get(self, url: str) -> bytes | None:
        blob = self._d.get(url)
        if blob is not None:
            self._d.move_to_end(url)
        return blob

    def put(self, url: str, blob: bytes) -> None:
        old = self._d.pop(url, None)
        self.bytes += len(blob) - (len(old) if old else 0)
        self._d[url] = blob
        while self.bytes > self.max_bytes and self._d:
            _, gone = self._d.popitem(last=False)
            self.bytes -= len(gone)
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._d)


class CacheNode:
    def __init__(self, cfg: NodeConfig) -> None:
        if cfg.mode not in MODES:
            raise ConfigError(f"unknown web cache mode {cfg.mode!r} (have: {', '.join(MODES)})")
        if cfg.mode != "local" and not cfg.peer_secret:
            raise ConfigError(f"mode {cfg.mode} moves objects between nodes: give the nodes a shared peer secret")
        self.cfg = cfg
        self.stats: Counter[str] = Counter()
        self.max_object = cfg.max_object
        self.proxy: StateProxy | None = None
        self.store = LocalStore(cfg.store_bytes)
        self.peer_server: PeerServer | None = None
        self.peer_client: PeerClient | None = None
        self.icp: IcpAgent | None = None
        self._siblings = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in cfg.peers)]
        self.http = HttpServer(self.handle, cfg.host, cfg.port)
        self.origin_client = OriginClient(cfg.origin_timeout)
        self.throttle = Throttle()  # a line per failed request is a flood under load: a few a minute

    async def start(self, tg: anyio.abc.TaskGroup) -> str:
        """Connect, listen, serve (in ``tg``); the HTTP address."""
        cfg = self.cfg
        if cfg.mode == "cogs":
            settings = load_settings(
                url=cfg.coordinator, peer_host=cfg.host, peer_port=cfg.peer_port, max_owned_bytes=cfg.store_bytes
            )
            pid = f"{cfg.name}-{uuid.uuid4().hex[:6]}"
            self.proxy = StateProxy(settings=settings, proxy_id=pid, peer_secret=cfg.peer_secret)
            await self.proxy.__aenter__()
            if cfg.state not in self.proxy.catalog or self.proxy.catalog.get(cfg.state).state_class != "indirect":
                raise ConfigError(f"state {cfg.state!r} is not an indirect state of the coordinator's catalog")
            self.max_object = min(cfg.max_object, self.proxy.catalog.get(cfg.state).max_bytes - 64 * 1024)
        elif cfg.mode == "icp":  # queries over UDP (ICP), objects over the peer channel (TCP), one port
            secret = cfg.peer_secret.encode()
            self.peer_server = PeerServer(cfg.name, secret, self._serve_sibling, lambda _s: 0, cfg.host, cfg.peer_port)
            await self.peer_server.start()
            tg.start_soon(self.peer_server.serve)
            port = int(self.peer_server.address.rpartition(":")[2])
            self.icp = IcpAgent(lambda url: self.store.get(url) is not None, cfg.host, port)
            await self.icp.start()
            tg.start_soon(self.icp.serve)
            self.peer_client = PeerClient(cfg.name, secret, timeout=PEER_TIMEOUT_S)
        addr = await self.http.start()
        tg.start_soon(self.http.serve)
        return addr

    @property
    def peer_address(self) -> str:
        if self.peer_server is not None:
            return self.peer_server.address
        return self.proxy.peer_address if self.proxy is not None else ""

    async def aclose(self) -> None:
        await self.origin_client.aclose()
        if self.peer_client is not None:
            await self.peer_client.aclose()
        if self.peer_server is not None:
            await self.peer_server.aclose()
        if self.icp is not None:
            await self.icp.aclose()
        if self.proxy is not None:
            await self.proxy.aclose()

    # -- one request -------------------------------------------------------------------

    async def handle(self, req: HttpRequest) -> HttpResponse:
        self.stats["requests"] += 1
        if req.method == "CONNECT":
            return error(501, "CONNECT (https) is not supported: this cache serves http:// URLs")
        if req.target == "/cogs/stats":
            return HttpResponse(200, [(b"content-type", b"application/json")], self._stats_json().encode())
        parts = urlsplit(req.target)
        if parts.scheme != "http" or not parts.netloc:
            return error(400, "use this node as an HTTP proxy: the request target must be an absolute http:// URL")
        url = req.target
        key = cache_key(url)  # where the object is kept: the URL unless it cannot be a key
        why = request_bypasses(req)
        if why is not None:
            self.stats["bypassed"] += 1
            return self._tag(await self._origin(req, url), "MISS")
        if self.proxy is not None:
            obj, where, resp = await self._read_through(req, url, key)
            if resp is not None:  # loaded from the origin by this request (and kept if it may be)
                return self._tag(resp, "MISS")
        else:
            obj, where = await self._lookup(key)
        if obj is not None and obj.fresh():
            self.stats[f"{where} hits"] += 1
            return self._tag(obj.response(), f"HIT ({where})")
        resp = await self._origin(req, url)
        kept = self._storable(resp)
        if kept is not None:
            await self._keep(key, kept, obj is not None)
        return self._tag(resp, "MISS")

    def _storable(self, resp: HttpResponse) -> Cached | None:
        fresh, _ = storable(resp, self.max_object)
        if not fresh:
            self.stats["not cacheable"] += 1
            return None
        return Cached(resp.status, resp.headers, resp.body, time.time(), fresh)

    def _tag(self, resp: HttpResponse, what: str) -> HttpResponse:
        resp.headers += [
            (b"x-cache", f"{what} from {self.cfg.name}".encode()),
            (b"via", f"1.1 {self.cfg.name} (cogs)".encode()),
        ]
        return resp

    async def _origin(self, req: HttpRequest, url: str) -> HttpResponse:
        self.stats["origin fetches"] += 1
        try:
            return await self.origin_client.fetch(req, url)
        except OriginError as e:
            self.stats["origin errors"] += 1
            return error(e.status, str(e))

    # -- where objects are --------------------------------------------------------------

    async def _lookup(self, key: str) -> tuple[Cached | None, str]:
        blob = self.store.get(key)
        if blob is not None:
            return _decode(blob), "local"
        if self.cfg.mode == "icp":
            blob = await self._ask_siblings(key)
            if blob is not None:
                self.store.put(key, blob)  # a sibling hit is kept here too
                return _decode(blob), "sibling"
        return None, ""

    async def _read_through(
        self, req: HttpRequest, url: str, key: str
    ) -> tuple[Cached | None, str, HttpResponse | None]:
        """cogs: the object from here or its owner; when nobody has it, this node takes
        it (one coordinator call for both) and loads it from the origin while requests
        for it on other nodes wait. (object, where, the origin's response if loaded here)"""
        assert self.proxy is not None
        st = self.cfg.state
        where = "local" if self.proxy.cached(st, key) is not MISS else "peer"
        loaded: list[HttpResponse] = []

        async def load() -> bytes | None:
            resp = await self._origin(req, url)
            loaded.append(resp)
            kept = self._storable(resp)
            if kept is None:
                return None
            self.stats["stored"] += 1
            return encode(kept)

        try:
            blob = await self.proxy.syn_retrieve(st, key, load=load)
        except PeerError as e:  # the owner is unreachable (dying?): the origin it is
            self.stats["peer errors"] += 1
            self._log(logging.INFO, "owner of %s unreachable: %s", url, e)
            blob = None
        except CogsError as e:
            self.stats["coordinator errors"] += 1
            self._log(logging.WARNING, "lookup of %s failed: %s", url, e)
            blob = None
        if loaded:
            return None, "", loaded[0]
        return (_decode(blob), where, None) if blob is not None else (None, "", None)

    async def _keep(self, key: str, obj: Cached, replace: bool) -> None:
        blob = encode(obj)
        if self.proxy is None:
            self.store.put(key, blob)
            self.stats["stored"] += 1
            return
        try:
            await self.proxy.syn_up(self.cfg.state, key, "set" if replace else "create", blob)
            self.stats["stored"] += 1
        except CogsError as e:  # served anyway, just not cached
            self.stats["store errors"] += 1
            self._log(logging.INFO, "could not keep %s: %s", key, e)

    def _log(self, level: int, msg: str, url: str, e: Exception) -> None:
        """One bounded line (a URL is the client's: a prefix, its length, a digest), a few
        a minute per kind of line: a failing coordinator must not flood the log."""
        why = bounded_message(str(e), 300)
        self.throttle.log(log, level, msg, f"%s: {msg}", self.cfg.name, show(url), why)

    # -- icp ---------------------------------------------------------------------------

    async def _ask_siblings(self, url: str) -> bytes | None:
        """ICP: ask every sibling (UDP); fetch from the first that has it."""
        assert self.icp is not None
        assert self.peer_client is not None
        hit, late = await self.icp.ask(self._siblings, url, self.cfg.icp_timeout)
        self.stats["icp queries"] += len(self._siblings)
        if late:
            self.stats["icp timeouts"] += 1  # some sibling did not answer in time: counted as a miss
        if hit is None:
            return None
        try:
            _, blob = await self.peer_client.request(f"{hit[0]}:{hit[1]}", "get", ICP_STATE, url)
        except (PeerRefusal, PeerError, CogsError):
            self.stats["sibling fetch errors"] += 1
            return None
        return blob

    async def _serve_sibling(self, op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        if op not in ("get", "has") or state != ICP_STATE:
            raise PeerRefusal("UNKNOWN_OP", "siblings only answer get and has")
        self.stats["sibling queries served"] += 1
        blob = self.store.get(key)
        if blob is None:
            raise PeerRefusal("NOT_FOUND", f"{self.cfg.name} has no {key}")
        return 1, blob if op == "get" else None

    # -- stats -------------------------------------------------------------------------

    def _stats_json(self) -> str:
        out: dict[str, Any] = {"node": self.cfg.name, "mode": self.cfg.mode, **self.stats}
        out["cpu_ms"] = int(time.process_time() * 1000)  # this node's process, since it started
        if self.proxy is None:
            out.update({"objects here": len(self.store), "bytes here": self.store.bytes, "evicted": self.store.evicted})
        else:
            st = self.proxy.statistics()
            out.update({"objects here": st.owned, "bytes here": st.owned_bytes, "evicted": st.evicted})
        if self.icp is not None:
            out.update({"icp queries answered": self.icp.answered, "icp datagrams lost": self.icp.lost})
        return json.dumps(out)


def cache_key(url: str) -> str:
    """Where ``url``'s object is kept: the URL itself when the proxy takes it as a key;
    else (longer than a key may be, or bytes that are not UTF-8) a readable prefix, its
    length and a digest (:func:`~cogs.nf.ident.ident_str`), the same on every node, so
    such URLs are cached too instead of failing every lookup."""
    if key_problem(url) is None:
        return url
    return ident_str(url)


def _decode(blob: bytes) -> Cached | None:
    try:
        return decode(blob)
    except ValueError:
        return None  # not ours or damaged: treat as absent
