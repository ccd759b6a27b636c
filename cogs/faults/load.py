"""The load generator of a fault run: StateProxy processes on middlebox hosts, each op
in a history file (``python -m cogs.faults.load CONFIG.json``; SIGTERM ends it).

One process per host holds one proxy per mode (default, durable), each running:

* **trigger updates** (``aupdate(COUNT, key, "add", 1)``) at a steady rate over the
  keys of the current *generation* (new keys every ``generation_s``, the same on every
  host: the generation comes from the machine's monotonic clock), so keys keep crossing
  the alert threshold during a fault; every ``flush_every_s`` a ``flush()`` whose op
  (``add``) lists the updates it covers;
* **sync increments** (``syn_up(REG, key, "add", 1)``, ``inc``), its result the new
  value, on a direct state in replica mode, of this host's share of its keys;
* **replica reads** (``syn_retrieve(REG, key)``, ``read``) of all of them: the other
  hosts' keys change only by their increments, whose discards must reach this proxy;
* on the default proxy, **indirect values** (``oset``/``oget``): each set writes a
  token naming its op, so a read names the write it saw; a read that finds nothing
  takes the key over with a set (as a cache fetches from its origin).

Errors are classified where they are caught: an :class:`OpError` (refused, state left
untouched) is ``fail``; anything else (DeliveryTimeout, a lost connection, a peer that
does not answer) is ``info``: it may have been applied, or may be later. What the
proxies report to ``on_error`` (AckedLost above all) becomes an event line.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio

from cogs import runtime
from cogs.errors import AckedLost, CogsError, OpError
from cogs.keys import escape, slot
from cogs.proxy import Backpressure, StateProxy
from cogs.settings import load_settings

COUNT, REG, OBJ = "faults_count", "faults_reg", "faults_objects"
MODES = ("default", "durable")
TICK_S = 0.05


@dataclass(frozen=True)
class LoadConfig:
    """What one load process does (JSON in a file; every field has a default but the first three)."""

    host: str  # this process's name in the history
    ns: str  # the run's key namespace: runs never see each other's keys
    out: str  # the history file (JSON lines, appended)
    modes: tuple[str, ...] = MODES
    count_keys: int = 4  # trigger keys per generation
    generation_s: float = 2.0
    update_rate: float = 200.0  # trigger updates per second per proxy
    flush_every_s: float = 0.25
    reg_keys: int = 6
    #: this host's place among the load hosts: it increments the replicated keys j with
    #: j % hosts == index and reads them all, so most of its replicas are refreshed only
    #: by discards (its own writes would refresh them too)
    index: int = 0
    hosts: int = 1
    inc_tasks: int = 2
    inc_pause_s: float = 0.05
    read_tasks: int = 2
    read_pause_s: float = 0.03
    obj_keys: int = 4
    obj_tasks: int = 1
    obj_pause_s: float = 0.08
    owner: bool = False  # set every indirect value before saying ready (this host owns them)
    #: host:port of a primary: every key is one it serves when the load starts (the same keys
    #: on every host), so all the load goes to one shard; "": keys anywhere
    only_node: str = ""
    delivery_timeout_s: float = 5.0
    peer_timeout_s: float = 2.0
    heartbeat_ttl_s: float = 6.0
    peer_secret: str = "cogs-faults"
    #: after SIGTERM, how long ops under way may take to end before the process stops waiting
    drain_s: float = 20.0
    seed: int = 1

    @classmethod
    def from_json(cls, text: str) -> LoadConfig:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("a load config is a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown load config field(s): {', '.join(unknown)}")
        if not 0 <= int(raw.get("index", 0)) < int(raw.get("hosts", 1)) <= int(raw.get("reg_keys", 6)):
            raise ValueError("need 0 <= index < hosts <= reg_keys")
        if "modes" in raw:
            raw["modes"] = tuple(raw["modes"])
            if not set(raw["modes"]) <= set(MODES):
                raise ValueError(f"modes must be among {', '.join(MODES)}")
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


class Recorder:
    """Appends history lines (cogs.faults.history's format); written out every half second."""

    def __init__(self, path: str, proc: str) -> None:
        self.proc = proc
        self._f: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._n = 0

    def _write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, separators=(",", ":"), default=_jsonable) + "\n")

    def invoke(self, mode: str, kind: str, state: str, key: str = "", counts: dict[str, int] | None = None) -> int:
        self._n += 1
        row: dict[str, Any] = {"i": self._n, "t": time.monotonic(), "p": self.proc, "m": mode, "f": kind, "s": state}
        if counts is not None:
            row["n"] = counts
        else:
            row["k"] = key
        self._write(row)
        return self._n

    def done(self, op: int, result: str, value: Any = None, error: BaseException | None = None) -> None:
        row: dict[str, Any] = {"c": op, "t": time.monotonic(), "p": self.proc, "r": result}
        if value is not None:
            row["v"] = value
        if error is not None:
            row["e"] = f"{type(error).__name__}: {error}"[:300]
        self._write(row)

    def event(self, ev: str, **kw: Any) -> None:
        self._write({"ev": ev, "t": time.monotonic(), "p": self.proc, **kw})

    def token(self, op: int) -> str:
        return f"{self.proc}#{op}"

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _result(err: BaseException) -> str:
    """fail: refused for sure, nothing applied; info: anything else (outcome unknown)."""
    return "fail" if isinstance(err, OpError) else "info"


