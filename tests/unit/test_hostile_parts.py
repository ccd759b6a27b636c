"""The pure parts that read what a proxy user may have written (no Redis): discard
messages, proxy ids, metrics targets, alert times, replies a decoder refuses."""

from __future__ import annotations

import time

import pytest

from cogs.alerts import RESUME_MARGIN_MS, Alert, _Seen
from cogs.errors import BadReply, bad_reply
from cogs.keys import proxy_id_problem, valid_proxy_id
from cogs.metrics.exporter import CoordinatorView, targets
from cogs.monitor.collect import ProxyView, Snapshot
from cogs.proxy.discard import NotADiscard, parse_discards


def test_discards_as_the_library_publishes_them() -> None:
    assert parse_discards(b'[3, "a%7Db", "1764000000000001", 4, "k", "2"]') == [
        ((3, "a}b"), 1764000000000001),
        ((4, "k"), 2),
    ]
    assert parse_discards(b"[]") == []


@pytest.mark.parametrize(
    "data",
    [b"", b"x", b"\xff", b"{}", b"[1]", b'[true, "k", "1"]', b'[0, "k", "1"]', b'[1, "", "1"]', b'[1, "k", "1.5"]',
     b'[1, "k", "-1"]', b'[1, "k", "99999999999999999999"]', b'[1, "k", "\xd9\xa3"]', b'[1, "k", 1e30]',
     b"[" * 50_000],
)  # fmt: skip
def test_anything_else_is_not_a_discard(data: bytes) -> None:
    with pytest.raises(NotADiscard) as e:
        parse_discards(data)
    assert len(str(e.value)) < 200


def test_proxy_ids_follow_the_librarys_rule() -> None:
    assert valid_proxy_id(b"host-1:x.y_z") == "host-1:x.y_z"
    for bad in (b"", b"a b", b"\xff", b"x" * 65, b"id\n", "é"):
        assert valid_proxy_id(bad) is None
        assert proxy_id_problem(bad) is not None


def _view(metrics: str) -> ProxyView:
    return ProxyView("p", "h", "-", 0.0, True, None, 0.0, 0.0, 0, 0, 0, metrics)


def test_only_host_port_addresses_become_targets() -> None:
    view = CoordinatorView()
    good = ["127.0.0.1:9470", "[::1]:9470", "mb-1.lab:9470"]
    bad = ["http://evil/", "x:1/metrics", "a b:1", "", "h" * 300 + ":1"]
    view.snapshot = Snapshot("u", time.time(), proxies=[_view(m) for m in good + bad])
    assert [t["targets"] for t in targets(view)] == [[m] for m in good]


def test_an_alert_from_the_future_counts_as_now() -> None:
    seen = _Seen()
    forged = Alert("1-0", "s", "k", "1", "threshold", {}, 253_402_300_799_999, 0)
    assert seen.add(forged)
    assert seen.newest <= time.time() * 1000 + RESUME_MARGIN_MS + 1000


def test_a_reply_a_decoder_refuses_is_quoted_bounded() -> None:
    e = bad_reply(ValueError("x"), [b"\xff" * 10_000, 1, -1], state="nat", key="k", op="get")
    assert isinstance(e, BadReply)
    assert str(e).startswith("BAD_REPLY state=nat key='k' op='get': ")
    assert "(10000 bytes, sha1 " in str(e)
    assert len(str(e)) < 400  # a 40-byte prefix (escaped), the length and a digest
