"""State keys written outside cogs (threat model: any holder of the proxy credentials
can SET, HSET, DEL... any key of its NF), on a real cluster.

Every op on such a key must fail alone with a bounded error naming what is wrong (a
Lua refusal such as WRONGTYPE, or BAD_REPLY when the reply cannot be read as the
state's type), while its batch-mates apply, the proxy's send loop goes on, and nothing
raises out of an asyncio callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import redis

from cogs.catalog import StateSpec
from cogs.cluster import LocalCluster
from cogs.errors import BadReply, CogsError, OpError, WrongType
from cogs.keys import escape, slot, state_key
from cogs.proxy import StateProxy

pytestmark = pytest.mark.anyio

#: what a proxy user may leave in a state's key: every Redis type, bytes that are no
#: number and no UTF-8, a value of 1 MB
Writer = Callable[[redis.RedisCluster, str], Any]
HOSTILE: dict[str, Writer] = {
    "string": lambda r, k: r.set(k, b"garbage \xff\xfe"),
    "digits": lambda r, k: r.set(k, b"9" * 5000),
    "huge": lambda r, k: r.set(k, b"\xff" * (1 << 20)),
    "hash": lambda r, k: r.hset(k, mapping={b"\xff": b"\xfe", "f": "not a number"}),
    "set": lambda r, k: r.sadd(k, b"\xff", b"m"),
    "list": lambda r, k: r.rpush(k, b"1", b"x"),
    "zset": lambda r, k: r.zadd(k, {b"\xff": 1.0}),
}

#: per type: (op kind, op, argument) of every op
OPS: dict[str, list[tuple[str, str, Any]]] = {
    "int": [("up", "add", 1), ("up", "sub", 1), ("up", "max", 5), ("up", "min", 5), ("up", "set", 3),
            ("get", "get", None), ("check", "gt", 1)],
    "string": [("up", "set", "v"), ("up", "append", "v"), ("get", "get", None), ("get", "len", None),
               ("check", "eq", "v")],
    "set": [("up", "add", "m"), ("up", "remove", "m"), ("get", "members", None), ("get", "card", None),
            ("get", "contains", "m"), ("check", "contains", "m")],
    "map": [("up", "set", {"f": "v"}), ("up", "incr", {"f": 1}), ("up", "del", "f"), ("get", "all", None),
            ("get", "field", "f"), ("get", "len", None), ("check", "has", "f")],
    "hll": [("up", "add", "m"), ("get", "count", None)],
    "portmap": [("up", "map", "6|10.0.0.1|1234"), ("get", "out", "6|10.0.0.1|1234"), ("get", "in", None),
                ("get", "size", None), ("up", "release", "6|10.0.0.1|1234")],
}  # fmt: skip


def _key(proxy: StateProxy, state: str, i: int) -> str:
    """A key of ``state`` (a block of its pool for a portmap)."""
    st = proxy.catalog.get(state)
    if st.type == "portmap":
        return f"{str(st.params['external']).split()[0]}|{st.params['port_min']}"
    return f"hostile-{state}-{i}"


async def _attack(
    proxy: StateProxy, errors: list[tuple[Any, CogsError]], r: redis.RedisCluster, st: StateSpec, key: str, how: str,
    mate: str,
) -> list[str]:  # fmt: skip
    """Leave ``how`` in ``st[key]``, run every op of its type (the async ones in one
    batch with an update of ``mate``; their errors come to ``errors``): what went wrong."""
    rk = state_key(st.name, escape(key))
    r.delete(rk, *(rk + s for s in (":v", ":r", ":in", ":idle", ":free", ":next")))
    HOSTILE[how](r, rk)
    before = int(r.get(state_key("cnt", mate)) or 0)
    got: dict[str, Any] = {}
    errors.clear()

    def answer(v: Any, tag: str) -> None:
        got[tag] = v

    ops = [(kind, op, st.params["port_min"] if op == "in" else arg) for kind, op, arg in OPS[st.type]]
    with anyio.fail_after(20):
        proxy.update("cnt", mate, "add", 1)  # the batch-mate of the async ops below
        for kind, op, arg in ops:
            if kind == "up":
                proxy.asyn_up(st.name, key, op, arg, answer, op)
            elif kind == "get":
                proxy.asyn_retrieve(st.name, key, op, answer, op, arg)
        await proxy.flush()
        for kind, op, arg in ops:
            if kind == "check":
                try:
                    got[op] = await proxy.syn_check(st.name, key, op, arg)
                except CogsError as e:
                    errors.append((op, e))
    where = f"{st.name}/{how}"
    problems = (
        [f"{where}: the batch-mate did not apply"] if int(r.get(state_key("cnt", mate)) or 0) != before + 1 else []
    )
    answered = set(got) | {t for t, _ in errors}
    problems += [f"{where}/{op}: no answer" for _, op, _ in ops if op not in answered]
    problems += [f"{where}/{t}: an error of {len(str(e))} characters" for t, e in errors if len(str(e)) > 400]
    problems += [f"{where}/{t}: {e}" for t, e in errors if not isinstance(e, OpError) or " state=" not in str(e)]
    # leave nothing behind: a portmap's key is its pool's first block, which other tests use
    r.delete(rk, *(rk + s for s in (":v", ":r", ":in", ":idle", ":free", ":next")))
    return problems


async def test_ops_on_keys_written_outside_cogs_fail_alone(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a reply its decoder refused (b"abc" for an int, bytes that are not UTF-8
    for a string or a map field, 5000 digits) raised inside the send loop's callback:
    the batch was never settled, every op in it hung, flush() never returned, and each
    such reply logged a traceback."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    r = redis.RedisCluster(host="127.0.0.1", port=cluster.port)
    problems: list[str] = []
    tried = 0
    errors: list[tuple[Any, CogsError]] = []
    async with StateProxy(cluster.url, on_error=lambda e, p: errors.append((p, e))) as proxy:
        assert proxy.coord.topology is not None
        topo = proxy.coord.topology

        def node_of(k: str) -> int:
            return topo.node_of(slot(escape(k)))

        for n, st in enumerate(s for s in proxy.catalog if s.state_class != "indirect"):
            key = _key(proxy, st.name, n)
            mate = next(k for i in range(10_000) if node_of(k := f"mate{i}") == node_of(key))
            for how in HOSTILE:
                problems += await _attack(proxy, errors, r, st, key, how, mate)
                tried += len(OPS[st.type])
        stats = proxy.statistics()
    r.close()
    assert tried > 200
    assert not problems, problems
    assert stats.pending_ops == stats.inflight_ops == 0
    tracebacks = [rec for rec in caplog.records if rec.name == "asyncio"]
    assert not tracebacks, tracebacks[0].getMessage()


async def test_wrong_type_and_unreadable_values_are_named(cluster: LocalCluster) -> None:
    """The two kinds of refusal, as callers see them (and the value left untouched)."""
    r = redis.RedisCluster(host="127.0.0.1", port=cluster.port)
    r.set(state_key("cnt", "hs-word"), b"abc")
    r.set(state_key("qtypes", "hs-str"), b"x")
    r.set(state_key("mapping", "hs-bytes"), b"\xff" * 100)
    async with StateProxy(cluster.url) as proxy:
        with pytest.raises(BadReply, match=r"^BAD_REPLY state=cnt key='hs-word' op='get': .*got b'abc'"):
            await proxy.syn_retrieve("cnt", "hs-word")
        with pytest.raises(WrongType, match=r"^WRONGTYPE state=cnt key=\"hs-word\" op=\"max\""):
            await proxy.syn_up("cnt", "hs-word", "max", 5)
        with pytest.raises(WrongType, match="WRONGTYPE state=qtypes"):
            await proxy.syn_up("qtypes", "hs-str", "incr", {"a": 1})
        with pytest.raises(BadReply, match=r"\(100 bytes, sha1 [0-9a-f]{12}\)"):
            await proxy.syn_retrieve("mapping", "hs-bytes")
        assert await proxy.syn_up("cnt", "hs-fine", "add", 2) == 2  # the proxy goes on
    assert r.get(state_key("cnt", "hs-word")) == b"abc"
    r.close()
