"""Moving hash slots between primaries of a running cluster, as ``redis-cli --cluster
reshard`` does, in Python (no redis-tools needed), while proxies keep working.

One slot moves in four steps (Redis Cluster's live resharding protocol):

1. the target marks it ``IMPORTING`` from the source, the source ``MIGRATING`` to
   the target: from now on the source refuses every command on a key of the slot it
   does not hold (``ASK``), so no key is created there any more;
2. ``CLUSTER GETKEYSINSLOT`` lists the source's keys and ``MIGRATE ... KEYS`` moves
   them in batches (each key atomically; the source runs nothing else meanwhile);
   the keys of one hash tag travel in one ``MIGRATE``, so the keys of one cogs state
   entry (value, version, holders, alert marker) never sit on two nodes;
3. when the source holds none, ``SETSLOT NODE`` on the target, then the source, then
   every other primary (so clients are redirected at once).

Several slots go through each step together (a chunk, pipelined) to save round
trips; a chunk is in flight for milliseconds. A cogs op on a key of a slot being
moved fails alone with ``MOVED`` and is re-sent by its proxy until the move is done
(cogs/coordinator/reroute.py). A donor's lowest slot moves last: it names the
proxies' ordered channel to that node (its alert stream and exactly-once records).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cogs.errors import ClusterError
from cogs.keys import SLOTS

Progress = Callable[[str], None]
Addr = tuple[str, int]

CHUNK_SLOTS = 32  # slots moved together (one pipelined round trip per step)
MIGRATE_KEYS = 200  # keys per MIGRATE: bounds how long the source stalls
MIGRATE_TIMEOUT_MS = 10_000


def _quiet(_: str) -> None:
    pass


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class Member:
    """One node as ``CLUSTER NODES`` shows it."""

    id: str
    host: str
    port: int
    primary: bool
    #: a replica's primary (None for primaries)
    master: str | None
    slots: frozenset[int]
    #: down or unreachable as the reporting node sees it
    failed: bool = False
    #: slot -> node id, for slots half moved (as the reporting node sees it)
    migrating: dict[int, str] = field(default_factory=dict)
    importing: dict[int, str] = field(default_factory=dict)

    @property
    def addr(self) -> Addr:
        return (self.host, self.port)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def parse_nodes(text: str) -> list[Member]:
    """Parse a ``CLUSTER NODES`` reply."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        hostport = f[1].split("@")[0].split(",")[0]
        host, _, port = hostport.rpartition(":")
        flags = set(f[2].split(","))
        slots: set[int] = set()
        migrating: dict[int, str] = {}
        importing: dict[int, str] = {}
        for s in f[8:]:
            if s.startswith("["):
                body = s[1:-1]
                if "->-" in body:
                    a, b = body.split("->-")
                    migrating[int(a)] = b
                elif "-<-" in body:
                    a, b = body.split("-<-")
                    importing[int(a)] = b
            elif "-" in s:
                a, b = s.split("-")
                slots.update(range(int(a), int(b) + 1))
            else:
                slots.add(int(s))
        out.append(
            Member(
                id=f[0], host=host, port=int(port or 0), primary="master" in flags,
                master=None if f[3] == "-" else f[3], slots=frozenset(slots),
                failed=bool(flags & {"fail", "fail?", "noaddr", "handshake"}),
                migrating=migrating, importing=importing,
            )
        )  # fmt: skip
    return out


def ranges(slots: Iterable[int]) -> str:
    """``0-99,200``: a slot set, compact."""
    out, run = [], None
    for s in sorted(slots):
        if run and s == run[1] + 1:
            run[1] = s
        else:
            if run:
                out.append(run)
            run = [s, s]
    if run:
        out.append(run)
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in out)


def hash_tag(key: bytes) -> bytes:
    """The part of a key Redis hashes: the first non-empty ``{...}``, else the key."""
    i = key.find(b"{")
    if i >= 0:
        j = key.find(b"}", i + 1)
        if j > i + 1:
            return key[i + 1 : j]
    return key


