"""A network function in plain synchronous Python, on cogs global state.

Each middlebox runs this on its share of the traffic (here: one capture file). For
every connection attempt (a TCP SYN without ACK) it adds the destination port to
the global set ``scan_ports[src>dst]``; the coordinator's checker (15 distinct ports
in 5 minutes, see cogs/catalogs/default.toml) decides, however the probes were split
over middleboxes. No ``async``: BlockingStateProxy runs the proxy on a background
thread, and ``update()`` returns at once (batched and coalesced).

    python examples/sync_portscan.py --url redis://127.0.0.1:7000 CAPTURE.pcap
"""

from __future__ import annotations

import argparse

from cogs.nf.packets import ACK, SYN, TCP, read_trace
from cogs.proxy.blocking import BlockingStateProxy


def main() -> None:
    ap = argparse.ArgumentParser(description="Port-scan detection, synchronous, on cogs global state.")
    ap.add_argument("capture", help="a pcap or pcapng file")
    ap.add_argument("--url", default=None, help="any coordinator node (default: COGS_URL)")
    a = ap.parse_args()

    probed: set[str] = set()
    with BlockingStateProxy(a.url) as proxy:
        for p in read_trace(a.capture):
            if p.proto == TCP and p.flags & SYN and not p.flags & ACK:  # an attempt, not an answer
                key = f"{p.src}>{p.dst}"
                proxy.update("scan_ports", key, "add", str(p.dport))
                probed.add(key)
        proxy.flush()  # all applied at the coordinator; now ask it
        for key in sorted(probed):
            ports = proxy.syn_retrieve("scan_ports", key, "card")
            if proxy.syn_check("scan_ports", key):  # the catalog's checker, at the coordinator
                print(f"port scan: {key} probed {ports} ports (counted over every middlebox)")


if __name__ == "__main__":
    main()
