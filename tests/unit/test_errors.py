"""Redis error replies become the right cogs errors (errors.from_redis, the one
boundary): transient ones (a node loading, demoted to replica, a cluster down or
re-forming, the library's UNAVAILABLE and GAP) are retried, the rest are refusals;
caller input quoted in an error is bounded."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from cogs.errors import (
    BadFrame,
    BadKey,
    ChannelError,
    CogsError,
    CoordinatorUnavailable,
    LibraryOutdated,
    from_redis,
    refuse,
    show,
)


@pytest.mark.parametrize(
    "reply",
    [
        "READONLY You can't write against a read only replica.",
        "LOADING Redis is loading the dataset in memory",
        "CLUSTERDOWN The cluster is down",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "NOREPLICAS Not enough good replicas to write.",
        "ERR Script attempted to execute a command while the cluster is down",
        "OOM command not allowed when used memory > 'maxmemory'.",
        "BUSY Redis is busy running a script.",
        "UNAVAILABLE Script attempted to execute a command while the cluster is down",
        "GAP 5 batch 7 came before 5",
    ],
)
def test_transient_replies_are_retried(reply: str) -> None:
    e = BaseParser.parse_error(reply)  # as redis-py hands them over: some with the code stripped
    got = from_redis(e, "10.0.0.1:7000")
    assert isinstance(got, CoordinatorUnavailable)
    assert "10.0.0.1:7000" in str(got)


def test_network_errors_are_transient() -> None:
    assert isinstance(from_redis(ConnectionResetError("reset"), "n:1"), CoordinatorUnavailable)
    assert isinstance(from_redis(TimeoutError(), "n:1"), CoordinatorUnavailable)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("OUTDATED the coordinator runs cogs library x:y", LibraryOutdated),
        ("ERR Function not found", LibraryOutdated),
        ("BAD_FRAME ops must be a flat JSON array", BadFrame),
        ("LOST 3 batches up to 5 were acknowledged, this node has 3", ChannelError),
        ("DUP_UNKNOWN batch 4 was applied but its reply is gone", ChannelError),
        ("ERR something else entirely", CogsError),
    ],
)
def test_refusals(reply: str, kind: type[CogsError]) -> None:
    got = from_redis(BaseParser.parse_error(reply), "n:1")
    assert type(got) is kind
    assert not isinstance(got, CoordinatorUnavailable)


def test_quoted_input_is_bounded() -> None:
    huge = "k" * 1_000_000
    err = refuse(BadKey, "too long", state="s", key=huge, op="add")
    assert len(str(err)) < 300
    assert "1000000 chars" in str(err)
    assert show("x" * 100) != show("x" * 101)  # two long values stay told apart (length, digest)
    assert show(b"\x00" * 10_000).startswith("b'")
    assert "\udcff" not in show("\udcff" * 100).encode("utf-8", "backslashreplace").decode()
