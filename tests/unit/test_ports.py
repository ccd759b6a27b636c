"""Free port picking: processes with different COGS_PORT_SHARE shares never pick the same port."""

from __future__ import annotations

import pytest

from cogs.errors import ClusterError
from cogs.ports import free_port_base


def _picked(
    monkeypatch: pytest.MonkeyPatch, share: str, n: int, start: int = 20000, stop: int = 40000, bus: bool = True
) -> set[int]:
    monkeypatch.setenv("COGS_PORT_SHARE", share)
    ports: set[int] = set()
    for _ in range(30):
        base = free_port_base(n, start, stop, bus=bus)
        ports |= {base + i for i in range(n)} | ({base + 10000 + i for i in range(n)} if bus else set())
    return ports


@pytest.mark.parametrize("n", [1, 3, 8])
def test_shares_never_meet(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    # each share's nodes and bus ports, and what a web cache asks for (other ranges, no bus)
    picked = [
        _picked(monkeypatch, f"{k}/4", n) | _picked(monkeypatch, f"{k}/4", n, start=21000, stop=26000, bus=False)
        for k in range(4)
    ]
    for k in range(4):
        for j in range(k):
            assert not picked[k] & picked[j], (k, j)


def test_no_share_picks_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COGS_PORT_SHARE", raising=False)
    bases = {free_port_base(1) for _ in range(40)}
    assert len({b // 64 % 4 for b in bases}) > 1  # not confined to one share's blocks


@pytest.mark.parametrize("raw", ["x", "1", "4/4", "-1/2", "0/0", "0/99", "1/2/3"])
def test_bad_share_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("COGS_PORT_SHARE", raw)
    with pytest.raises(ClusterError, match="COGS_PORT_SHARE"):
        free_port_base(3)
