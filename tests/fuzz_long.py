"""A long bad-input run: the property-based cases of tests/fuzz_cases.py with a
large budget, against fakeredis, a real redis-server started for the run and a peer server.
Writes bench/results/fuzz.json with how many inputs each case tried. Test tooling (it
needs the dev extra and the tests package), run from the repository's top:

    python -m tests.fuzz_long [--examples 20000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from cogs.ports import free_port_base
from tests import fuzz_cases
from tests.helpers import LuaHarness, fake_harness


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=20_000, help="inputs per case")
    ap.add_argument("--out", type=Path, default=Path("bench/results/fuzz.json"))
    a = ap.parse_args()
    port = free_port_base(1)
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d],
            stdout=subprocess.DEVNULL,
        )
        try:
            real = redis.Redis(port=port)
            for _ in range(100):
                try:
                    real.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            cases: dict[str, Callable[[], int]] = {
                "lua_ops_fakeredis": lambda: fuzz_cases.lua_ops(fake_harness(), a.examples),
                "lua_ops_redis": lambda: fuzz_cases.lua_ops(LuaHarness(real), a.examples),
                "frames_fakeredis": lambda: fuzz_cases.lua_frames(fake_harness(), a.examples),
                "frames_redis": lambda: fuzz_cases.lua_frames(LuaHarness(real), a.examples),
                "catalogs": lambda: fuzz_cases.catalogs(a.examples),
                "peer_frames": lambda: fuzz_cases.peer_frames(a.examples),
            }
            results = {}
            for name, run in cases.items():
                t0 = time.perf_counter()
                tried = run()
                results[name] = {"inputs": tried, "seconds": round(time.perf_counter() - t0, 1), "failures": 0}
                print(f"{name}: {tried} inputs, no failure ({results[name]['seconds']} s)", flush=True)
        finally:
            server.terminate()
            server.wait(10)
    total = sum(r["inputs"] for r in results.values())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"bench": "fuzz", "summary": {"inputs": total, "failures": 0}, "cases": results}, indent=2)
    )
    print(f"{total} inputs, 0 failures -> {a.out}")


if __name__ == "__main__":
    main()
