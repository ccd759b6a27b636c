"""The lab's pieces that need no root: names, addresses, units, the switch's link
model and forwarding, and the clear error without privileges."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from cogs.cli import main
from cogs.errors import ConfigError
from cogs.lab import LabPermissionError, lab_tag
from cogs.lab import netns as lab_netns
from cogs.lab.lab import plan_hosts, prefix_of
from cogs.lab.switch import VNET_HDR, Direction, Port, Switch
from cogs.lab.units import parse_loss, parse_rate, parse_us

LAB_NET = ipaddress.ip_network("198.18.0.0/15")


def test_names_are_unique_per_dir_and_fit_ifnamsiz(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert lab_tag(a) != lab_tag(b)
    assert lab_tag(a) == lab_tag(tmp_path / "x" / ".." / "a")  # the resolved path
    hosts = plan_hosts(a, 6, 250)
    assert len({h.link for h in hosts.values()}) == len(hosts) == 256
    assert len({h.mac for h in hosts.values()}) == len(hosts)
    for h in hosts.values():
        assert len(h.link) <= 15  # IFNAMSIZ - 1
        assert h.link.startswith(f"cl{lab_tag(a)}")
        assert h.netns == prefix_of(a) + h.name
        assert ipaddress.ip_address(h.addr) in LAB_NET
        assert int(h.mac.split(":")[0], 16) & 2  # locally administered
    assert [h.name for h in hosts.values()][:7] == ["node1", "node2", "node3", "node4", "node5", "node6", "mb1"]
    assert hosts["node1"].addr == "198.18.1.1"
    assert hosts["mb250"].addr == "198.18.2.250"


@pytest.mark.parametrize(
    ("text", "us"), [("200us", 200), ("1.5ms", 1500), ("0.2s", 200_000), ("250", 250), ("500ns", 0.5), (0, 0)]
)
def test_durations(text: str | int, us: float) -> None:
    assert parse_us(text) == pytest.approx(us)


def test_rates_and_loss() -> None:
    assert parse_rate("1gbit") == 1e9
    assert parse_rate("100mbit") == 1e8
    assert parse_rate("10mbps") == 8e7
    assert parse_rate("0") is None
    assert parse_rate(None) is None
    assert parse_loss("1%") == pytest.approx(0.01)
    assert parse_loss("0.25") == 0.25
    for fn, arg in ((parse_us, "fast"), (parse_us, "-1ms"), (parse_rate, "1 gbps please"), (parse_rate, "1bit"),
                    (parse_loss, "150%"), (parse_loss, "x")):  # fmt: skip
        with pytest.raises(ConfigError):
            fn(arg)


def test_a_link_delays_serializes_and_keeps_order() -> None:
    rng = random.Random(1)
    p = Port("mb1", "x", "02:00:00:00:00:01", delay_us=100, rate_bps=8e6)  # 1 byte per us
    d = Direction()
    t1 = p.cross(d, 1.0, 1000, rng)  # 1000 us on the wire, then 100 us of delay
    t2 = p.cross(d, 1.0, 1000, rng)  # queued behind the first
    assert t1 == pytest.approx(1.0 + 1100e-6)
    assert t2 == pytest.approx(1.0 + 2100e-6)
    j = Port("mb2", "y", "02:00:00:00:00:02", delay_us=100, jitter_us=90)
    d = Direction()
    outs = [j.cross(d, 2.0 + i * 1e-6, 100, rng) or 0.0 for i in range(200)]
    assert outs == sorted(outs)  # jitter never reorders a link direction
    assert min(outs) >= 2.0 + 10e-6
    lossy = Port("mb3", "z", "02:00:00:00:00:03", loss=0.5)
    lost = sum(lossy.cross(Direction(), 0.0, 10, rng) is None for _ in range(2000))
    assert 800 < lost < 1200
    assert lossy.lost == lost


def _frame(dst: str, size: int = 100) -> bytes:
    return bytes(VNET_HDR) + bytes.fromhex(dst.replace(":", "")) + bytes(size - 6)


def test_switch_forwards_by_mac_and_floods_broadcast(tmp_path: Path) -> None:
    macs = ["02:c6:12:00:01:01", "02:c6:12:00:01:02", "02:c6:12:00:02:01"]
    cfg = {
        "ports": [{"name": f"h{i}", "ifname": f"x{i}", "mac": m, "delay_us": 50.0} for i, m in enumerate(macs)],
        "sock": str(tmp_path / "s.sock"),
        "seed": 3,
    }
    sw = Switch(cfg)
    sw._ingress(0, _frame(macs[2]), 10.0)
    [(due, _, out, frame)] = sw.heap
    assert out == 2
    assert due == pytest.approx(10.0 + 100e-6)  # up the sender's link, down the receiver's: 2 x 50 us
    assert frame[VNET_HDR : VNET_HDR + 6] == bytes.fromhex(macs[2].replace(":", ""))
    sw._ingress(1, _frame("ff:ff:ff:ff:ff:ff"), 10.0)
    assert sorted(o for _, _, o, _ in sw.heap[1:]) == [0, 2]  # everyone but the sender
    sw._ingress(0, _frame("02:00:00:00:99:99"), 10.0)
    assert sw.unknown == 1
    assert sw.handle({"op": "set", "port": "h2", "delay_us": 7, "rate_bps": None})["port"]["delay_us"] == 7
    stats = sw.handle({"op": "stats"})
    assert [p["rx_frames"] for p in stats["ports"]] == [2, 1, 0]
    assert not sw.handle({"op": "nope"})["ok"]


def test_without_privileges_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tcogs\nCapEff:\t0000000000000000\n")
    monkeypatch.setattr(lab_netns, "PROC_STATUS", status)
    assert lab_netns.missing_privileges() == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    with pytest.raises(LabPermissionError, match="needs root"):
        lab_netns.require_privileges()
    r = CliRunner().invoke(main, ["lab", "up", "--dir", str(tmp_path / "lab")])
    assert r.exit_code == 2, r.output  # a configuration problem, one line
    assert "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN missing)" in r.output
    r = CliRunner().invoke(main, ["lab", "down", "--dir", str(tmp_path / "lab")])
    assert r.exit_code == 2
    assert "Traceback" not in r.output
