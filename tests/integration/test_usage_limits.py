"""Per-NF usage limits on a real cluster: ``[limits] max_keys`` and ``max_memory`` per
primary, counted by the keeper (``cogs keeper``) plus what the library created since;
refused ops get a clear LIMIT error and never sink their batch-mates; the NF's users
can read the keeper's count and never write it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.errors import OverLimit
from cogs.keys import namespace
from cogs.ports import free_port_base
from cogs.proxy import StateProxy
from cogs.settings import load_settings
from tests.conftest import serving

CATALOG = """
[states.cnt]
class = "trigger"
type = "int"

[states.blink]
class = "trigger"
type = "int"
window = "1s"

[states.bag]
class = "trigger"
type = "set"
max_member_bytes = 4096
"""
PROXY_PW, MONITOR_PW = "capped-proxy-secret-1", "capped-monitor-secret-2"


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with serving(LocalCluster(port=free_port_base(4), masters=3, dir=tmp_path_factory.mktemp("usage") / "cluster")) as lc:
        yield lc


def _load_nf(lc: LocalCluster, tmp: Path, nf: str, limits: str) -> None:
    cat = tmp / f"{nf}.toml"
    cat.write_text(CATALOG + "\n[limits]\n" + limits + "\n")
    code, out = _cli("catalog", "load", "--url", lc.url, "--nf", nf, str(cat))
    assert code == 0, out


def _keys_per_primary(lc: LocalCluster, pattern: str) -> list[int]:
    out = []
    for port in lc.ports[:3]:
        with redis.Redis(port=port) as r:
            out.append(sum(1 for _ in r.scan_iter(match=pattern, count=1000)))
    return out


def _update_all(url: str, nf: str, state: str, keys: list[str], delta: object = 1) -> list[BaseException]:
    errors: list[BaseException] = []

    async def go() -> None:
        async with StateProxy(url, nf=nf, on_error=lambda e, _: errors.append(e)) as p:
            for k in keys:
                p.update(state, k, "add", delta)
            await p.flush()

    anyio.run(go)
    return errors


def test_max_keys_refuses_new_keys_only_with_a_clear_error(cluster: LocalCluster, tmp_path: Path) -> None:
    _load_nf(cluster, tmp_path, "capped", "max_keys = 30")
    keys = [f"k{i}" for i in range(300)]  # ~100 per primary
    errors = _update_all(cluster.url, "capped", "cnt", keys)
    # never counted: the library counts what it creates, exactly, per primary
    assert _keys_per_primary(cluster, "cogs@capped:cnt:*") == [30, 30, 30]
    assert len(errors) == 300 - 90
    assert all(isinstance(e, OverLimit) for e in errors)
    assert "NF capped has 30 keys on this node, its limit is 30 per primary" in str(errors[0])
    assert "new keys refused ([limits] max_keys)" in str(errors[0])
    assert "is cogs keeper running?" in str(errors[0])
    # the same ops again: the 90 that exist apply (they create nothing), the rest are refused again
    again = _update_all(cluster.url, "capped", "cnt", keys)
    assert len(again) == 210
    with redis.RedisCluster(host="127.0.0.1", port=cluster.port) as r:
        values = [r.get(f"cogs@capped:cnt:{{{k}}}") for k in keys]
        assert values.count(b"2") == 90
        assert values.count(None) == 210
        assert r.get("cogs:cnt:{k0}") is None
    # another NF on the same cluster: not limited
    assert _update_all(cluster.url, "default", "cnt", keys) == []


def test_the_keeper_credits_what_expired_and_counts_what_exists(cluster: LocalCluster, tmp_path: Path) -> None:
    _load_nf(cluster, tmp_path, "blinky", "max_keys = 20")
    first = [f"a{i}" for i in range(150)]
    assert len(_update_all(cluster.url, "blinky", "blink", first)) == 150 - 60
    time.sleep(1.3)  # the window: every entry has expired, but only a count can tell the library
    assert _keys_per_primary(cluster, "cogs@blinky:blink:*") == [0, 0, 0]
    later = [f"b{i}" for i in range(150)]
    assert len(_update_all(cluster.url, "blinky", "blink", later)) == 150  # still full, as far as it knows
    _update_all(cluster.url, "blinky", "cnt", [f"c{i}" for i in range(5)])  # fewer than the limit... on no node
    code, out = _cli("keeper", "--url", cluster.url, "--once", "--json")
    assert code == 0, out
    counted = [u for u in json.loads(out)["usage"] if u["nf"] == "blinky"]
    assert len(counted) == 3
    assert sum(u["keys"] for u in counted) == 0  # the 5 cnt keys were refused with the rest: none exist
    assert all(u["bytes"] > 0 and u["max_keys"] == 20 for u in counted)  # its bookkeeping (records, counts)
    # counted: room again, exactly up to the limit
    assert len(_update_all(cluster.url, "blinky", "blink", later)) == 150 - 60
    assert _keys_per_primary(cluster, "cogs@blinky:blink:*") == [20, 20, 20]
    # a count that sees the 60: they are what is in use, nothing is counted twice
    code, out = _cli("keeper", "--url", cluster.url, "--once", "--json")
    assert code == 0, out
    assert [u["keys"] for u in json.loads(out)["usage"] if u["nf"] == "blinky"] == [20, 20, 20]


def test_limits_come_back_exactly_from_the_stored_library(cluster: LocalCluster, tmp_path: Path) -> None:
    """The largest limits survive the library's JSON (cjson writes 14 digits: 2^49 bytes
    came back as 562949953421310.0 and every proxy of the NF failed to start)."""
    _load_nf(cluster, tmp_path, "huge", "max_keys = 1099511627776\nmax_memory = 562949953421312")
    code, out = _cli("catalog", "show", "--url", cluster.url, "--nf", "huge", "--json")
    assert code == 0, out
    assert json.loads(out)["limits"] == {"max_keys": 1 << 40, "max_memory": 1 << 49}
    assert _update_all(cluster.url, "huge", "cnt", ["h1", "h2"]) == []


def test_max_memory_refuses_updates_once_over_and_deleting_still_works(cluster: LocalCluster, tmp_path: Path) -> None:
    _load_nf(cluster, tmp_path, "fat", 'max_memory = "64KiB"')
    member = "m" * 2000
    keys = [f"f{i}" for i in range(120)]  # ~40 per primary x ~2.1 kB each: over 64 KiB per primary
    errors = _update_all(cluster.url, "fat", "bag", keys, member)
    assert errors
    assert all(isinstance(e, OverLimit) for e in errors)
    assert "bytes on this node, its limit is 65536 per primary" in str(errors[0])
    assert "updates refused ([limits] max_memory)" in str(errors[0])
    code, out = _cli("keeper", "--url", cluster.url, "--once", "--json")
    assert code == 0, out
    counted = {u["node"]: u["bytes"] for u in json.loads(out)["usage"] if u["nf"] == "fat"}
    for port in cluster.ports[:3]:
        with redis.Redis(port=port) as r:
            real = sum(int(r.memory_usage(k) or 0) for k in r.scan_iter(match="cogs@fat:*"))
        assert counted[f"127.0.0.1:{port}"] == pytest.approx(real, rel=0.05)
        assert counted[f"127.0.0.1:{port}"] >= 65536  # filled up to the limit, and one entry past it at most
        assert counted[f"127.0.0.1:{port}"] < 65536 + 8 * 2200
    # over: an update of an existing entry is refused too (Redis' own maxmemory does the same)
    stored = [k for k in keys if _exists(cluster, f"cogs@fat:bag:{{{k}}}")]
    assert stored
    refused = _update_all(cluster.url, "fat", "bag", stored[:3], "x")
    assert len(refused) == 3
    assert "max_memory" in str(refused[0])

    async def clear() -> None:
        async with StateProxy(cluster.url, nf="fat") as p:
            for k in stored:
                await p.syn_up("bag", k, "clear")

    anyio.run(clear)  # deleting is never refused
    assert not any(_exists(cluster, f"cogs@fat:bag:{{{k}}}") for k in stored)
    code, out = _cli("keeper", "--url", cluster.url, "--once")
    assert code == 0, out
    assert _update_all(cluster.url, "fat", "bag", stored[:3], "x") == []  # room again


def _exists(lc: LocalCluster, key: str) -> bool:
    with redis.RedisCluster(host="127.0.0.1", port=lc.port) as r:
        return bool(r.exists(key))


def test_the_nfs_users_read_the_keepers_count_and_cannot_forge_it(cluster: LocalCluster, tmp_path: Path) -> None:
    _load_nf(cluster, tmp_path, "guarded", "max_keys = 10")
    code, out = _cli("acl", "apply", "--url", cluster.url, "--nf", "guarded", "--proxy-password", PROXY_PW,
                     "--monitor-password", MONITOR_PW)  # fmt: skip
    assert code == 0, out
    code, out = _cli("keeper", "--url", cluster.url, "--once")
    assert code == 0, out
    assert "guarded" in out
    ns = namespace("guarded")

    async def streams() -> list[tuple[int, str]]:
        async with Coordinator(url=cluster.url, nf="guarded") as co:
            return [(int(a.rpartition(":")[2]), co.alert_stream(i)) for i, a in enumerate(co.nodes)]

    for port, stream in anyio.run(streams):
        with redis.Redis(port=port, username="cogs-guarded-proxy", password=PROXY_PW) as r:
            assert r.hget(ns.usage_key(stream), "pass") is not None  # readable
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.hset(ns.usage_key(stream), "k", 0)
            # what it may write, it may forge: junk in the library's own count is reset, not fatal
            r.hset(ns.created_key(stream), mapping={"k": "junk", "b": "1.5"})
    errors: list[BaseException] = []

    async def go() -> None:
        settings = load_settings(url=cluster.url, nf="guarded", username="cogs-guarded-proxy", password=PROXY_PW)
        async with StateProxy(settings=settings, on_error=lambda e, _: errors.append(e)) as p:
            for i in range(60):
                p.update("cnt", f"g{i}", "add", 1)
            await p.flush()

    anyio.run(go)
    assert _keys_per_primary(cluster, "cogs@guarded:cnt:*") == [10, 10, 10]
    assert len(errors) == 30
    assert all(isinstance(e, OverLimit) for e in errors)


def test_the_monitor_and_the_exporter_show_usage_against_the_limits(cluster: LocalCluster, tmp_path: Path) -> None:
    _load_nf(cluster, tmp_path, "shown", "max_keys = 25\nmax_memory = 1048576")
    _update_all(cluster.url, "shown", "cnt", [f"s{i}" for i in range(30)])  # ~10 per primary
    code, out = _cli("monitor", "--once", "--json", "--url", cluster.url, "--nf", "shown")
    assert code == 0, out
    nf = next(n for n in json.loads(out)["nfs"] if n["nf"] == "shown")
    assert (nf["max_keys"], nf["max_memory"]) == (25, 1048576)
    assert sum(u["keys"] for u in nf["usage"]) == 30  # what the library created: never counted yet
    assert all(u["age_s"] is None for u in nf["usage"])
    code, out = _cli("monitor", "--once", "--url", cluster.url, "--nf", "shown")
    assert "never counted: no keeper?" in out
    code, out = _cli("keeper", "--url", cluster.url, "--once")
    assert code == 0, out

    from prometheus_client import generate_latest

    from cogs.metrics.exporter import CoordinatorView, registry
    from cogs.monitor.collect import Collector, Tenant

    async def snap() -> None:
        async with Coordinator(url=cluster.url, nf="shown") as co:
            stored, _ = await co.stored_catalog()
            view.show(await Collector(co, [Tenant(co.ns, stored)], cluster.url).snapshot())

    view = CoordinatorView()
    anyio.run(snap)
    text = generate_latest(registry(view)).decode()
    assert 'cogs_nf_max_keys{nf="shown"} 25.0' in text
    assert 'cogs_nf_max_memory_bytes{nf="shown"} 1.048576e+06' in text
    counted = [line for line in text.splitlines() if line.startswith('cogs_nf_usage_keys{nf="shown"')]
    assert len(counted) == 3
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 30
    assert text.count('cogs_nf_usage_age_seconds{nf="shown"') == 3


def test_naming_other_slots_of_a_node_takes_no_fresh_bucket_or_count(cluster: LocalCluster, tmp_path: Path) -> None:
    """The attack: a caller names a different slot of the same node in each batch's alert
    stream, hoping for a fresh rate bucket or key count under each. The limits' records
    are the node's own (its lowest slot's), whatever the batch names."""
    from cogs.catalog import Catalog
    from cogs.coordinator.client import parse_reply
    from cogs.coordinator.frames import runs
    from cogs.keys import slot
    from cogs.library import library_spec
    from cogs.protocol import Mode

    _load_nf(cluster, tmp_path, "rotor", "max_keys = 20\nops_per_s = 100")
    ns = namespace("rotor")
    cat = Catalog.from_toml(CATALOG)
    token = f"{library_spec().version}:{cat.digest}"
    with redis.Redis(port=cluster.port) as r:
        mine = [(a, b) for a, b, *_ in r.execute_command("CLUSTER", "SLOTS")
                if int(_[0][1]) == cluster.port]  # fmt: skip
        slots = [s for a, b in mine for s in range(int(a), int(b) + 1)]
        keys = [k for k in (f"r{i}" for i in range(20000)) if slot(k) in set(slots)][:100]
        applied = 0
        for i in range(10):  # 10 batches of 10 new keys, each naming another slot of this node
            ops = [(Mode.UPDATE, cat.index("cnt"), "add", k, 1) for k in keys[10 * i : 10 * i + 10]]
            reply = parse_reply(r.fcall(ns.fn_batch, 0, token, ns.alert_stream(slots[100 * i + 7]),
                                        json.dumps(runs(ops)), "rotor-attacker"))  # fmt: skip
            applied += reply.applied
    assert applied == 20  # one count for the node: not 10 x 20
    assert _keys_per_primary(cluster, "cogs@rotor:cnt:*").count(20) == 1


def test_junk_in_one_nfs_record_never_stops_the_count_of_the_others(cluster: LocalCluster, tmp_path: Path) -> None:
    """Attack: one NF's proxy user SETs its own `created` record (its namespace, its
    right). The keeper read every NF's record before counting a node: WRONGTYPE ended
    that node's pass, and an honest NF there was refused for good."""
    _load_nf(cluster, tmp_path, "honest", "max_keys = 50")
    _load_nf(cluster, tmp_path, "hostile", "max_keys = 50")
    hostile = namespace("hostile")
    with redis.Redis(port=cluster.port) as r:
        first = min(int(a) for a, _b, node, *_ in r.execute_command("CLUSTER", "SLOTS") if int(node[1]) == cluster.port)
        r.set(hostile.created_key(hostile.alert_stream(first)), "junk")
        # and a record of another slot of the node (one a slot move left behind): the keeper drops it
        left = namespace("honest").usage_key(namespace("honest").alert_stream(first + 1))
        r.hset(left, "k", 7)
    code, out = _cli("keeper", "--url", cluster.url, "--once", "--json")
    assert code == 0, out
    got = json.loads(out)
    assert got["failed"] == {}
    assert {u["node"] for u in got["usage"] if u["nf"] == "honest"} == {f"127.0.0.1:{p}" for p in cluster.ports[:3]}
    assert {u["node"] for u in got["usage"] if u["nf"] == "hostile"} == {f"127.0.0.1:{p}" for p in cluster.ports[:3]}
    with redis.Redis(port=cluster.port) as r:
        assert not r.exists(left)