class Admin:
    """Synchronous admin connections to the nodes (with the deployment's credentials
    and TLS), cached per address."""

    def __init__(self, client_kw: dict[str, Any] | None = None, *, timeout: float = 10.0) -> None:
        self.kw = dict(client_kw or {})
        self.timeout = timeout
        self._clients: dict[Addr, redis.Redis] = {}

    def __call__(self, addr: Addr) -> redis.Redis:
        c = self._clients.get(addr)
        if c is None:
            c = self._clients[addr] = self._make(addr, self.kw)
        return c

    def _make(self, addr: Addr, kw: dict[str, Any]) -> redis.Redis:
        # no client-side retries: a retried MIGRATE or SETSLOT could act twice
        return redis.Redis(
            host=addr[0], port=addr[1], socket_timeout=self.timeout, socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0), **kw,
        )  # fmt: skip

    def drop(self, addr: Addr) -> None:
        c = self._clients.pop(addr, None)
        if c is not None:
            c.close()

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def members(self, addr: Addr) -> list[Member]:
        return parse_nodes(_s(self(addr).execute_command("CLUSTER", "NODES")))

    def migrate_auth(self) -> list[str]:
        """MIGRATE's credentials for the target: the admin's own."""
        user, pw = self.kw.get("username"), self.kw.get("password")
        if pw and user:
            return ["AUTH2", str(user), str(pw)]
        return ["AUTH", str(pw)] if pw else []


@dataclass
class MoveStats:
    slots: int = 0
    keys: int = 0
    seconds: float = 0.0


class Mover:
    """Moves slots from one primary to another (see the module's docstring)."""

    def __init__(self, admin: Admin, *, progress: Progress = _quiet, chunk: int = CHUNK_SLOTS) -> None:
        self.admin, self.progress, self.chunk = admin, progress, chunk
        self.stats = MoveStats()
        #: node id -> what progress lines call it (the deployment's node names)
        self.names: dict[str, str] = {}

    def name(self, m: Member) -> str:
        return self.names.get(m.id, m.name)

    def move(self, src: Member, dst: Member, slots: Sequence[int], others: Sequence[Member] = ()) -> None:
        """Move ``slots`` (in this order) from ``src`` to ``dst``; ``others``: the other
        primaries, told the new owner at once."""
        t0, done, keys0 = time.monotonic(), 0, self.stats.keys
        last = t0
        for i in range(0, len(slots), self.chunk):
            part = list(slots[i : i + self.chunk])
            self._move_chunk(src, dst, part, others)
            done += len(part)
            now = time.monotonic()
            if now - last > 2 or done == len(slots):
                last = now
                self.progress(
                    f"  {self.name(src)} -> {self.name(dst)}: {done}/{len(slots)} slots, "
                    f"{self.stats.keys - keys0:,} keys ({now - t0:.1f} s)"
                )
        self.stats.slots += len(slots)
        self.stats.seconds += time.monotonic() - t0

    def _move_chunk(self, src: Member, dst: Member, slots: list[int], others: Sequence[Member]) -> None:
        s_c, d_c = self.admin(src.addr), self.admin(dst.addr)
        _pipe(d_c, [("CLUSTER", "SETSLOT", s, "IMPORTING", src.id) for s in slots], f"{dst.name} importing")
        _pipe(s_c, [("CLUSTER", "SETSLOT", s, "MIGRATING", dst.id) for s in slots], f"{src.name} migrating")
        self._drain(src, dst, slots)
        for c, where in ((d_c, dst.name), (s_c, src.name)):
            _pipe(c, [("CLUSTER", "SETSLOT", s, "NODE", dst.id) for s in slots], f"{where} setslot node")
        for o in others:  # only saves them a redirect: a node down now learns it by gossip
            try:
                _pipe(self.admin(o.addr), [("CLUSTER", "SETSLOT", s, "NODE", dst.id) for s in slots], o.name)
            except ClusterError:
                self.admin.drop(o.addr)

    def resume(self, src: Member, dst: Member, slot: int) -> None:
        """Finish moving ``slot``, which ``src`` shows as migrating to ``dst`` (an earlier
        run was cut off: the target may already own it)."""
        d_c = self.admin(dst.addr)
        try:
            d_c.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.id)
        except redis.ResponseError as e:
            if "already the owner" not in str(e):
                raise ClusterError(f"{dst.name}: importing slot {slot}: {e}") from e
        self._drain(src, dst, [slot])
        for c, where in ((d_c, dst.name), (self.admin(src.addr), src.name)):
            _pipe(c, [("CLUSTER", "SETSLOT", slot, "NODE", dst.id)], f"{where} setslot node")
        self.stats.slots += 1

    def _drain(self, src: Member, dst: Member, slots: list[int]) -> None:
        """MIGRATE every key of ``slots`` from ``src`` to ``dst``, a hash tag's keys together."""
        c = self.admin(src.addr)
        left = list(slots)
        for _ in range(1000):
            counts = _pipe(c, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in left], f"{src.name} countkeysinslot")
            full = [(s, int(n)) for s, n in zip(left, counts, strict=True) if int(n)]
            left = [s for s, _ in full]
            if not left:
                return
            lists = _pipe(c, [("CLUSTER", "GETKEYSINSLOT", s, n) for s, n in full], f"{src.name} getkeysinslot")
            for keys in lists:  # MIGRATE ... KEYS takes the keys of one slot
                groups: dict[bytes, list[bytes]] = {}
                for k in keys:
                    groups.setdefault(hash_tag(k), []).append(k)
                for batch in _batches(groups.values(), MIGRATE_KEYS):
                    self._migrate(src, dst, batch)
        raise ClusterError(f"{src.name} still holds keys of slots {ranges(left)} after 1000 MIGRATE rounds")

    def _migrate(self, src: Member, dst: Member, keys: list[bytes]) -> None:
        argv = [
            "MIGRATE", dst.host, dst.port, "", 0, MIGRATE_TIMEOUT_MS, *self.admin.migrate_auth(), "KEYS", *keys,
        ]  # fmt: skip
        for attempt in range(5):
            try:
                self.admin(src.addr).execute_command(*argv)
                self.stats.keys += len(keys)
                return
            except redis.ResponseError as e:
                msg = str(e)
                if attempt < 4 and (msg.startswith("IOERR") or "CLUSTERDOWN" in msg or "TRYAGAIN" in msg):
                    time.sleep(0.1 * (attempt + 1))
                    continue
                hint = (
                    " (the target already has such a key: an earlier move was cut off? check both nodes)"
                    if "BUSYKEY" in msg
                    else ""
                )
                raise ClusterError(f"MIGRATE of {len(keys)} key(s) {src.name} -> {dst.name} failed: {msg}{hint}") from e
            except (redis.ConnectionError, redis.TimeoutError) as e:
                raise ClusterError(f"MIGRATE {src.name} -> {dst.name}: {e}") from e


