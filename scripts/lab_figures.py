"""The lab's own figures: ping round trips and TCP throughput through the link switch.

    sudo .venv/bin/python scripts/lab_figures.py [--rtt 200us] [--rate 1gbit] [--dir /tmp/lab-figures]

Builds a 6-node lab with 2 middleboxes, pings node1 and mb2 from mb1 (50 each, 10 ms
apart), sends TCP bulk data mb1 -> mb2 for 3 s, prints the figures and the switch's
counters, and tears the lab down. Traffic stays on the lab's 198.18.0.0/16.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

from cogs.lab import Lab

RECEIVER = """
import socket
s = socket.create_server(("0.0.0.0", 5001))
c, _ = s.accept()
n = 0
while b := c.recv(1 << 20):
    n += len(b)
print(n)
"""
SENDER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5001))
buf, n, t = bytes(1 << 20), 0, time.monotonic()
while time.monotonic() - t < 3:
    c.sendall(buf)
    n += len(buf)
c.close()
print(n / (time.monotonic() - t))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", default="200us")
    ap.add_argument("--rate", default=None)
    ap.add_argument("--dir", default="/tmp/lab-figures")
    a = ap.parse_args()
    with Lab.up(a.dir, nodes=6, middleboxes=2, rtt=a.rtt, rate=a.rate) as lab:
        print(f"lab: --rtt {a.rtt} --rate {a.rate or 'unlimited'}")
        for dst in ("node1", "mb2"):
            r = lab.exec("mb1", ["ping", "-n", "-c", "50", "-i", "0.01", lab.hosts[dst].addr], timeout=60)
            ms = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
            print(
                f"ping mb1 -> {dst}: median {statistics.median(ms) * 1000:.0f} us "
                f"(min {min(ms) * 1000:.0f}, max {max(ms) * 1000:.0f}, n={len(ms)})"
            )
        rx = lab.popen("mb2", [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        tx = lab.exec("mb1", [sys.executable, "-c", SENDER, lab.hosts["mb2"].addr], timeout=60, check=True)
        got = int(rx.communicate(timeout=60)[0])
        print(f"TCP mb1 -> mb2: {float(tx.stdout) * 8 / 1e6:,.0f} Mbit/s for 3 s ({got:,} bytes received)")
        print(f"switch: {lab.status().switch}")


if __name__ == "__main__":
    main()