def test_new_entries_are_charged_what_they_take_until_counted(cluster: LocalCluster, tmp_path: Path) -> None:
    """Attack: new sets of 2000 members each (what coalescing makes) were charged their
    name + 16 bytes until the keeper measured them: 4-5 MiB per primary under a 1 MiB
    limit in one pass. Now each is charged what Redis says it takes."""
    _load_nf(cluster, tmp_path, "bulky", 'max_memory = "256KiB"')
    errors: list[BaseException] = []
    members = [f"member-{j:06d}" for j in range(2000)]

    async def go() -> None:
        async with StateProxy(cluster.url, nf="bulky", on_error=lambda e, _: errors.append(e)) as p:
            for i in range(60):  # ~20 per primary x ~100 kB each: far past 256 KiB
                p.update("bag", f"b{i}", "add", members)
            await p.flush()

    anyio.run(go)
    assert errors
    assert all(isinstance(e, OverLimit) for e in errors)
    code, out = _cli("keeper", "--url", cluster.url, "--once", "--json")
    assert code == 0, out
    for u in json.loads(out)["usage"]:
        if u["nf"] == "bulky":  # up to the limit, and one entry past it at most
            assert u["bytes"] < 256 * 1024 + 200_000, u


def test_the_keeper_of_cluster_up_counts_on_after_the_cluster_is_locked(tmp_path: Path) -> None:
    """`cogs cluster up` starts the keeper on an open cluster; `cogs acl apply
    --admin-password` then locks it: the keeper reads the dir's auth.conf again and counts on."""
    port = free_port_base(1)
    opts = ["--port", str(port), "--dir", str(tmp_path / "c")]
    code, out = _cli("cluster", "up", *opts, "--masters", "1")
    assert code == 0, out
    lc = LocalCluster.from_dir(port, tmp_path / "c")
    try:
        assert lc.keeper_pid() is not None
        _load_nf(lc, tmp_path, "kept", "max_keys = 5")
        ns = namespace("kept")
        usage = ns.usage_key(ns.alert_stream(0))

        def counted(password: str | None = None) -> int:
            deadline = time.monotonic() + 30
            while True:
                with redis.Redis(port=port, password=password) as r:
                    got = r.hget(usage, "pass")
                if got is not None or time.monotonic() > deadline:
                    return int(got or -1)
                time.sleep(0.2)

        before = counted()
        assert before >= 0
        code, out = _cli("acl", "apply", "--proxy-password", PROXY_PW, "--monitor-password", MONITOR_PW,
                         "--admin-password", "kept-admin-secret-9", "--cluster-dir", str(tmp_path / "c"))  # fmt: skip
        assert code == 0, out
        with redis.Redis(port=port) as r, pytest.raises(redis.exceptions.AuthenticationError):
            r.ping()
        with redis.Redis(port=port, password="kept-admin-secret-9") as r:  # its connections: new ones need auth
            r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        deadline = time.monotonic() + 30
        while counted(password="kept-admin-secret-9") <= before + 2:  # passes go on, as the admin
            assert time.monotonic() < deadline, (tmp_path / "c" / "keeper.log").read_text()
            time.sleep(0.2)
    finally:
        lc.down()
    assert lc.keeper_pid() is None


def test_the_keeper_finds_its_nfs_after_an_admins_flushall(cluster: LocalCluster, tmp_path: Path) -> None:
    """FLUSHALL empties the NF index but keeps the function libraries: their NFs run on
    and must be counted on (they were refused for good: nothing was credited again)."""
    _load_nf(cluster, tmp_path, "flushed", "max_keys = 40")
    for port in cluster.ports[:3]:
        with redis.Redis(port=port) as r:
            r.flushall()
    code, out = _cli("keeper", "--url", cluster.url, "--once", "--json")
    assert code == 0, out
    assert {u["node"] for u in json.loads(out)["usage"] if u["nf"] == "flushed"} == {
        f"127.0.0.1:{p}" for p in cluster.ports[:3]
    }
    assert _update_all(cluster.url, "flushed", "cnt", [f"z{i}" for i in range(60)]) == []  # ~20 per primary
