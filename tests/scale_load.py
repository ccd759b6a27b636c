"""Steady load for the scaling tests: one proxy process.

``python -m tests.scale_load URL PREFIX STOP_FILE`` sends trigger updates (``cnt``, an
int trigger state, and ``nat``, a replica-mode int state: versions, holder tables)
over ``KEYS`` keys and a syn_up every few ms, until STOP_FILE exists; then flushes and
prints one JSON line: what it issued per key, the last syn_up value per key, any
syn_up that did not answer previous + 1, errors and re-routes. It prints ``ready``
first, once its proxy is connected.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from cogs.proxy import StateProxy

KEYS, SYN_KEYS = 300, 6


async def run(url: str, prefix: str, stop_file: str) -> dict[str, Any]:
    issued: dict[str, int] = {}
    syn: dict[str, int] = {}
    jumps: list[str] = []
    async with StateProxy(url) as p:
        print("ready", flush=True)
        n = 0
        stop = anyio.Path(stop_file)
        while not await stop.exists():
            for _ in range(50):
                for state in ("cnt", "nat"):
                    k = f"{state}/{prefix}{n % KEYS}"
                    p.update(state, k, "add", 1)
                    issued[k] = issued.get(k, 0) + 1
                n += 1
            sk = f"{prefix}s{n % SYN_KEYS}"
            got = int(await p.syn_up("nat", sk, "add", 1))
            if got != syn.get(sk, 0) + 1:
                jumps.append(f"{sk}: {syn.get(sk, 0)} + 1 -> {got}")
            syn[sk] = got
            await p.wait_room(200)
            await anyio.sleep(0.003)
        await p.flush()
        s = p.statistics()
    return {
        "issued": issued, "syn": syn, "jumps": jumps, "errors": s.errors, "rerouted": s.rerouted,
        "outages": s.outages,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    url, prefix, stop_file = argv
    print(json.dumps(anyio.run(run, url, prefix, stop_file)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
