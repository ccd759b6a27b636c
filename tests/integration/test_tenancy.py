"""Several NFs on one coordinator, for real: a default NF and the NFs `ids` and `nat`
on one 3-primary cluster, each with its own catalog, library, keys, channels, alerts,
ACL users and limits; the monitor and the exporter show them apart; scaling carries
every NF's library to the new primary."""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis
from click.testing import CliRunner

from cogs.cli import main
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.errors import CogsError, OverLimit
from cogs.keys import NF_INDEX, slot
from cogs.monitor.collect import Snapshot
from cogs.ports import free_port_base
from cogs.proxy import StateProxy
from cogs.settings import load_settings
from tests.conftest import _load
from tests.helpers import TEST_CATALOG, make_catalog

PROXY_PW, MONITOR_PW = "ids-proxy-secret-1", "ids-monitor-secret-2"
NAT_PW = "nat-proxy-secret-3"


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster with the default NF (the test catalog) and NFs ids and nat loaded by
    `cogs catalog load --nf` (the same states: their keys may not meet)."""
    d = tmp_path_factory.mktemp("tenancy")
    lc = LocalCluster(port=free_port_base(4), masters=3, dir=d / "cluster")
    lc.up()
    try:
        anyio.run(_load, lc.url, make_catalog())
        cat = d / "catalog.toml"
        cat.write_text(TEST_CATALOG)
        for nf in ("ids", "nat"):
            code, out = _cli("catalog", "load", "--url", lc.url, "--nf", nf, str(cat))
            assert code == 0, out
            assert f"of NF {nf} on" in out
        yield lc
    finally:
        lc.down()


def _pairs(flat: Any) -> dict[str, Any]:
    """A RESP2 reply of name/value pairs as a dict (names decoded)."""
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _libraries(port: int) -> dict[str, Any]:
    with redis.Redis(port=port) as r:
        libs = [_pairs(x) for x in r.function_list(withcode=True)]
    return {lib["library_name"].decode(): {**lib, "functions": {_pairs(f)["name"].decode() for f in lib["functions"]}}
            for lib in libs}  # fmt: skip


def test_each_nf_has_its_own_library_and_loading_one_leaves_the_others(shared: LocalCluster, tmp_path: Path) -> None:
    before = _libraries(shared.port)
    assert set(before) >= {"cogs", "cogs_ids", "cogs_nat"}
    assert before["cogs_ids"]["functions"] == {"cogs_ids_batch", "cogs_ids_info", "cogs_ids_release", "cogs_ids_beat"}
    limited = tmp_path / "ids.toml"
    limited.write_text(TEST_CATALOG + "\n[limits]\nops_per_s = 1000000\n")
    code, out = _cli("catalog", "load", "--url", shared.url, "--nf", "ids", str(limited))
    assert code == 0, out
    assert "limits 1,000,000 ops/s per primary" in out
    after = _libraries(shared.port)
    assert after["cogs"]["library_code"] == before["cogs"]["library_code"]  # untouched
    assert after["cogs_nat"]["library_code"] == before["cogs_nat"]["library_code"]
    assert after["cogs_ids"]["library_code"] != before["cogs_ids"]["library_code"]
    code, out = _cli("catalog", "show", "--url", shared.url, "--nf", "ids", "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["nf"], shown["limits"]) == ("ids", {"ops_per_s": 1000000})
    code, out = _cli("catalog", "show", "--url", shared.url, "--json")
    assert json.loads(out)["limits"] == {}
    code, out = _cli("catalog", "show", "--url", shared.url, "--nf", "ghost")
    assert code == 1
    assert "the library of NF ghost (cogs_ghost) is not loaded" in out
    assert "cogs catalog load --nf ghost PATH" in out
    code, out = _cli("catalog", "show", "--url", shared.url, "--nf", "Bad-Name")
    assert code == 2
    assert "1-24 characters of a-z" in out


def test_proxies_of_different_nfs_never_meet(shared: LocalCluster) -> None:
    async def go() -> None:
        async with (
            StateProxy(shared.url) as d,
            StateProxy(shared.url, nf="ids") as ids,
            StateProxy(shared.url, nf="nat") as nat,
        ):
            for p, n in ((d, 5), (ids, 7), (nat, 11)):
                for _ in range(n):
                    p.update("cnt", "same-key", "add", 1)
                    p.update("hits", "loud", "add", 1)  # threshold 10: an alert where it reaches 10
                await p.flush()
            assert [await p.syn_retrieve("cnt", "same-key") for p in (d, ids, nat)] == [5, 7, 11]
            # replicas and discards stay within an NF too
            await ids.syn_up("nat", "flow", "set", 1)
            assert await nat.syn_retrieve("nat", "flow") is None
            assert await ids.syn_retrieve("nat", "flow") == 1
            assert all(p.statistics().errors == 0 for p in (d, ids, nat))

    anyio.run(go)
    with redis.RedisCluster(host="127.0.0.1", port=shared.port) as r:
        assert r.get("cogs:cnt:{same-key}") == b"5"
        assert r.get("cogs@ids:cnt:{same-key}") == b"7"
        assert r.get("cogs@nat:cnt:{same-key}") == b"11"
    # only nat's hits reached its threshold (11 >= 10): its alert, in its own streams
    code, out = _cli("alerts", "--url", shared.url, "--nf", "nat", "--json")
    assert code == 0, out
    got = [json.loads(line) for line in out.splitlines()]
    assert [(a["nf"], a["state"], a["key"]) for a in got] == [("nat", "hits", "loud")]
    assert got[0]["stream"].startswith("cogs@nat:alerts:{")
    for nf in ("default", "ids"):
        code, out = _cli("alerts", "--url", shared.url, "--nf", nf, "--json", "--state", "hits")
        assert (code, out) == (0, "")


@pytest.fixture(scope="module")
def acl(shared: LocalCluster) -> LocalCluster:
    for nf, pw in (("ids", PROXY_PW), ("nat", NAT_PW)):
        code, out = _cli("acl", "apply", "--url", shared.url, "--nf", nf, "--proxy-password", pw,
                         "--monitor-password", MONITOR_PW)  # fmt: skip
        assert code == 0, out
        assert f"users cogs-{nf}-proxy and cogs-{nf}-monitor set on 3 node(s)" in out
    return shared


def _as(lc: LocalCluster, user: str, pw: str) -> redis.Redis:
    """One node, as ``user``: Redis checks ACLs before it redirects (MOVED), so a refused
    key is refused on any node."""
    return redis.Redis(host="127.0.0.1", port=lc.port, username=user, password=pw)


def test_an_ids_proxy_cannot_read_or_change_the_nats_states(acl: LocalCluster) -> None:
    lc = acl
    ids_settings = load_settings(url=lc.url, username="cogs-ids-proxy", password=PROXY_PW, nf="ids")

    async def own_nf() -> None:
        async with StateProxy(settings=ids_settings) as p:
            await p.syn_up("cnt", "acl-key", "add", 3)
            assert await p.syn_retrieve("cnt", "acl-key") == 3

    anyio.run(own_nf)
    with redis.RedisCluster(host="127.0.0.1", port=lc.port) as admin:
        admin.set("cogs@nat:cnt:{acl-key}", "42")
    with _as(lc, "cogs-ids-proxy", PROXY_PW) as r:
        with contextlib.suppress(redis.exceptions.MovedError):  # allowed (and maybe served elsewhere)
            r.get("cogs@ids:cnt:{acl-key}")
        for cmd in (
            ("GET", "cogs@nat:cnt:{acl-key}"), ("SET", "cogs@nat:cnt:{acl-key}", "0"), ("DEL", "cogs@nat:cnt:{acl-key}"),
            ("INCRBY", "cogs@nat:cnt:{acl-key}", "1"), ("GET", "cogs:cnt:{acl-key}"),
            ("ZADD", "cogs@nat:proxies", "1", "intruder"), ("PUBLISH", "cogs@nat:discard:x", "[]"),
            ("SADD", NF_INDEX, "intruder"), ("DEL", NF_INDEX), ("HSET", "cogs!usage@ids:{0}", "k", "0"),
        ):  # fmt: skip
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*cmd)
        with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
            r.execute_command("FCALL_RO", "cogs_nat_info", "0")  # another NF's catalog
        assert json.loads(r.execute_command("FCALL_RO", "cogs_ids_info", "0"))["nf"] == "ids"
    with (
        redis.Redis(port=lc.port, username="cogs-ids-proxy", password=PROXY_PW) as r,
        pytest.raises(redis.exceptions.NoPermissionError),
    ):
        r.execute_command("SUBSCRIBE", "cogs@nat:discard:nat-proxy")
    # the NAT's own functions run with the caller's rights: every NAT key is refused to it
    nat_settings = load_settings(url=lc.url, username="cogs-ids-proxy", password=PROXY_PW, nf="nat")

    async def nat_token() -> str:
        async with Coordinator(url=lc.url, nf="nat") as co:  # the admin
            return (await co.stored_catalog())[1]

    token = anyio.run(nat_token)

    async def intrude() -> None:
        async with Coordinator(nat_settings) as co:
            with pytest.raises(CogsError, match=r"can't access"):
                await co.stored_catalog()  # its catalog (thresholds, address pools): not for another NF
            assert co.topology is not None
            i = co.topology.node_of(slot("acl-key"))
            frame = json.dumps([0, co.spec and 1, "add", 1, "acl-key", "1"])  # cnt is state 1
            reply = await co.call_batch(i, token, co.alert_stream(i), frame)
            raise AssertionError(f"the NAT's library ran for the IDS user: {reply}")

    with pytest.raises(CogsError, match=r"can't access|NOPERM|no permissions"):
        anyio.run(intrude)
    with pytest.raises(CogsError, match=r"NOPERM|no permissions|can't access"):
        anyio.run(_start, StateProxy(settings=nat_settings))
    with redis.RedisCluster(host="127.0.0.1", port=lc.port) as admin:
        assert admin.get("cogs@nat:cnt:{acl-key}") == b"42"  # untouched throughout


async def _start(p: StateProxy) -> None:
    async with p:
        pass


def test_each_nfs_monitor_user_reads_its_nf_only(acl: LocalCluster) -> None:
    with _as(acl, "cogs-ids-monitor", MONITOR_PW) as r:
        with contextlib.suppress(redis.exceptions.MovedError):
            r.execute_command("GET", "cogs@ids:cnt:{acl-key}")
        for cmd in (("GET", "cogs@nat:cnt:{acl-key}"), ("SET", "cogs@ids:cnt:{x}", "1"), ("GET", "cogs:cnt:{x}")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*cmd)
    url = acl.url.replace("redis://", f"redis://cogs-ids-monitor:{MONITOR_PW}@")
    code, out = _cli("monitor", "--once", "--json", "--url", url, "--nf", "ids")
    assert code == 0, out
    snap = json.loads(out)
    assert {s["nf"] for s in snap["states"]} == {"ids"}
    assert [n["nf"] for n in snap["nfs"]] == ["ids"]


def test_the_monitor_and_the_exporter_show_each_nf_apart(shared: LocalCluster) -> None:
    async def proxies() -> None:
        async with StateProxy(shared.url, nf="ids") as p, StateProxy(shared.url) as q:
            p.update("cnt", "seen", "add", 1)
            q.update("cnt", "seen", "add", 1)
            await p.flush()
            await q.flush()
            code, out = await anyio.to_thread.run_sync(_cli, "monitor", "--once", "--json", "--url", shared.url)
            assert code == 0, out
            snap = json.loads(out)
            assert [n["nf"] for n in snap["nfs"]] == ["default", "ids", "nat"]
            assert not any(n["problem"] for n in snap["nfs"])
            by_nf = {(s["nf"], s["name"]): s["values"] for s in snap["states"]}
            assert by_nf[("ids", "cnt")] >= 2  # same-key, acl-key, seen: counted apart
            assert by_nf[("default", "cnt")] >= 1
            assert {(x["nf"], x["id"]) for x in snap["proxies"] if x["alive"]} >= {("ids", p.id), ("default", q.id)}
            assert all(len(n["libraries"]) == 3 for n in snap["nodes"])
            assert any(a["nf"] == "nat" for a in snap["alerts"])

    anyio.run(proxies)
    from cogs.metrics.exporter import CoordinatorView, registry
    from cogs.monitor import watch

    view = CoordinatorView()

    def show(snap: Snapshot) -> bool:
        view.show(snap)
        return snap.scan_done < 1.0 or not view.alerts  # until the counts and the stored alerts are in

    async def one() -> None:
        with anyio.move_on_after(20):
            await watch(load_settings(url=shared.url), deque(maxlen=1), show, interval=0.2, on_alert=view.alert,
                        all_history=True)  # fmt: skip

    anyio.run(one)
    from prometheus_client import generate_latest

    text = generate_latest(registry(view)).decode()
    assert 'cogs_nf_up{nf="ids"} 1.0' in text
    assert 'cogs_state_keys{class="trigger",mode="singleton",nf="ids",state="cnt",type="int"}' in text
    assert 'cogs_state_keys{class="trigger",mode="singleton",nf="default",state="cnt",type="int"}' in text
    assert 'cogs_alerts_total{nf="nat",state="hits"} 1.0' in text
    assert 'nf="ids",status="alive"' in text


def test_a_limited_nf_is_refused_over_its_rate_and_the_others_are_not(shared: LocalCluster, tmp_path: Path) -> None:
    cat = tmp_path / "slow.toml"
    cat.write_text(TEST_CATALOG + "\n[limits]\nops_per_s = 200\n")
    code, out = _cli("catalog", "load", "--url", shared.url, "--nf", "slow", str(cat))
    assert code == 0, out
    errors: list[BaseException] = []
    n = 9000

    async def go() -> tuple[int, int]:
        async with (
            StateProxy(shared.url, nf="slow", on_error=lambda e, _: errors.append(e)) as s,
            StateProxy(shared.url) as d,
        ):
            for i in range(n):  # distinct keys: no coalescing; 3 rounds of ~1000 ops per primary
                s.update("cnt", f"lim{i}", "add", 1)
                d.update("cnt", f"lim{i}", "add", 1)
                if i % 3000 == 2999:  # the first round runs the buckets ~4 s into debt: the next are refused
                    await s.flush()
                    await d.flush()
            refused = s.statistics().errors
            with pytest.raises(OverLimit, match="NF slow is over its limit of 200 ops/s on this node"):
                await _syn_ups(s, 100)  # the buckets are spent: one of these is refused
            return refused, d.statistics().errors

    refused, default_errors = anyio.run(go)
    assert default_errors == 0  # the default NF shares the cluster and is not limited
    assert 0 < refused < n
    assert errors
    assert all(isinstance(e, OverLimit) for e in errors)
    with redis.RedisCluster(host="127.0.0.1", port=shared.port) as r:
        applied = sum(r.get(f"cogs@slow:cnt:{{lim{i}}}") == b"1" for i in range(n))
        assert sum(r.get(f"cogs:cnt:{{lim{i}}}") == b"1" for i in range(n)) == n
    assert applied + refused == n  # every op applied once or refused whole, never both


async def _syn_ups(p: StateProxy, n: int) -> None:
    for i in range(n):
        await p.syn_up("cnt", f"sync{i}", "add", 1)


def test_scaling_carries_every_nfs_library(shared: LocalCluster) -> None:
    lines: list[str] = []
    shared.scale(4, progress=lines.append)
    try:
        new = shared.port + 3
        assert {"cogs", "cogs_ids", "cogs_nat", "cogs_slow"} <= set(_libraries(new))
        assert any("function libraries (4) loaded" in line for line in lines), lines

        async def go() -> None:
            for nf in ("default", "ids", "nat"):
                async with StateProxy(shared.url, nf=nf) as p:
                    for i in range(200):  # some keys on the new primary
                        p.update("cnt", f"grown{i}", "add", 1)
                    await p.flush()
                    assert p.statistics().errors == 0
                    assert await p.syn_retrieve("cnt", "grown7") == 1
                    assert len(p.coord.nodes) == 4

        anyio.run(go)
    finally:
        shared.scale(3)


def test_unloading_an_nf_takes_it_off_and_leaves_the_others(shared: LocalCluster, tmp_path: Path) -> None:
    cat = tmp_path / "gone.toml"
    cat.write_text(TEST_CATALOG)
    code, out = _cli("catalog", "load", "--url", shared.url, "--nf", "gone", str(cat))
    assert code == 0, out

    async def use(nf: str) -> None:
        async with StateProxy(shared.url, nf=nf) as p:
            for i in range(100):
                p.update("cnt", f"u{i}", "add", 1)
            await p.flush()

    anyio.run(use, "ids")

    async def while_a_proxy_runs() -> tuple[int, str]:
        async with StateProxy(shared.url, nf="gone") as p:
            for i in range(100):
                p.update("cnt", f"u{i}", "add", 1)
            await p.flush()
            return await anyio.to_thread.run_sync(_cli, "catalog", "unload", "--url", shared.url, "--nf", "gone")

    code, out = anyio.run(while_a_proxy_runs)
    assert code != 0
    assert "has 1 proxy that beat in the last minute: stop them first" in out
    code, out = _cli("catalog", "unload", "--url", shared.url, "--nf", "default", "--force")
    assert code != 0
    assert "the default NF cannot be unloaded" in out
    code, out = _cli("catalog", "unload", "--url", shared.url, "--nf", "gone", "--delete-keys")
    assert code == 0, out
    assert "NF gone unloaded" in out
    deleted = int(out.split("unloaded, ")[1].split(" key")[0].replace(",", ""))
    assert deleted >= 100  # its 100 states and its bookkeeping
    for port in shared.ports[:3]:
        libs = _libraries(port)
        assert "cogs_gone" not in libs
        assert {"cogs", "cogs_ids", "cogs_nat"} <= set(libs)
        with redis.Redis(port=port) as r:
            assert not list(r.scan_iter(match="cogs@gone:*"))
            assert list(r.scan_iter(match="cogs@ids:cnt:*"))  # the others' keys stay
    code, out = _cli("monitor", "--once", "--json", "--url", shared.url)
    assert "gone" not in [n["nf"] for n in json.loads(out)["nfs"]]
    with pytest.raises(CogsError, match="not loaded"):
        anyio.run(use, "gone")
