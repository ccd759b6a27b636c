"""What bounding reads costs the retrieve hot path: the Lua library of two checkouts
(before, after) on two standalone redis-servers, one FCALL of N retrieves per case,
the cases interleaved (order swapped every repeat); the server time of each call
(INFO commandstats) per op, median of the repeats.

usage: python scripts/read_bounds_cost.py BEFORE_DIR AFTER_DIR [REPEATS]
  e.g. python scripts/read_bounds_cost.py /work/main . 41
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

N = 2000
CATALOG = """
[states.s]
class = "direct"
type = "string"
[states.r]
class = "direct"
type = "string"
mode = "replica"
[states.i]
class = "direct"
type = "int"
[states.m]
class = "direct"
type = "set"
[states.h]
class = "direct"
type = "map"
"""
ASSEMBLE = f"""
import json, sys
from cogs.catalog import Catalog
from cogs.library import assemble, library_spec
c = Catalog.from_toml({CATALOG!r})
lib = assemble(library_spec([]), c.json, c.digest)
print(json.dumps([lib.token, lib.source, {{s.name: c.index(s.name) for s in c}}]))
"""
#: case -> (mode, state, op): RETRIEVE = 2, RETRIEVE_REPLICA = 4 (cogs/protocol.py)
CASES = {
    "string get": (2, "s", "get"),
    "replica get": (4, "r", "get"),
    "int get": (2, "i", "get"),
    "set members (10)": (2, "m", "members"),
    "map all (5)": (2, "h", "all"),
}


def library(checkout: Path) -> tuple[str, str, dict[str, int]]:
    """The token, source and state indexes of the library ``checkout``'s cogs assembles."""
    out = subprocess.run([sys.executable, "-c", ASSEMBLE], env={"PYTHONPATH": str(checkout.resolve())},
                         capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout  # fmt: skip
    token, source, index = json.loads(out)
    return token, source, index


def server(port: int) -> tuple[subprocess.Popen[bytes], redis.Redis]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)  # fmt: skip
    r = redis.Redis(port=port)
    for _ in range(200):
        try:
            r.ping()
            return proc, r
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not start")


def fill(r: redis.Redis) -> None:
    for i in range(N):
        r.set(f"cogs:s:{{k{i}}}", "x" * 100)
        r.set(f"cogs:r:{{k{i}}}", "x" * 100)
        r.set(f"cogs:i:{{k{i}}}", i)
        r.sadd(f"cogs:m:{{k{i}}}", *[f"member{j}" for j in range(10)])
        r.hset(f"cogs:h:{{k{i}}}", mapping={f"f{j}": "v" * 20 for j in range(5)})


def main() -> None:
    dirs = {"before": Path(sys.argv[1]), "after": Path(sys.argv[2])}
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 21
    procs, sides = [], []
    try:
        for k, (name, d) in enumerate(dirs.items()):
            token, source, index = library(d)
            proc, r = server(23611 + k)
            procs.append(proc)
            r.function_load(source, replace=True)
            fill(r)
            sides.append((name, r, token, index))
        got: dict[str, dict[str, list[float]]] = {c: {n: [] for n in dirs} for c in CASES}
        for rep in range(repeats):
            for case, (mode, state, op) in CASES.items():
                for name, r, token, index in sides if rep % 2 else sides[::-1]:
                    ops: list[object] = [mode, index[state], op, N]
                    for i in range(N):
                        ops += [f"k{i}", None]
                    r.config_resetstat()
                    reply = r.fcall("cogs_batch", 0, token, "cogs:alerts:{0}", json.dumps(ops), "bench")
                    usec = r.info("commandstats")["cmdstat_fcall"]["usec"]
                    if reply[0] != N or reply[1]:
                        raise RuntimeError(f"{name} {case}: {reply[1][:2]}")
                    got[case][name].append(usec / N)
        print(f"median of {repeats} repeats, server us per op in one FCALL of {N} retrieves")
        for case, by in got.items():
            b, a = statistics.median(by["before"]), statistics.median(by["after"])
            print(f"  {case:18s} before {b:6.3f}  after {a:6.3f}  ({a - b:+.3f} us, {(a / b - 1) * 100:+.1f}%)")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
