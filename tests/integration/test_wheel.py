"""The wheel carries lua/ and checkers/: a plain install into a fresh venv loads the library."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import Standalone

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys, anyio, cogs
from cogs.coordinator.library import source_dirs
from cogs.coordinator.client import Coordinator
from cogs.catalog import Catalog
lua, chk = source_dirs()
assert "site-packages" in str(lua) and lua.name == "_lua", lua
assert (chk / "cardinality.lua").exists()
async def go():
    async with Coordinator(url=sys.argv[1]) as co:
        cat = Catalog.from_toml("[states.x]\\nclass='trigger'\\ntype='set'")
        await co.load_library(cat)
        stored, token = await co.stored_catalog(cat)
        print(json.dumps({"file": cogs.__file__, "digest": stored.digest, "want": cat.digest}))
anyio.run(go)
"""


@pytest.mark.slow
def test_wheel_installs_and_loads_library(tmp_path: Path, standalone: Standalone) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = dist.glob("cogs_nf-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "cogs/_lua/core.lua" in names
    assert "cogs/_lua/types/int.lua" in names
    assert "cogs/_checkers/threshold.lua" in names
    assert "cogs/redis.conf" in names
    assert "cogs/catalogs/default.toml" in names
    assert "cogs/py.typed" in names

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # dependencies come from this test run's environment; cogs itself only from the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True,
    )
    r = subprocess.run([py, "-c", PROBE, standalone.url], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out["file"].startswith(str(venv))
    assert out["digest"] == out["want"]
    r = subprocess.run([venv / "bin" / "cogs", "catalog", "types"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "cardinality" in r.stdout
