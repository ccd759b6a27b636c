"""Bench helpers that run no bench: process placement."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cogs.benchmarks.common import Placement


def test_placement_split_pins_and_restores() -> None:
    cpus = os.sched_getaffinity(0)
    place = Placement("split")
    if len(cpus) < 2:
        assert place.mode == "shared"
        assert "2 CPUs" in place.note
        return
    assert place.rest
    assert place.tested
    assert not place.rest & place.tested
    assert place.rest | place.tested == cpus
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        place.pin(child.pid, "tested")
        assert os.sched_getaffinity(child.pid) == place.tested
        with place.spawning_rest():
            assert os.sched_getaffinity(0) == place.rest  # what is spawned here inherits it
        assert os.sched_getaffinity(0) == cpus
        place.restore()
        assert os.sched_getaffinity(child.pid) == cpus
    finally:
        child.kill()
        child.wait()
    place.pin(child.pid, "rest")  # a process that is gone: nothing to do, no error
    assert place.describe() == {"mode": "split", "tested_cpus": sorted(place.tested), "rest_cpus": sorted(place.rest)}


def test_placement_shared_touches_nothing_and_bad_mode_is_named() -> None:
    before = os.sched_getaffinity(0)
    place = Placement("shared")
    place.pin(os.getpid(), "rest")
    with place.spawning_rest():
        assert os.sched_getaffinity(0) == before
    assert os.sched_getaffinity(0) == before
    assert place.describe()["mode"] == "shared"
    with pytest.raises(ValueError, match="unknown placement 'split-ish'"):
        Placement("split-ish")
