"""Indirect-retrieval states: large values stay on the proxy that created them.

The coordinator only keeps the state reference table (lua/indirect.lua): key ->
owning proxy and its incarnation. A proxy

* serves its own values with no network at all;
* finds another proxy's value with one coordinator lookup (``locate``), then asks
  the owner over the peer channel (peer.py); the owner executes every op, so only
  it ever changes the original;
* creates an absent value locally and claims the key atomically: of two proxies
  creating the same key at once, one owns it and the other gets the owner's value;
* reads through (``retrieve(load=...)``): one call looks a key up and, when nobody
  has it, claims it for this proxy, which loads the value (e.g. from an origin
  server) while readers anywhere wait for it rather than load it too.

In replica mode a fetched value is cached with its version; the owner's update
bumps the version at the coordinator, which sends discards to the holders (the
same discard path and race rules as direct states). A reader never takes an answer
older than the version its locator named, or a discard that came while it read,
and caches it no longer than its holder record lives (counted from the locate). An owner that died is found
out through the proxy registry (its heartbeat key is gone, or carries another
incarnation): readers drop its locators and fall back (None: fetch from the origin
and create anew) instead of hanging.

Ownership is a **lease**. Others may take a key over only once the owner's heartbeat
key is gone, which happens no sooner than the heartbeat TTL after its last beat; the
owner counts its lease from the moment it *sent* that beat (a shorter window), so
it stops trusting its ownership before anyone else can claim it. Past its lease (a
frozen event loop, a lost coordinator), or after a beat that came too late (the
heartbeat key may have lapsed meanwhile), an owner serves nothing, to its NF or to
peers, before the coordinator confirms the locator still names it; one that lost a
key drops it. The locator's incarnation is the fencing token: readers accept an
answer only from the incarnation it names (the peer handshake proves it). An owner
stores a new value before announcing its version, and serves peers under the key's
lock, so a reader never gets an old value under a new version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from cogs.catalog import Catalog
from cogs.coordinator.client import Coordinator
from cogs.errors import (
    CALL_ERRORS,
    CogsError,
    ConfigError,
    NotOwner,
    Oversize,
    PeerError,
    UnknownOp,
    from_redis,
    refuse,
)
from cogs.keys import slot
from cogs.logs import fields
from cogs.protocol import MAX_HEARTBEAT, Mode
from cogs.proxy.cache import MISS, ReplicaCache
from cogs.proxy.keylocks import KeyLocks
from cogs.proxy.owned import Entry, OwnedValues
from cogs.proxy.peer import PeerClient, PeerRefusal, PeerServer
from cogs.proxy.requests import lifetime
from cogs.proxy.stats import IndirectStatistics
from cogs.proxy.submit import Submitter

log = logging.getLogger("cogs.proxy")
LOCATE, CLAIM, OWNER, FORGET = Mode.LOCATE, Mode.CLAIM, Mode.OWNER, Mode.FORGET
OPS = ("get", "set", "create", "delete")


@dataclass
class IndirectStats:
    owned: int = 0
    local_hits: int = 0
    remote_fetches: int = 0
    coordinator_lookups: int = 0
    claims_won: int = 0
    claims_lost: int = 0
    #: readers that waited for a value another request was loading, instead of loading it too
    collapsed: int = 0
    dead_owners: int = 0
    served: int = 0
    #: values dropped (least recently used) to keep the owned bytes within the budget
    evicted: int = 0
    #: read-throughs that found the owner without the value and took the key over
    stale_locators: int = 0
    #: owned values re-checked after the lease lapsed, and those found taken over
    lease_checks: int = 0
    lease_lost: int = 0


class Indirect:
    def __init__(
        self,
        proxy_id: str,
        catalog: Catalog,
        coord: Coordinator,
        cache: ReplicaCache,
        submit: Submitter,
        *,
        secret: str | None,
        host: str,
        port: int,
        timeout: float,
        max_bytes: int,
        lease_s: float,
    ) -> None:
        self.id, self.catalog, self.coord, self.cache, self.submit = proxy_id, catalog, coord, cache, submit
        self.inc = uuid.uuid4().hex[:12]  # this start of the proxy: locators of earlier ones are dead
        self.owned = OwnedValues(max_bytes)
        self.stats = IndirectStats()
        self._secret = secret.encode() if secret else None
        self._peers: dict[str, tuple[str, str]] = {}  # proxy id -> (incarnation, address)
        self._locks = KeyLocks()
        #: reads of another proxy's value under way: key -> [readers, newest version a discard named]
        self._reading: dict[tuple[int, str], list[int]] = {}
        self.lease_s = lease_s
        self.lease_until = 0.0  # monotonic: until then nobody can have taken our keys over
        self.server: PeerServer | None = None
        self.client: PeerClient | None = None
        #: how long a reader waits here for a value being loaded; under the peers' timeout
        self.load_wait = timeout * 0.8
        if self._secret:
            self.server = PeerServer(proxy_id, self._secret, self._serve, self._max_value, host, port, inc=self.inc)
            self.client = PeerClient(proxy_id, self._secret, timeout, max_value=self._max_value)

    @property
    def address(self) -> str:
        return self.server.address if self.server else ""

    def statistics(self) -> IndirectStatistics:
        st = self.stats
        return IndirectStatistics(
            owned=len(self.owned), owned_bytes=self.owned.bytes, evicted=st.evicted, stale_locators=st.stale_locators,
            indirect_local_hits=st.local_hits, remote_ops=st.remote_fetches, locator_lookups=st.coordinator_lookups,
            peer_served=st.served, collapsed_reads=st.collapsed, lease_checks=st.lease_checks,
            lease_lost=st.lease_lost,
        )  # fmt: skip

    # -- the lease ---------------------------------------------------------------------------

    def renew(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` (monotonic) was stored. If it came after the
        lease ran out, the heartbeat key may have lapsed and others taken keys over:
        every owned value is re-checked before it is served again."""
        if self.lease_until and sent_at > self.lease_until:
            for _, e in self.owned.items():
                e.confirmed = False
        self.lease_until = max(self.lease_until, sent_at + self.lease_s)

    async def _current(self, k: tuple[int, str], state: str, key: str, e: Entry) -> bool:
        """May this proxy serve ``e`` as the key's value now? Within the lease, yes
        (unless it lapsed since the value was confirmed); else the coordinator decides."""
        if e.confirmed and time.monotonic() < self.lease_until:
            return True
        self.stats.lease_checks += 1
        loc = await self._coordinator(LOCATE, state, key, "locate")
        if loc and _s(loc[0]) == self.id and _s(loc[1]) == self.inc:
            e.confirmed = True
            return True
        self.stats.lease_lost += 1
        if self.owned.get(k) is e:
            del self.owned[k]
        log.warning("%s[%s]: this proxy lost the key while its lease had lapsed; dropped its value", state, key)
        return False

    def _need_peers(self, state: str) -> None:
        if self.client is None:
            raise ConfigError(
                f"state {state} is indirect: its values travel between proxies, which needs a shared "
                "secret (COGS_PEER_SECRET, the same on every proxy)"
            )

    def _max_value(self, state: str) -> int:
        return int(self.catalog.get(state).max_bytes) if state in self.catalog else 0

    def _local(self, k: tuple[int, str]) -> Entry | None:
        e = self.owned.get(k)
        if e is not None and e.expires and e.expires < time.monotonic():
            del self.owned[k]
            return None
        return e

    def sweep(self) -> None:
        """Forget owned values past their ttl (their locators expired with them)."""
        now = time.monotonic()
        for k in [k for k, e in self.owned.items() if e.expires and e.expires < now]:
            del self.owned[k]
        self.stats.owned = len(self.owned)

    async def _coordinator(self, mode: int, state: str, key: str, op: str, arg: Any = None) -> Any:
        """A locator op at the coordinator (the state reference table)."""
        self.stats.coordinator_lookups += 1
        return await self.submit.wait(self.submit.locator(mode, state, self.catalog.index(state), key, op, arg))

    # -- the owner's side ----------------------------------------------------------------

    async def _publish(self, state: str, key: str, op: str) -> int:
        """Tell the coordinator the owner changed the value: new version, discards."""
        return int(await self._coordinator(OWNER, state, key, "owner", {"inc": self.inc, "op": op}))

    async def _own_update(self, k: tuple[int, str], state: str, key: str, op: str, value: bytes | None) -> Entry | None:
        """set / create / delete of a value this proxy owns (the caller holds the key's lock)."""
        e = self._local(k)
        if e is None or not await self._current(k, state, key, e):
            raise PeerRefusal("NOT_OWNER", f"{self.id} does not own {state}[{key}]")
        if e.value is None and op != "delete":  # the first value of a key claimed to load it
            self._loaded(k, state, e, value)
            return e
        if op == "create":
            return e
        old = e.value
        if op != "delete":
            assert value is not None
            self.owned.set_value(k, e, value)  # stored before announced: no stall leaves a new version unserved
        try:
            version = await self._publish(state, key, "delete" if op == "delete" else "set")
        except NotOwner:
            self.owned.pop(k, None)  # declared dead and replaced meanwhile: not ours any more
            raise PeerRefusal("NOT_OWNER", f"{self.id} no longer owns {state}[{key}]") from None
        except BaseException:
            if old is not None and self.owned.get(k) is e:
                self.owned.set_value(k, e, old)  # not announced: the old value stands
            raise
        if op == "delete":
            del self.owned[k]
            if e.loaded is not None:
                e.loaded.set()  # readers waiting for a value being loaded: there will be none
            return None
        assert value is not None
        e.version = version
        self._loaded(k, state, e, value)
        return e

    def _loaded(self, k: tuple[int, str], state: str, e: Entry, value: bytes | None) -> None:
        assert value is not None
        ttl = self.catalog.get(state).ttl
        self.owned.set_value(k, e, value)
        e.expires = time.monotonic() + ttl / 1000 if ttl else 0.0
        if e.loaded is not None:
            e.loaded.set()
            e.loaded = None
        self._evict()

    def _evict(self) -> None:
        """Past the byte budget: drop the least recently used values and their locators.
        The forget is queued at once, so a later claim of the key here goes after it."""
        for (sidx, key), _ in self.owned.over_budget():
            self.stats.evicted += 1
            state = self.catalog.states[sidx - 1].name
            req = self.submit.locator(FORGET, state, sidx, key, "forget", f"{self.id}:{self.inc}")
            self.submit.queue(req).add_done_callback(_forgotten)
        self.stats.owned = len(self.owned)

    async def _serve(self, op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        """A peer's request for a value this proxy owns: answered under the key's lock,
        and only while this proxy's ownership is current."""
        if state not in self.catalog or self.catalog.get(state).state_class != "indirect":
            raise PeerRefusal("UNKNOWN_STATE", f"{state[:64]!r} is not an indirect state here")
        k = (self.catalog.index(state), key)
        self.stats.served += 1
        try:
            if op in ("get", "has"):
                e = self._local(k)
                if e is not None and e.value is None:  # being loaded: the reader waits for it
                    self.stats.collapsed += 1
                    await e.wait(self.load_wait)
                async with self._locks.hold(k):
                    e = self._local(k)
                    if e is None or e.value is None or not await self._current(k, state, key, e):
                        raise PeerRefusal("NOT_FOUND", f"{self.id} has no {state}[{key[:64]}]")
                    self.owned.touch(k)
                    return e.version, e.value if op == "get" else None
            async with self._locks.hold(k):
                got = await self._own_update(k, state, key, op, value)
            return (got.version, got.value) if got else (0, None)
        except CogsError as err:  # the coordinator could not confirm: the reader tries again later
            raise PeerRefusal("UNAVAILABLE", str(err)[:200]) from None

    # -- the reader's side ---------------------------------------------------------------

    async def _peer(self, owner: str, inc: str) -> str | None:
        """The owner's peer address, or None when that owner (incarnation) is gone."""
        known = self._peers.get(owner)
        if known and known[0] == inc:
            return known[1]
        topo = self.coord.topology
        assert topo is not None
        node = topo.node_of(slot(owner))
        try:
            # never more than a heartbeat can hold: anyone with the NF's proxy credentials can SET 300 MB there
            raw = await self.coord.node_client(node).getrange(self.coord.ns.proxy_key(owner), 0, MAX_HEARTBEAT)
        except CALL_ERRORS as e:
            raise from_redis(e, topo.nodes[node].addr) from e
        if len(raw) > MAX_HEARTBEAT:
            raise PeerError(
                f"the heartbeat of owner {owner[:64]!r} is over {MAX_HEARTBEAT} bytes (written outside cogs): not read"
            )
        try:  # anyone with the NF's proxy credentials can write a heartbeat: trust no shape
            info = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):
            info = None
        if not isinstance(info, dict):
            raise PeerError(f"the heartbeat of owner {owner[:64]!r} is unreadable (written outside cogs?)")
        if info.get("inc") != inc or not info.get("peer"):
            self._peers.pop(owner, None)
            return None
        self._peers[owner] = (inc, str(info["peer"]))
        return str(info["peer"])

    async def _forget(self, state: str, key: str, owner: str, inc: str) -> None:
        self.stats.dead_owners += 1
        await self._coordinator(FORGET, state, key, "forget", f"{owner}:{inc}")

    async def retrieve(self, state: str, key: str, load: Loader | None = None) -> bytes | None:
        """The value, from here, a replica or its owner; None when nobody has it.

        With ``load`` (read-through): when nobody has the key this proxy claims it in
        the same coordinator call that looks it up, runs ``load`` and keeps what it
        returns (None: nothing to keep, the claim is given up). Readers of the key on
        any proxy wait for that value meanwhile instead of loading it too."""
        sidx = self.catalog.index(state)
        k = (sidx, key)
        e = self._local(k)
        if e is not None and e.value is not None:
            if self._locks.busy(k):  # a set of it under way here: its outcome first
                async with self._locks.hold(k):
                    pass
                e = self._local(k)
            if e is not None and e.value is not None and await self._current(k, state, key, e):
                self.stats.local_hits += 1
                self.owned.touch(k)
                return e.value
            e = self._local(k)
        if e is not None:
            self.stats.collapsed += 1  # another request here claimed it to load it: wait
            got = await e.wait(self.load_wait)
            if got is not None:
                return got
            if not e.lost:  # given up, or slow: nothing to wait for
                return None if load is None else await load()
            # (the claim was lost: look again, as a reader of the winner)
        replica = self.catalog.get(state).mode == "replica"
        if replica:
            v = self.cache.get(k)
            if v is not MISS:
                return v  # type: ignore[no-any-return]
        self._need_peers(state)
        epoch = self.cache.begin_fetch(k) if replica else -1
        ended = False
        reading = self._reading.setdefault(k, [0, 0])
        reading[0] += 1
        stale: tuple[int, int] | None = None
        try:
            dead: str | None = None
            floor = 0  # the newest version this read has seen named for the key
            for _ in range(3):  # the owner may change under us (death, claim): retry a little
                asked = time.monotonic()  # the coordinator counts the replica's lifetime from no earlier
                if load is None:
                    loc = await self._coordinator(LOCATE, state, key, "locate")
                    if not loc:
                        return None
                else:
                    pending = Entry(None, 0, 0.0, anyio.Event())
                    won, loc = await self._claim(k, state, key, pending, dead, read=True)
                    if won:
                        return await self._load(k, state, key, pending, load)
                owner, inc, pttl = _s(loc[0]), _s(loc[1]), int(loc[3])
                floor = max(floor, int(loc[2]))
                addr = None if owner == self.id else await self._peer(owner, inc)
                if addr is not None:
                    assert self.client is not None
                    try:
                        version, value = await self.client.request(addr, "get", state, key, owner=(owner, inc))
                    except PeerRefusal as r:  # the owner has no value (dropped since, or never had it)
                        if r.code == "UNAVAILABLE":  # it could not confirm it still owns the key
                            raise PeerError(f"owner of {state}[{key[:64]}] could not serve it now: {r}") from None
                        if load is None or r.code != "NOT_FOUND":
                            return None if load is None else await load()  # load, keep nothing: it is owned
                        # a locator pointing at nothing (say a give-up that never reached the
                        # coordinator): take the key over from that owner, as from a dead one
                        self.stats.stale_locators += 1
                        dead = f"{owner}:{inc}"
                        continue
                    except PeerError:
                        self._peers.pop(owner, None)  # ask the registry again: alive, or gone?
                        if await self._peer(owner, inc) is not None:
                            raise
                    else:
                        self.stats.remote_fetches += 1
                        floor = max(floor, reading[1])  # discards that came meanwhile
                        if version < floor:  # older than the locator (or a discard) named: not taken
                            stale = (version, floor)
                            continue
                        left = lifetime(pttl, asked)
                        if replica and value is not None and left is not None:
                            self.cache.end_fetch(k, epoch, value, version, left)
                            ended = True
                        return value
                # an earlier me, or a proxy that died: say so, then fall back
                if load is None:
                    await self._forget(state, key, owner, inc)
                    return None
                self.stats.dead_owners += 1
                dead = f"{owner}:{inc}"  # the next claim replaces it
            if stale is not None:
                raise PeerError(
                    f"{state}[{key[:64]}]: its owner answered version {stale[0]}, older than version {stale[1]} "
                    "its locator (or a discard) named; try again"
                )
            raise PeerError(f"{state}[{key}]: its owner kept changing; try again")
        finally:
            reading[0] -= 1
            if not reading[0]:
                del self._reading[k]
            if replica and not ended:
                self.cache.abort_fetch(k)

    def discarded(self, sidx: int, key: str, version: int) -> None:
        """A discard came (discard link hook): reads of the key under way take nothing older."""
        reading = self._reading.get((sidx, key))
        if reading is not None and version > reading[1]:
            reading[1] = version

    async def _load(self, k: tuple[int, str], state: str, key: str, e: Entry, load: Loader) -> bytes | None:
        """Run ``load`` for a key this proxy claimed; keep its value, or give the key up."""
        kept = False
        try:
            value = await load()
            if value is not None:
                limit = self._max_value(state)
                if len(value) > limit:
                    raise refuse(Oversize, f"value is {len(value)} bytes, limit {limit}", state=state, key=key)
                kept = True
        finally:
            if not kept:
                with anyio.CancelScope(shield=True):  # a claim must not outlive a failed load
                    await self._give_up(k, state, key, e)
        if kept and self.owned.get(k) is e:
            self._loaded(k, state, e, value)
        return value

    async def _give_up(self, k: tuple[int, str], state: str, key: str, e: Entry) -> None:
        if self.owned.get(k) is e:
            del self.owned[k]
        assert e.loaded is not None
        e.loaded.set()
        try:
            await self._publish(state, key, "delete")
        except (NotOwner, CogsError) as err:  # readers sent here find nothing and load for themselves
            where = fields(proxy=self.id, state=state, key=key)
            log.warning("could not give up %s[%s] (claimed to load it): %s", state, key, err, extra=where)

    async def update(self, state: str, key: str, op: str, value: bytes | None) -> bytes | None:
        """set / create / delete, executed by the owner; an absent key is created here."""
        if op not in ("set", "create", "delete"):
            raise refuse(UnknownOp, "indirect states take set, create, delete and get", state=state, op=op)
        if op != "delete":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise refuse(UnknownOp, "an indirect value is bytes", state=state, key=key, op=op)
            value = bytes(value)
            limit = self._max_value(state)
            if len(value) > limit:
                raise refuse(Oversize, f"value is {len(value)} bytes, limit {limit}", state=state, key=key, op=op)
        self._need_peers(state)
        k = (self.catalog.index(state), key)
        async with self._locks.hold(k):
            if self._local(k) is not None:
                try:
                    e = await self._own_update(k, state, key, op, value)
                    return e.value if e else None
                except PeerRefusal as r:
                    if r.code != "NOT_OWNER":
                        raise PeerError(f"{state}[{key[:64]}]: {r}") from None
                    # lost it while the lease had lapsed: the new owner executes it (below)
            self.cache.written(k)  # read-your-writes: no replica here older than this update
            loc: Any = None
            if op == "create":  # mostly of absent keys: claiming first takes one call, not two
                won, loc = await self._claim(k, state, key, Entry(bytes(value or b""), 0, 0.0), None)
                if won:
                    return value
            for _ in range(3):  # the owner may change under us (death, claim): retry a little
                if loc is None:
                    loc = await self._coordinator(LOCATE, state, key, "locate")
                dead = None
                if loc:
                    owner, inc = _s(loc[0]), _s(loc[1])
                    loc = None
                    addr = None if owner == self.id else await self._peer(owner, inc)
                    if addr is not None:
                        try:
                            return await self._remote(addr, (owner, inc), op, state, key, value)
                        except PeerRefusal as r:
                            if r.code not in {"NOT_OWNER", "NOT_FOUND"}:
                                raise PeerError(f"owner of {state}[{key}] refused: {r}") from r
                            continue
                        except PeerError:
                            self._peers.pop(owner, None)
                            if await self._peer(owner, inc) is not None:
                                raise  # alive but unreachable: do not take its key
                    dead = f"{owner}:{inc}"
                    self.stats.dead_owners += 1
                if op == "delete":
                    if dead:
                        await self._coordinator(FORGET, state, key, "forget", dead)
                    return None
                assert value is not None
                won, loc = await self._claim(k, state, key, Entry(value, 0, 0.0), dead)
                if won:
                    return value
            raise PeerError(f"{state}[{key}]: its owner kept changing; try again")

    async def _remote(
        self, addr: str, owner: tuple[str, str], op: str, state: str, key: str, value: bytes | None
    ) -> bytes | None:
        assert self.client is not None
        self.stats.remote_fetches += 1
        _, got = await self.client.request(addr, op, state, key, value, owner=owner)
        return got

    async def _claim(
        self, k: tuple[int, str], state: str, key: str, e: Entry, dead: str | None, read: bool = False
    ) -> tuple[bool, Any]:
        """(True, None) if this proxy now owns the key; else (False, the owner's locator).
        ``read``: the caller reads the owner's value when it loses (a holder, in replica mode)."""
        # the entry is in place before the claim: a reader sent here by the new locator finds it
        self.owned[k] = e
        arg: dict[str, Any] = {"inc": self.inc}
        if dead:
            arg["dead"] = dead
        if read:
            arg["read"] = 1
        try:
            r = await self._coordinator(CLAIM, state, key, "claim", arg)
        except BaseException:
            self._withdraw(k, e)
            raise
        if int(r[0]) != 1:
            self._withdraw(k, e)
            self.stats.claims_lost += 1
            return False, r[1:]  # {owner, inc, version, pttl}, as locate gives it
        self.stats.claims_won += 1
        pttl = int(r[2])
        e.version = int(r[1])
        e.expires = time.monotonic() + pttl / 1000 if pttl > 0 else 0.0
        self._evict()
        return True, None

    def _withdraw(self, k: tuple[int, str], e: Entry) -> None:
        """The entry put in place for a claim that did not happen."""
        if self.owned.get(k) is e:
            del self.owned[k]
        if e.loaded is not None:
            e.lost = True
            e.loaded.set()  # requests here waiting for it look again

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.server is not None:
            await self.server.aclose()


def _forgotten(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:  # readers sent here load for themselves
        log.warning("could not drop the locator of an evicted value: %s", fut.exception())


def _s(v: Any) -> str:
    # a locator's owner is what the state reference table holds: anyone with the NF's
    # proxy credentials can write bytes that are no proxy id there (no owner: dead)
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


Runner = Callable[[], Awaitable[Any]]
#: loads an absent value (read-through): its bytes, or None for nothing to keep
Loader = Callable[[], Awaitable[bytes | None]]
