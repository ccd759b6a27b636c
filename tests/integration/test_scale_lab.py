"""The elastic coordinator of test_scale.py on the lab: node hosts join and leave while
a proxy on a middlebox host keeps sending; `cogs bench scale` in one lab. (A file of
its own: lab tests live in files named *lab.py, which the parallel run keeps on one
worker, one after another: tests/parallel.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from cogs.lab import Lab, lab_tag, scale_lab
from cogs.lab.netns import missing_privileges, namespaces
from tests.helpers import TEST_CATALOG
from tests.integration.test_scale import _check, _ops, _read, _results, _start_load


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.skipif(bool(missing_privileges()), reason="the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
def test_lab_grows_and_shrinks_under_load(tmp_path: Path) -> None:
    """The same on the lab: new node hosts (namespace, link, address) join, then leave,
    while a proxy on a middlebox host keeps sending."""
    cat = tmp_path / "catalog.toml"
    cat.write_text(TEST_CATALOG)
    stop = tmp_path / "stop"
    with Lab.up(tmp_path / "lab", nodes=3, replicas=0, middleboxes=1, rtt="200us", catalog=cat) as lab:
        procs = _start_load(["ip", "netns", "exec", lab.hosts["mb1"].netns], lab.url, 1, stop)
        try:
            time.sleep(1.0)
            grow = scale_lab(lab, 6)
            assert grow.after == (6, 6), grow
            assert grow.added == ("node4", "node5", "node6"), grow
            st = lab.status()
            assert st.cluster["state"] == "ok", st.cluster
            assert st.cluster["primaries"] == 6, st.cluster
            assert {"node4", "node5", "node6"} <= {h.name for h in st.hosts if h.up}
            time.sleep(1.0)
            shrink = scale_lab(Lab.from_dir(lab.dir), 3)  # another process would find it so
            assert shrink.removed == ("node4", "node5", "node6"), shrink
        finally:
            results = _results(procs, stop)
        _check(results, lab.call("mb1", lambda: anyio.run(_read, lab.url, _ops(results))))
        st = Lab.from_dir(lab.dir).status()
        assert st.cluster["primaries"] == 3, st.cluster
        assert st.cluster["nodes"] == 3, st.cluster
        assert not [n for n in namespaces(f"cogs-{lab_tag(lab.dir)}-") if n.endswith(("node4", "node5", "node6"))]


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.skipif(bool(missing_privileges()), reason="the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
def test_bench_scale_smoke(tmp_path: Path) -> None:
    """`cogs bench scale` (one round): both sizes measured in one lab, every count exact."""
    from cogs.benchmarks.scale import main

    out = tmp_path / "scale.json"
    data = main(quick=True, out=out, rounds=1)
    s = data["summary"]
    assert s["read_back_exact"]
    assert set(s["by_primaries"]) == {"3", "6"}
    assert all(v["applied_ops_per_s"]["median"] > 0 for v in s["by_primaries"].values())
    assert s["by_primaries"]["6"]["largest_node_share"]["median"] < 0.3  # six primaries share the load
    assert [x["to"] for x in data["scales"]] == [6]
    assert out.with_suffix(".md").read_text().startswith("# Coordinator capacity at 3 vs 6 primaries")