def _batches(groups: Iterable[list[bytes]], size: int) -> Iterable[list[bytes]]:
    batch: list[bytes] = []
    for g in groups:
        if batch and len(batch) + len(g) > size:
            yield batch
            batch = []
        batch.extend(g)
    if batch:
        yield batch


def _pipe(c: redis.Redis, cmds: Sequence[tuple[Any, ...]], what: str) -> list[Any]:
    if not cmds:
        return []
    p = c.pipeline(transaction=False)
    for cmd in cmds:
        p.execute_command(*cmd)
    try:
        replies = p.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise ClusterError(f"{what}: {e}") from e
    for cmd, r in zip(cmds, replies, strict=True):
        if isinstance(r, Exception):
            raise ClusterError(f"{what}: {' '.join(map(str, cmd))}: {r}")
    return list(replies)


def plan(owners: dict[str, frozenset[int]], targets: Sequence[str]) -> list[tuple[str, str, list[int]]]:
    """The moves (source id, target id, slots in order) that leave the slots spread
    evenly over ``targets`` (primary ids), moving as few as possible: primaries not in
    ``targets`` give all of theirs (their lowest slot last), those above their share
    give their highest ones."""
    if not targets:
        raise ClusterError("no primary to hold the slots")
    have = {t: len(owners.get(t, ())) for t in targets}
    # the larger shares go to those holding most already (fewer moves)
    order = sorted(targets, key=lambda t: -have[t])
    base, extra = divmod(SLOTS, len(targets))
    quota = {t: base + (1 if i < extra else 0) for i, t in enumerate(order)}
    gives: list[tuple[str, list[int]]] = []
    for nid, slots in sorted(owners.items()):
        mine = sorted(slots)
        if nid not in quota:
            if mine:
                gives.append((nid, mine[1:] + mine[:1]))
        elif len(mine) > quota[nid]:
            gives.append((nid, mine[quota[nid] :]))
    need = [(t, quota[t] - have[t]) for t in targets if quota[t] > have[t]]
    moves: list[tuple[str, str, list[int]]] = []
    ni = 0
    for src, giving in gives:
        i = 0
        while i < len(giving):
            if ni >= len(need):
                raise ClusterError("slot plan does not add up (a bug)")
            dst, n = need[ni]
            take = giving[i : i + n]
            moves.append((src, dst, take))
            i += len(take)
            if len(take) == n:
                ni += 1
            else:
                need[ni] = (dst, n - len(take))
    return moves


def wait(what: str, test: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if test():
                return
        except (redis.RedisError, OSError, ClusterError) as e:
            last = e
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last})" if last else ""))
        time.sleep(0.1)
