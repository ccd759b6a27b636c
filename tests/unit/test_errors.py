"""Redis error replies become the right cogs errors: transient ones (a node loading,
demoted to replica, a cluster re-forming) are retried, the rest are refusals."""

from __future__ import annotations

import pytest
from redis._parsers.base import BaseParser

from cogs.coordinator.client import translate_error
from cogs.errors import BadFrame, CogsError, CoordinatorUnavailable, LibraryOutdated


@pytest.mark.parametrize(
    "reply",
    [
        "READONLY You can't write against a read only replica.",
        "LOADING Redis is loading the dataset in memory",
        "CLUSTERDOWN The cluster is down",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    ],
)
def test_transient_replies_are_retried(reply: str) -> None:
    e = BaseParser.parse_error(reply)  # as redis-py hands them over: the code stripped
    got = translate_error(e, "10.0.0.1:7000")
    assert isinstance(got, CoordinatorUnavailable)
    assert reply.split(maxsplit=1)[0] in str(got)
    assert "10.0.0.1:7000" in str(got)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("OUTDATED the coordinator runs cogs library x:y", LibraryOutdated),
        ("ERR Function not found", LibraryOutdated),
        ("BAD_FRAME ops must be a flat JSON array", BadFrame),
        ("ERR something else entirely", CogsError),
    ],
)
def test_refusals(reply: str, kind: type[CogsError]) -> None:
    got = translate_error(BaseParser.parse_error(reply), "n:1")
    assert type(got) is kind
    assert not isinstance(got, CoordinatorUnavailable)
