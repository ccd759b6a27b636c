"""Long commands say what they are doing, as a person sees it in a terminal (tmux)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cogs.ports import free_port_base
from tests.conftest import Standalone, load_default_catalog


def _screens(session: str, until: str, timeout: float) -> list[str]:
    """Every distinct screen of the tmux pane until one shows ``until``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout  # a wait, not a timing goal
    while time.monotonic() < deadline:
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], check=False, capture_output=True, text=True
        ).stdout
        if not seen or screen != seen[-1]:
            seen.append(screen)
        if until in screen:
            break
        time.sleep(0.05)
    return seen


@pytest.mark.slow
def test_trace_synth_and_nf_run_show_progress_in_a_terminal(tmp_path: Path, standalone: Standalone) -> None:
    session = f"cogs-progress-{free_port_base(1)}"
    pcap = tmp_path / "t.pcap"
    cogs = f"{sys.executable} -m cogs.cli"
    script = (
        f"{cogs} trace synth --out {pcap} --benign-flows 6000 && "
        f"{cogs} nf run portscan --trace {pcap} -n 2 --url {standalone.url} && echo ALL-DONE; sleep 30"
    )
    standalone.client().flushall()
    load_default_catalog(standalone.url)
    try:
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "40", script], check=True)
        screens = _screens(session, "ALL-DONE", timeout=120)
        text = "\n".join(screens)
        assert "ALL-DONE" in screens[-1], screens[-1]
        assert "building 6,000 benign flows and the attacks" in text  # trace synth, before its one line
        assert "frames; expected alerts in" in text
        assert "reading the capture, starting 2 middlebox(es)" in text  # nf run before its first packet
        assert "portscan: 1 alert(s)" in screens[-1]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