class Load:
    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.rec = Recorder(cfg.out, cfg.host)
        self.stop = anyio.Event()
        self.rng = random.Random(f"{cfg.seed}-{cfg.host}")
        self.slots: frozenset[int] = frozenset()  # only_node's slots
        self._names: dict[str, list[str]] = {}

    def keys(self, base: str, n: int) -> list[str]:
        """``n`` keys ``base.j`` (only those only_node serves, if given): every host picks
        the same ones, so hosts update and read each other's keys."""
        got = self._names.get(base)
        if got is None:
            got, j = [], 0
            while len(got) < n:
                k = f"{base}.{j}"
                j += 1
                if not self.slots or slot(escape(k)) in self.slots:
                    got.append(k)
            if len(self._names) > 64:
                self._names.clear()
            self._names[base] = got
        return got

    async def _op(
        self, op: int, call: Awaitable[Any], kind: str, decode: Callable[[Any], Any] = lambda v: v
    ) -> tuple[bool, Any]:
        """Await ``call`` and record its outcome: (succeeded, value)."""
        try:
            value = await call
        except Exception as e:  # every outcome goes in the history; a non-cogs error is a bug worth a trace
            self.rec.done(op, "info" if kind == "oset" else _result(e), error=e)
            if not isinstance(e, CogsError):
                self.rec.event("unexpected", error=traceback.format_exc()[-1500:])
            return False, None
        self.rec.done(op, "ok", decode(value))
        return True, value

    def _on_error(self, mode: str) -> Callable[[CogsError, Any], None]:
        def hook(err: CogsError, _packet: Any) -> None:
            if isinstance(err, AckedLost):
                msg = str(err)[:300]
                self.rec.event("acked_lost", m=mode, node=err.node, batches=err.batches, ops=err.ops, msg=msg)
            else:
                self.rec.event("error", m=mode, type=type(err).__name__, msg=str(err)[:300])

        return hook

    # -- the loads ---------------------------------------------------------------------------

    async def updates(self, p: StateProxy, mode: str) -> None:
        cfg, rec = self.cfg, self.rec
        pending: Counter[str] = Counter()
        last_flush, carry, j = time.monotonic(), 0.0, 0
        while True:
            stopping = self.stop.is_set()
            now = time.monotonic()
            if pending and (stopping or now - last_flush >= cfg.flush_every_s):
                op = rec.invoke(mode, "add", COUNT, counts=dict(pending))
                pending.clear()
                await self._op(op, p.flush(), "add")
                last_flush = time.monotonic()
            if stopping:
                return
            keys = self.keys(f"{cfg.ns}|{mode}|c{int(now / cfg.generation_s)}", cfg.count_keys)
            carry += cfg.update_rate * TICK_S
            for _ in range(int(carry)):
                key = keys[j % cfg.count_keys]
                j += 1
                try:
                    await p.aupdate(COUNT, key, "add", 1)
                except Backpressure as e:  # no room within the delivery bound: not issued, not counted
                    rec.event("error", m=mode, type="Backpressure", msg=str(e)[:300])
                    break
                pending[key] += 1
            carry -= int(carry)
            await anyio.sleep(TICK_S)

    async def increments(self, p: StateProxy, mode: str) -> None:
        cfg = self.cfg
        while not self.stop.is_set():
            mine = self.keys(f"{cfg.ns}|{mode}|r", cfg.reg_keys)[cfg.index % cfg.hosts :: cfg.hosts]
            key = self.rng.choice(mine)
            op = self.rec.invoke(mode, "inc", REG, key)
            await self._op(op, p.syn_up(REG, key, "add", 1), "inc")
            await anyio.sleep(cfg.inc_pause_s)

    async def reads(self, p: StateProxy, mode: str) -> None:
        cfg = self.cfg
        while not self.stop.is_set():
            key = self.rng.choice(self.keys(f"{cfg.ns}|{mode}|r", cfg.reg_keys))
            op = self.rec.invoke(mode, "read", REG, key)
            await self._op(op, p.syn_retrieve(REG, key), "read")
            await anyio.sleep(cfg.read_pause_s)

    async def set_object(self, p: StateProxy, mode: str, key: str) -> None:
        op = self.rec.invoke(mode, "oset", OBJ, key)
        await self._op(op, p.syn_up(OBJ, key, "set", self.rec.token(op).encode()), "oset", _text)

    async def objects(self, p: StateProxy, mode: str) -> None:
        cfg = self.cfg
        while not self.stop.is_set():
            key = self.rng.choice(self.keys(f"{cfg.ns}|o", cfg.obj_keys))
            if self.rng.random() < 0.3:
                await self.set_object(p, mode, key)
            else:
                op = self.rec.invoke(mode, "oget", OBJ, key)
                ok, got = await self._op(op, p.syn_retrieve(OBJ, key), "oget", _text)
                if ok and got is None:  # nobody has it: take it over, as a cache fetches from its origin
                    await self.set_object(p, mode, key)
            await anyio.sleep(cfg.obj_pause_s)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.cfg
        settings = load_settings(delivery_timeout_s=cfg.delivery_timeout_s, peer_timeout_s=cfg.peer_timeout_s)
        proxies: dict[str, StateProxy] = {}
        self.rec.event("start", config=dataclasses.asdict(cfg))
        try:
            for mode in cfg.modes:
                p = StateProxy(
                    settings=settings, durable=mode == "durable", proxy_id=f"{cfg.host}-{mode}-{cfg.ns}",
                    heartbeat_ttl_s=cfg.heartbeat_ttl_s, on_error=self._on_error(mode),
                    peer_secret=cfg.peer_secret if mode == "default" else None,
                )  # fmt: skip
                await p.__aenter__()
                proxies[mode] = p
            if cfg.only_node:
                self.slots = _slots_of(next(iter(proxies.values())), cfg.only_node)
            if cfg.owner and "default" in proxies:
                for key in self.keys(f"{cfg.ns}|o", cfg.obj_keys):
                    await self.set_object(proxies["default"], "default", key)
            self.rec.flush()
            print(json.dumps({"ready": cfg.host, "proxies": {m: p.id for m, p in proxies.items()}}), flush=True)
            await self._work(proxies)
        finally:
            with anyio.CancelScope(shield=True):
                stats = {}
                for mode, p in proxies.items():
                    stats[mode] = dataclasses.asdict(p.statistics())
                    await p.aclose()
                self.rec.event("end", stats=stats)
                self.rec.close()

    async def _work(self, proxies: dict[str, StateProxy]) -> None:
        cfg = self.cfg
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals)
            tg.start_soon(self._write_out)
            work: list[tuple[Callable[[StateProxy, str], Coroutine[Any, Any, None]], StateProxy, str]] = []
            for mode, p in proxies.items():
                work.append((self.updates, p, mode))
                work += [(self.increments, p, mode)] * cfg.inc_tasks + [(self.reads, p, mode)] * cfg.read_tasks
                if mode == "default":
                    work += [(self.objects, p, mode)] * cfg.obj_tasks
            async with anyio.create_task_group() as load:
                for fn, p, mode in work:
                    load.start_soon(fn, p, mode)
                await self.stop.wait()
                # ops under way end within their bounds: wait for them, but not forever
                load.cancel_scope.deadline = anyio.current_time() + cfg.drain_s
            tg.cancel_scope.cancel()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self.rec.event("stop")
                self.stop.set()
                return

    async def _write_out(self) -> None:
        while True:
            await anyio.sleep(0.5)
            self.rec.flush()


def _slots_of(p: StateProxy, addr: str) -> frozenset[int]:
    topo = p.coord.topology
    assert topo is not None
    mine = [i for i, n in enumerate(topo.nodes) if n.addr == addr]
    if not mine:
        raise CogsError(f"only_node {addr} is not a primary (primaries: {', '.join(n.addr for n in topo.nodes)})")
    return frozenset(s for s in range(len(topo.owner)) if topo.owner[s] == mine[0])


def _jsonable(v: Any) -> Any:
    return v.decode(errors="replace") if isinstance(v, bytes) else repr(v)


def _text(v: Any) -> Any:
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cogs.faults.load CONFIG.json", file=sys.stderr)
        return 2
    try:
        cfg = LoadConfig.from_json(Path(args[0]).read_text())
    except (OSError, ValueError, TypeError) as e:
        print(f"error: load config {args[0]}: {e}", file=sys.stderr)
        return 2
    try:
        runtime.run(Load(cfg).run)
    except CogsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
