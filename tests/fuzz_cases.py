"""Property-based bad-input cases (hypothesis), shared by the unit tests and the
longer fuzz run (tests/fuzz_long.py). Each returns how many inputs it tried."""

from __future__ import annotations

import json
import socket
import string
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cogs.catalog import Catalog
from cogs.errors import CatalogError, CogsError
from cogs.keys import escape
from tests.helpers import LuaHarness

CODES = (
    "UNKNOWN_STATE",
    "UNKNOWN_OP",
    "BAD_KEY",
    "BAD_DELTA",
    "OVERSIZE",
    "WRONGTYPE",
    "OVERFLOW",
    "BAD_FRAME",
    "ALERT",
    "NOT_OWNER",
)
OPS = ("add", "sub", "max", "min", "set", "append", "remove", "incr", "del", "clear", "get", "members", "card",
       "contains", "all", "field", "len", "count", "exists", "ttl", "ge", "eq", "has", "checker", "", "zz", "__index")  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet="0123456789-", max_size=25),
)


def _nest(c: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=4)


args = st.recursive(scalars, _nest, max_leaves=12)
keys = st.one_of(
    st.text(max_size=30), st.text(alphabet=string.printable, min_size=1, max_size=600), st.integers(), st.none()
)


def _snapshot(h: LuaHarness, state: str, key: Any) -> Any:
    if not isinstance(key, str) or not key:
        return None
    rk = f"cogs:{state}:{{{escape(key)}}}"
    return [h.r.dump(k) for k in (rk, rk + ":alerted", rk + ":v", rk + ":r")]


def lua_ops(h: LuaHarness, examples: int) -> int:
    """Random single ops: every one is applied or refused with a known code, and a
    refused one leaves its state exactly as it was."""
    names = [s.name for s in h.catalog] + ["nope"]
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        mode=st.integers(min_value=-1, max_value=5),
        state=st.sampled_from(names),
        op=st.sampled_from(OPS),
        key=keys,
        arg=args,
    )
    def run(mode: int, state: str, op: str, key: Any, arg: Any) -> None:
        nonlocal tried
        tried += 1
        sidx = h.catalog.index(state) if state in h.catalog else 999
        before = _snapshot(h, state, key)
        frame = json.dumps([mode, sidx, op, 1, escape(key) if isinstance(key, str) else key, arg])
        try:
            reply = h.raw(frame, pid="fuzz")
        except Exception as e:  # refused whole (a number JSON cannot carry to Lua, ...)
            assert "BAD_FRAME" in str(e), e
            assert _snapshot(h, state, key) == before
            return
        assert isinstance(reply, list)
        assert len(reply) == 3
        errs = reply[1]
        if errs:
            msg = errs[1].decode()  # strict: a message is valid UTF-8
            assert msg.split(" ", 1)[0] in CODES, msg
            if not msg.startswith("ALERT"):
                assert _snapshot(h, state, key) == before, msg  # refused: untouched
        else:
            assert reply[0] == 1

    run()
    return tried


def lua_frames(h: LuaHarness, examples: int) -> int:
    """Random frames: refused whole with BAD_FRAME, or applied op by op; never a crash."""
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(frame=st.one_of(st.text(max_size=200), st.lists(args, max_size=12).map(json.dumps)))
    def run(frame: str) -> None:
        nonlocal tried
        tried += 1
        try:
            reply = h.raw(frame, pid="fuzz")
        except Exception as e:  # a frame-level refusal is an error reply
            assert "BAD_FRAME" in str(e), e
        else:
            assert isinstance(reply, list)
            for m in reply[1][1::2]:
                assert m.decode().split(" ", 1)[0] in CODES

    run()
    return tried


CATALOG_FIELDS = [
    "class",
    "type",
    "mode",
    "window",
    "ttl",
    "checker",
    "params",
    "threshold",
    "max_bytes",
    "max_items",
    "x",
]


def _catalog_nest(c: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # a named function: hypothesis checks by source that extend uses its argument,
    # and reading a lambda's source out of a multi-line call is unreliable
    return st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(CATALOG_FIELDS), c, max_size=6)


catalog_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from(["trigger", "direct", "indirect", "int", "set", "map", "hll", "string", "blob",
                               "replica", "singleton", "5m", "threshold", "cardinality", "ratio", "rate"])),
    _catalog_nest,
    max_leaves=15,
)  # fmt: skip


def catalogs(examples: int) -> int:
    """Random catalog documents: a Catalog, or a CatalogError naming the problems."""
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(doc=st.dictionaries(st.sampled_from(["states", "description", "other"]),
                               st.dictionaries(st.text(max_size=10), catalog_values, max_size=4) | catalog_values, max_size=3))  # fmt: skip
    def run(doc: dict[str, Any]) -> None:
        nonlocal tried
        tried += 1
        try:
            cat = Catalog.from_mapping(doc)
        except CatalogError as e:
            assert e.problems
            assert all(isinstance(p, str) and p for p in e.problems)
        else:
            assert len(cat) >= 1

    run()
    return tried


def proxy_updates(update: Any, examples: int) -> int:
    """Random ``update()`` calls: accepted, or refused with a CogsError (never a crash)."""
    tried = 0

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(
        state=st.sampled_from(["cnt", "ports", "qtypes", "note", "nope", ""]),
        key=keys,
        op=st.sampled_from(OPS),
        delta=args,
    )
    def run(state: str, key: Any, op: str, delta: Any) -> None:
        nonlocal tried
        tried += 1
        try:
            update(state, key, op, delta)
        except CogsError as e:
            assert str(e)

    run()
    return tried


