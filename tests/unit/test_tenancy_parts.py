"""Several NFs on one coordinator, without a cluster: names per NF, two NFs' libraries
side by side in one Redis (fakeredis), limits in the catalog and in Lua, ACL rules."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from cogs.acl import monitor_rules, proxy_rules, users
from cogs.alerts import Alert
from cogs.catalog import RESERVED_NAMES, Catalog
from cogs.coordinator.client import parse_reply
from cogs.coordinator.frames import runs
from cogs.errors import CatalogError, ConfigError, OverLimit, from_redis
from cogs.keys import DEFAULT, NF_INDEX, Namespace, namespace, nf_problem
from cogs.library import assemble, library_spec
from cogs.monitor.collect import StateCounter, Tenant
from cogs.protocol import Mode
from cogs.settings import load_settings
from tests.helpers import TEST_CATALOG, make_catalog


def test_the_default_nf_keeps_the_names_single_nf_use_had() -> None:
    d = namespace()
    assert d is DEFAULT
    assert (d.prefix, d.library, d.fn_batch, d.fn_info, d.fn_release) == (
        "cogs:", "cogs", "cogs_batch", "cogs_info", "cogs_release",
    )  # fmt: skip
    assert (d.alerts_channel, d.proxy_index, d.janitor_lock) == ("cogs:alerts", "cogs:proxies",
                                                                 "cogs:janitor:{cogs:proxies}")  # fmt: skip
    assert d.state_key("cnt", "k") == "cogs:cnt:{k}"
    assert d.alert_stream(0).startswith("cogs:alerts:{")
    assert d.acl_user("proxy") == "cogs-proxy"


def test_another_nf_has_a_namespace_of_its_own() -> None:
    n = namespace("ids")
    assert (n.prefix, n.library, n.fn_batch, n.fn_info, n.fn_release) == (
        "cogs@ids:", "cogs_ids", "cogs_ids_batch", "cogs_ids_info", "cogs_ids_release",
    )  # fmt: skip
    assert n.state_key("cnt", "k") == "cogs@ids:cnt:{k}"
    assert n.discard_channel("p1") == "cogs@ids:discard:p1"
    assert n.proxy_key("p1") == "cogs@ids:proxy:{p1}"
    stream = n.alert_stream(7)
    assert stream.startswith("cogs@ids:alerts:{")
    assert n.once_key(stream, "s").startswith("cogs@ids:once:{")
    assert n.held_key(stream, "p1").startswith("cogs@ids:held:{")
    assert n.limit_key(stream).startswith("cogs@ids:limit:{")
    assert n.acl_user("monitor") == "cogs-ids-monitor"
    # no name of one NF is a prefix-match of another's: cogs:* and cogs@ids:* never overlap
    assert not n.prefix.startswith(DEFAULT.prefix)
    # the NF index and the keeper's counts: in no NF's namespace (no proxy user may write them)
    assert not NF_INDEX.startswith((DEFAULT.prefix, "cogs@"))
    assert not n.usage_prefix.startswith((DEFAULT.prefix, "cogs@"))


@pytest.mark.parametrize("bad", ["", "IDS", "1ids", "ids-x", "a" * 25, "ids:x", "ids x", 7])
def test_bad_nf_names_are_refused_naming_the_rule(bad: Any) -> None:
    assert nf_problem(bad) is not None
    with pytest.raises(ConfigError, match="1-24 characters of a-z"):
        Namespace(bad)
    with pytest.raises(ConfigError, match="COGS_NF"):
        load_settings(nf=bad if isinstance(bad, str) else str(bad))


def test_limits_live_in_the_catalog_but_not_in_its_digest() -> None:
    plain = make_catalog()
    limited = Catalog.from_toml(TEST_CATALOG + "\n[limits]\nops_per_s = 500\n")
    assert limited.limits.ops_per_s == 500
    assert plain.limits.ops_per_s is None
    assert limited.digest == plain.digest  # changing a limit does not make proxies outdated
    usage = Catalog.from_toml(TEST_CATALOG + '\n[limits]\nmax_keys = 10\nmax_memory = "1.5 MiB"\n')
    assert (usage.limits.max_keys, usage.limits.max_memory) == (10, 1572864)
    assert usage.limits.usage
    assert not limited.limits.usage
    assert usage.limits.shown() == "10 keys, 1.5 MiB per primary"
    assert usage.digest == plain.digest
    for mem, size in (("65536", 65536), ('"64KiB"', 65536), ('"2GB"', 2 * 10**9), ('"500 kb"', 500_000)):
        assert Catalog.from_toml(TEST_CATALOG + f"\n[limits]\nmax_memory = {mem}\n").limits.max_memory == size
    for text, want in (
        ("max_keys = 0", "limits.max_keys"),
        ('max_keys = "many"', "limits.max_keys"),
        ("max_memory = 10", "limits.max_memory: Input should be greater than or equal to 1024"),
        ('max_memory = "12 parsecs"', "is not a size"),
        ("max_memory = true", "is not a size"),
        ("ops_per_s = 0", "limits.ops_per_s"),
        ("opsps = 5", "have: ops_per_s, max_keys, max_memory"),
    ):
        with pytest.raises(CatalogError, match=want):
            Catalog.from_toml(TEST_CATALOG + f"\n[limits]\n{text}\n")


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_state_cannot_take_a_name_of_the_librarys_own_keys(name: str) -> None:
    # a state "limit" keyed by a slot's tag would be the rate bucket itself
    with pytest.raises(CatalogError, match=f"state '{name}': the name is the library's own"):
        Catalog.from_toml(f'[states.{name}]\nclass = "trigger"\ntype = "int"\n')


class Lib:
    """One NF's library loaded into a (shared) fakeredis."""

    def __init__(self, r: Any, nf: str, catalog: Catalog) -> None:
        self.r, self.ns, self.catalog = r, namespace(nf), catalog
        self.lib = assemble(library_spec(), catalog.json, catalog.digest, self.ns, catalog.limits.ops_per_s)
        r.function_load(self.lib.source, replace=True)

    def call(self, ops: list[list[Any]], *, stream: str | None = None, numbered: tuple[str, int, int] | None = None
             ) -> Any:  # fmt: skip
        extra: list[Any] = ["p1"]
        if numbered is not None:
            extra += [numbered[0], str(numbered[1]), str(numbered[2])]
        stream = stream or self.ns.alert_stream(0)
        return self.r.fcall(self.ns.fn_batch, 0, self.lib.token, stream, json.dumps(runs(ops)), *extra)

    def op(self, mode: int, state: str, key: str, op: str, arg: Any = None) -> list[Any]:
        return [mode, self.catalog.index(state), op, key, arg]


