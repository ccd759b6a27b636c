"""Logging: levels, text and JSON lines with structured fields, inherited by spawned processes."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from cogs import logs
from cogs.cli import main


@pytest.fixture
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("cogs")
    handlers, level = list(logger.handlers), logger.level
    env = {k: os.environ.get(k) for k in ("COGS_LOG_LEVEL", "COGS_LOG_FORMAT")}
    yield None
    logger.handlers[:], logger.level = handlers, level
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_structured_fields() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logging.getLogger("cogs.proxy")
    log.debug("not shown at info")
    log.warning("refused %s", "x", extra=logs.fields(proxy="p1", node="127.0.0.1:7000", state="ports", key=None))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra=logs.fields(proxy="p1"))
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert (first["level"], first["logger"], first["msg"]) == ("warning", "cogs.proxy", "refused x")
    assert (first["proxy"], first["node"], first["state"]) == ("p1", "127.0.0.1:7000", "ports")
    assert "key" not in first  # None fields are left out
    assert first["time"].endswith("Z")
    assert first["pid"] == os.getpid()
    assert "ValueError: boom" in lines[1]["exc"]
    assert os.environ["COGS_LOG_FORMAT"] == "json"  # processes cogs spawns log the same way


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_put_fields_after_the_message() -> None:
    out = io.StringIO()
    logs.configure("warning", "text", stream=out)
    logging.getLogger("cogs.proxy").warning("lost", extra=logs.fields(proxy="p2", node="n:1"))
    logging.getLogger("cogs.proxy").info("hidden")
    [line] = out.getvalue().splitlines()
    assert line.endswith("WARNING cogs.proxy: lost proxy=p2 node=n:1")


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level 'loud'"):
        logs.configure("loud", "text")
    r = CliRunner().invoke(main, ["--log-format", "xml", "catalog", "types"])
    assert r.exit_code == 2
    assert "'xml' is not one of 'text', 'json'" in r.output


def test_verbosity_flags() -> None:
    assert logs.level_of(0, None) == "warning"
    assert logs.level_of(1, None) == "info"
    assert logs.level_of(2, None) == "debug"
    assert logs.level_of(2, "error") == "error"


def test_a_spawned_process_logs_as_its_parent_chose() -> None:
    code = textwrap.dedent(
        """
        import logging
        from cogs import logs, runtime

        async def work() -> None:
            logging.getLogger("cogs.nf").info("box started", extra=logs.fields(box=3, proxy="mb-3"))

        runtime.run(work)
        """
    )
    env = {**os.environ, "COGS_LOG_LEVEL": "info", "COGS_LOG_FORMAT": "json"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    [line] = [json.loads(x) for x in r.stderr.splitlines()]
    assert (line["msg"], line["box"], line["proxy"], line["level"]) == ("box started", 3, "mb-3", "info")


def test_throttle_lets_a_few_lines_per_kind_through_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    t = logs.Throttle(burst=3, period_s=60.0, clock=lambda: now[0])
    assert [t.allow("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert t.allow("b") == 0  # kinds apart
    now[0] = 61.0
    assert t.allow("a") == 2  # the next line says how many were left out
    assert t.allow("a") == 0
    assert t.left_out == 2
    logger = logging.getLogger("cogs.test.throttle")
    now[0] = 200.0
    with caplog.at_level(logging.INFO, "cogs.test.throttle"):
        for i in range(10):
            t.log(logger, logging.WARNING, "c", "failed %d", i)
        now[0] = 300.0
        t.log(logger, logging.WARNING, "c", "failed %d", 10)
    assert [r.getMessage() for r in caplog.records] == [
        "failed 0",
        "failed 1",
        "failed 2",
        "failed 10 (7 similar lines left out)",
    ]