def _frame(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body) + 1) + kind + body


_req = st.fixed_dictionaries(
    {"t": st.sampled_from(["req", "auth", "res", "x"]), "n": args, "op": st.sampled_from(["get", "has", "set", "create", "delete", "x"]),
     "state": st.sampled_from(["objects", "", "nope"]) | args, "key": keys, "size": st.integers(-2, 70_000) | args},
)  # fmt: skip


def _good_req(op: str, key: str, value: bytes, announced: int | None) -> bytes:
    size = len(value) if announced is None else announced
    head = {"t": "req", "n": 1, "op": op, "state": "objects", "key": key, "size": size}
    return _frame(b"J", json.dumps(head).encode()) + (_frame(b"B", value) if value else b"")


_good = st.builds(
    _good_req,
    st.sampled_from(["get", "has", "set", "create", "delete"]),
    st.sampled_from(["k", "w", ""]) | st.text(max_size=8),
    st.binary(max_size=1100),
    st.none() | st.none() | st.integers(0, 1100),
)  # well-formed requests, the announced size right or wrong
peer_bytes = st.one_of(
    _good,
    _good,
    st.binary(max_size=64),  # noise
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=16)).map(lambda t: struct.pack(">I", t[0]) + t[1]),
    st.tuples(st.sampled_from([b"J", b"B", b"X"]), st.binary(max_size=64)).map(lambda t: _frame(*t)),
    (_req | args).map(lambda o: _frame(b"J", json.dumps(o).encode())),
    st.binary(max_size=2048).map(lambda v: _frame(b"B", v)),
)
PEER_CODES = ("AUTH", "BAD_FRAME", "OVERSIZE", "NOT_FOUND")


def _read_replies(s: socket.socket) -> list[dict[str, Any]]:
    """Every frame the server sends until it closes: each must be a JSON object,
    or the value chunks a result announced."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    out, i = [], 0
    while i < len(data):
        n, kind = struct.unpack_from(">IB", data, i)
        body, i = data[i + 5 : i + 4 + n], i + 4 + n
        assert len(body) == n - 1, "a truncated frame from the server"
        if kind == ord("J"):
            out.append(json.loads(body))
        else:
            assert kind == ord("B"), kind
            assert out[-1].get("size", 0) > 0, "value chunks nobody announced"
    return out


def peer_frames(examples: int) -> int:
    """Random bytes and frames at a peer server, with and without the secret: it
    answers with well-formed errors or results, a stranger changes nothing, a value
    is stored only as announced and within the size limit, and a proper peer is
    served after every attempt."""
    from anyio.from_thread import start_blocking_portal

    from cogs.proxy.peer import PeerClient, PeerRefusal, PeerServer
    from cogs.proxy.peer.wire import mac as peer_mac

    secret, limit = b"fuzz-secret", 1024
    store: dict[str, bytes] = {"k": b"v0"}
    calls: list[tuple[str, str, str, bytes | None]] = []

    async def handler(op: str, state: str, key: str, value: bytes | None) -> tuple[int, bytes | None]:
        calls.append((op, state, key, value))
        if state != "objects":
            raise PeerRefusal("NOT_FOUND", f"no state {state!r} here")
        if op in ("set", "create"):
            assert value is not None
            store[key] = value
            return 1, None
        if op == "delete":
            return 1, None if store.pop(key, None) is None else b""
        if key not in store:
            raise PeerRefusal("NOT_FOUND", f"no value at {key!r}")
        return 1, store[key]

    tried = 0
    with start_blocking_portal() as portal:
        server = PeerServer("owner", secret, handler, max_value=lambda _s: limit, inc="i1")
        host, _, port = portal.call(server.start).rpartition(":")
        portal.start_task_soon(server.serve)
        friend = PeerClient("friend", secret, timeout=5)

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(authed=st.booleans(), frames=st.lists(peer_bytes, max_size=6))
        def run(authed: bool, frames: list[bytes]) -> None:
            nonlocal tried
            tried += 1
            calls.clear()
            before = dict(store)
            with socket.create_connection((host, int(port)), timeout=5) as s:
                hello = _read_replies_one(s)
                if authed:
                    args = (hello["nonce"], "c" * 32, "fuzzer", "owner", hello["inc"])
                    auth = {"t": "auth", "id": "fuzzer", "nonce": "c" * 32, "mac": peer_mac(secret, "client", *args)}
                    s.sendall(_frame(b"J", json.dumps(auth).encode()))
                    assert _read_replies_one(s) == {"t": "ok", "mac": peer_mac(secret, "server", *args)}
                s.sendall(b"".join(frames))
                s.shutdown(socket.SHUT_WR)
                replies = _read_replies(s)
            for r in replies:
                assert r.get("t") in ("res", "error"), r
                if r["t"] == "error" or not r["ok"]:
                    assert r["code"] in PEER_CODES, r
            if not authed:
                assert not calls
                assert store == before
            for op, _state, _key, value in calls:
                assert value is None or (op in ("set", "create") and len(value) <= limit)
            # the server still serves a peer with the secret
            store["alive"] = b"yes"
            assert portal.call(friend.request, f"{host}:{port}", "get", "objects", "alive") == (1, b"yes")

        try:
            run()
        finally:
            portal.call(friend.aclose)
            portal.call(server.aclose)
    return tried


def _read_replies_one(s: socket.socket) -> dict[str, Any]:
    n, _kind = struct.unpack(">IB", s.recv(5, socket.MSG_WAITALL))
    obj: dict[str, Any] = json.loads(s.recv(n - 1, socket.MSG_WAITALL))
    return obj