def test_two_nfs_libraries_side_by_side_keep_their_states_apart() -> None:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    cat = make_catalog()
    a, b = Lib(r, "default", cat), Lib(r, "ids", cat)
    assert json.loads(r.fcall("cogs_info", 0))["nf"] == "default"
    parse_reply(a.call([a.op(Mode.UPDATE, "cnt", "k", "add", "5")]))
    parse_reply(b.call([b.op(Mode.UPDATE, "cnt", "k", "add", "7")]))
    assert r.get("cogs:cnt:{k}") == b"5"
    assert r.get("cogs@ids:cnt:{k}") == b"7"
    info = json.loads(r.fcall("cogs_ids_info", 0))
    assert info["nf"] == "ids"
    assert "limits" not in info  # none
    # an NF's batch names a stream of its own: another NF's is refused before anything runs
    with pytest.raises(Exception, match="BAD_FRAME alert stream must be a cogs@ids:alerts:"):
        b.call([b.op(Mode.UPDATE, "cnt", "k", "add", "1")], stream=DEFAULT.alert_stream(0))
    assert r.get("cogs@ids:cnt:{k}") == b"7"
    # reloading one NF's library leaves the other's alone
    Lib(r, "ids", Catalog.from_toml(TEST_CATALOG + "\n[limits]\nops_per_s = 9\n"))
    assert "limits" not in json.loads(r.fcall("cogs_info", 0))
    assert json.loads(r.fcall("cogs_ids_info", 0))["limits"] == {"ops_per_s": 9}


