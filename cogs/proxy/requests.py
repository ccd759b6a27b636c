"""The request table: ops someone waits for, and the packet buffer table.

A request (:class:`Req`) is a sync or async op on its way to the coordinator. Its
waiters are futures (sync callers) or ``(callback, packet, on_fail)`` triples (the
paper's async ops: the packet waits here, in the packet buffer table, keyed by state
key, until its state is back). Reads of one key already queued or in flight are
shared (one round trip answers all of them), as are entry reads (portmap lookups of
one flow). This module owns all of that: the batcher only hands replies and failures
in, in the order the coordinator gave them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cogs.errors import CogsError, bad_reply
from cogs.keys import escape
from cogs.protocol import Mode
from cogs.proxy.cache import ReplicaCache

log = logging.getLogger("cogs.proxy")
Callback = Callable[[Any, Any], Any]
ErrorCallback = Callable[[CogsError, Any], Any]
Key = tuple[int, str]  # (state index, key)


class Req:
    """One op that someone waits for (or a re-routed one nobody waits for)."""

    __slots__ = (
        "arg", "born", "cache_key", "decode", "done", "ekey", "epoch", "key", "mode", "moved_at", "op", "sidx",
        "state", "waiters",
    )  # fmt: skip

    def __init__(
        self,
        mode: int,
        state: str,
        sidx: int,
        key: str,
        op: str,
        arg: Any,
        decode: Callable[[Any], Any] | None,
    ) -> None:
        self.mode, self.state, self.sidx, self.key, self.op, self.arg = mode, state, sidx, key, op, arg
        self.decode = decode
        self.ekey = escape(key)
        self.waiters: list[Any] = []  # asyncio futures, or (callback, packet, on_fail) triples
        #: the replica cache's epoch when a replica fetch was sent (-1: not cached)
        self.epoch = -1
        #: an entry op (EntryOps.syn, entries.py): where its value is cached, if anywhere
        self.cache_key: Key | None = None
        #: when the coordinator first answered MOVED/ASK for it (monotonic s; 0: never)
        self.moved_at = 0.0
        #: answered (resolved or failed): a late reply of a re-sent batch finds nothing to do
        self.done = False
        #: when it was issued (monotonic s): its waiters are answered within the delivery bound
        self.born = time.monotonic()


@dataclass(frozen=True)
class RequestStatistics:
    #: packets waiting in the packet buffer table for their state
    pending_packets: int
    #: state callbacks that raised (logged, rate-limited; the other packets went on)
    callback_errors: int


class RequestTable:
    def __init__(self, cache: ReplicaCache, replica_whole: dict[str, str], on_error: ErrorCallback) -> None:
        self.cache = cache
        #: replica-mode direct states whose whole-state read is cached -> that read's op
        self.replica_whole = replica_whole
        self.on_error = on_error
        #: reads anyone may join: (state index, key) -> {op: queued or in-flight Req}
        self.reads: dict[Key, dict[str, Req]] = {}
        #: entry ops in flight, shared: (state index, entry) -> Req
        self.entry_reads: dict[Key, Req] = {}
        #: the packet buffer table: packets waiting per state key (counts)
        self.packets: dict[Key, int] = {}
        self.npackets = 0
        self.callback_errors = 0

    def statistics(self) -> RequestStatistics:
        return RequestStatistics(self.npackets, self.callback_errors)

    # -- sharing ---------------------------------------------------------------------------

    def shared_read(self, sidx: int, key: str, op: str) -> Req | None:
        got = self.reads.get((sidx, key))
        return got.get(op) if got is not None else None

    def share(self, req: Req) -> None:
        """Later reads of the same key and op join ``req``."""
        self.reads.setdefault((req.sidx, req.key), {})[req.op] = req

    def written(self, sidx: int, key: str) -> None:
        """An update of the key was queued: reads queued later must see it (no joining
        an older read), and no replica older than it may be served or cached."""
        self.reads.pop((sidx, key), None)
        self.cache.written((sidx, key))

    def waiting(self, sidx: int, key: str) -> bool:
        """Packets of this key still wait: a replica hit must not overtake them."""
        return (sidx, key) in self.packets

    # -- holding -----------------------------------------------------------------------------

    def hold(self, req: Req, callback: Callback, packet: Any, on_fail: ErrorCallback | None = None) -> None:
        """Park ``packet`` until ``req`` is answered: ``callback(value, packet)``."""
        req.waiters.append((callback, packet, on_fail))
        self.npackets += 1
        if req.cache_key is None:  # per key: a replica hit must not overtake these (entry ops cache per entry)
            k = (req.sidx, req.key)
            self.packets[k] = self.packets.get(k, 0) + 1

    def future(self, req: Req) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        req.waiters.append(fut)
        return fut

    def _release(self, req: Req) -> None:
        k = (req.sidx, req.key)
        for w in req.waiters:
            if not isinstance(w, asyncio.Future):
                self.npackets -= 1
                if req.cache_key is not None:
                    continue
                n = self.packets.get(k, 1) - 1
                if n:
                    self.packets[k] = n
                else:
                    self.packets.pop(k, None)

    def _unshare(self, req: Req) -> None:
        reads = self.reads.get((req.sidx, req.key))
        if reads is not None and reads.get(req.op) is req:
            del reads[req.op]
            if not reads:
                del self.reads[(req.sidx, req.key)]
        ck = req.cache_key
        if ck is not None and self.entry_reads.get(ck) is req:
            del self.entry_reads[ck]

    # -- answers ------------------------------------------------------------------------------

    def resolve(self, req: Req, raw: Any) -> None:
        """A reply for a request: decode, cache a replica, wake the waiters in order. A
        reply that cannot be decoded fails the request alone (:class:`BadReply`): the
        batch's other ops and the send loop go on."""
        if req.done:
            return
        try:
            value = self._decoded(req, raw)
        except Exception as e:  # a value written outside cogs: this op fails, nothing else does
            if req.mode == Mode.UPDATE_GET:
                self.cache.written((req.sidx, req.key))  # applied: no older replica may stay
            self.fail(req, bad_reply(e, raw, state=req.state, key=req.key, op=req.op))
            return
        req.done = True
        self._unshare(req)
        self._release(req)
        for w in req.waiters:
            if isinstance(w, asyncio.Future):
                if not w.done():
                    w.set_result(value)
            else:
                self.call(w[0], value, w[1])

    def _decoded(self, req: Req, raw: Any) -> Any:
        """The reply as its state's type, cached as a replica where it is one; raises
        (and caches nothing) when the reply cannot be read as that type."""
        decode = req.decode or _same
        ck = req.cache_key
        if ck is not None:  # an entry op: {value or false, version, idle ms left}
            value = decode(raw[0] if raw[0] is not False else None)
            if req.epoch < 0:
                pass  # not cacheable (singleton mode)
            elif value is None:
                self.cache.abort_fetch(ck)
            else:  # half the idle time: a busy entry is re-read, which keeps it alive
                left = int(raw[2])
                half = lifetime(left // 2 if left > 0 else -1, req.born)
                if half is None:
                    self.cache.abort_fetch(ck)
                else:
                    self.cache.end_fetch(ck, req.epoch, value, int(raw[1]), half)
        elif req.mode == Mode.RETRIEVE_REPLICA:
            value = decode(raw[0] if raw[0] is not False else None)
            ttl = lifetime(int(raw[2]), req.born)
            if ttl is None:
                self.cache.abort_fetch((req.sidx, req.key))
            else:
                self.cache.end_fetch((req.sidx, req.key), req.epoch, value, int(raw[1]), ttl)
        elif req.mode == Mode.UPDATE_GET and isinstance(raw, list) and req.state in self.replica_whole:
            value = decode(raw[0] if raw[0] is not False else None)
            self.cache.discard((req.sidx, req.key), int(raw[1]))  # read-your-writes: nothing older stays
        else:
            value = decode(None if raw is False else raw)
        return value

    def fail(self, req: Req, err: CogsError) -> None:
        """A request the coordinator refused (or that could not be delivered in time)."""
        if req.done:
            return
        req.done = True
        self._unshare(req)
        ck = req.cache_key
        if ck is not None:
            if req.epoch >= 0:
                self.cache.abort_fetch(ck)
        elif req.mode == Mode.RETRIEVE_REPLICA:
            self.cache.abort_fetch((req.sidx, req.key))
        self._release(req)
        waiters = req.waiters
        if not waiters:
            self.on_error(err, None)
        for w in waiters:
            if isinstance(w, asyncio.Future):
                if not w.done():
                    w.set_exception(err)
            elif w[2] is not None:
                w[2](err, w[1])
            else:
                self.on_error(err, w[1])

    def call(self, callback: Callback, value: Any, packet: Any) -> None:
        try:
            callback(value, packet)
        except Exception:  # a broken callback must not stall the other packets
            self.callback_errors += 1
            n = self.callback_errors
            if n <= 10 or n % 1000 == 0:  # a callback broken for every packet: not a line per packet
                log.exception("state callback failed (%d so far)", n)


def lifetime(pttl: int, since: float) -> int | None:
    """A replica's time left (ms) as the coordinator gave it, counted from ``since``
    (when the request was issued: the coordinator counted from no earlier), so it
    never outlives the holder record; None when that is already past. A pttl <= 0
    (no expiry) stays as it is."""
    if pttl <= 0:
        return pttl
    left = pttl - int((time.monotonic() - since) * 1000)
    return left if left > 0 else None


def _same(v: Any) -> Any:
    return v