def test_the_ops_rate_limit_refuses_whole_batches_once_the_bucket_is_spent() -> None:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    lib = Lib(r, "lim", Catalog.from_toml(TEST_CATALOG + "\n[limits]\nops_per_s = 100\n"))
    ops = [lib.op(Mode.UPDATE, "cnt", f"k{i}", "add", "1") for i in range(150)]
    first = parse_reply(lib.call(ops))
    assert first.applied == 150  # admitted while the bucket was positive: it goes into debt
    with pytest.raises(Exception, match=r"LIMIT NF lim is over its limit of 100 ops/s on this node: 1 op") as e:
        lib.call([lib.op(Mode.UPDATE, "cnt", "x", "add", "1")])
    assert r.get("cogs@lim:cnt:{x}") is None  # refused whole: nothing applied
    err = from_redis(e.value, "n1")
    assert isinstance(err, OverLimit)
    assert "ops_per_s" in str(err)
    # a numbered batch refused is recorded: its re-send gets the same refusal, never applies
    for _ in range(2):
        with pytest.raises(Exception, match="LIMIT"):
            lib.call([lib.op(Mode.UPDATE, "cnt", "y", "add", "1")], numbered=("ab" * 16, 1, 0))
    assert r.get("cogs@lim:cnt:{y}") is None
    bucket = r.hgetall(namespace("lim").limit_key(namespace("lim").alert_stream(0)))
    assert float(bucket[b"b"]) < 0  # the debt the first batch ran up
    # an empty keepalive batch is never refused
    assert parse_reply(lib.call([])).applied == 0


def test_acl_rules_confine_each_nf_to_its_namespace() -> None:
    ids = namespace("ids")
    assert proxy_rules(ids)[:5] == ["resetkeys", "~cogs@ids:*", "%R~cogs!usage@ids:*", "resetchannels", "&cogs@ids:*"]
    assert proxy_rules()[:5] == ["resetkeys", "~cogs:*", "%R~cogs!usage:*", "resetchannels", "&cogs:*"]
    assert "%R~cogs!usage@ids:*" in monitor_rules(ids)
    assert "%R~cogs!*" in monitor_rules()
    assert "%R~cogs@ids:*" in monitor_rules(ids)
    assert "%R~cogs:*" not in monitor_rules(ids)
    assert "&cogs@ids:alerts" in monitor_rules(ids)
    assert {"%R~cogs:*", "%R~cogs@*"} <= set(monitor_rules())  # the operator's monitor sees every NF
    assert [u.name for u in users("x" * 12, "y" * 12, ids)] == ["cogs-ids-proxy", "cogs-ids-monitor"]


def test_the_monitor_counts_each_nf_apart() -> None:
    cat = make_catalog()
    counter = StateCounter([Tenant(DEFAULT, cat), Tenant(namespace("ids"), cat)])
    assert counter.match == "cogs*"
    from collections import Counter

    counts: Counter[tuple[str, str, str]] = Counter()
    for k in (b"cogs:cnt:{a}", b"cogs@ids:cnt:{a}", b"cogs@ids:cnt:{b}", b"cogs@ids:nat:{x}:r", b"cogs@nat:cnt:{a}",
              b"cogs:alerts:{1}"):  # fmt: skip
        counter._tally(counts, k)
    assert counts == Counter({("default", "cnt", ""): 1, ("ids", "cnt", ""): 2, ("ids", "nat", ":r"): 1})
    assert StateCounter([Tenant(namespace("ids"), cat)]).match == "cogs@ids:*"


def test_an_alert_knows_its_nf_by_its_stream() -> None:
    fields = {b"state": b"hits", b"key": b"k", b"value": b"11", b"checker": b"threshold", b"time": b"1000"}
    a = Alert.from_stream(b"1-0", fields, namespace("ids").alert_stream(3))
    assert a.nf == "ids"
    assert a.to_json()["nf"] == "ids"
    assert a.to_notice()["note"] == "cogs_ids::hits"
    d = Alert.from_stream(b"1-0", fields, DEFAULT.alert_stream(3))
    assert d.nf == "default"
    assert d.to_notice()["note"] == "cogs::hits"
