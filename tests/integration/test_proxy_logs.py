"""A proxy's log: structured fields, and never one line per refused op (real cluster)."""

from __future__ import annotations

import io
import json
import logging

import anyio
import pytest

from cogs import logs
from cogs.cluster import LocalCluster
from cogs.proxy import StateProxy

pytestmark = pytest.mark.anyio


async def test_refused_updates_log_ten_json_lines_with_fields(cluster: LocalCluster) -> None:
    logger = logging.getLogger("cogs")
    handlers, level = list(logger.handlers), logger.level
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        async with StateProxy(cluster.url) as proxy:
            for i in range(50):  # 50 values over the state's max_bytes: 50 refusals
                proxy.update("note", f"log-{i}", "set", "x" * 64)
            await proxy.flush()
            with anyio.fail_after(10):
                while proxy.statistics().errors < 50:  # noqa: ASYNC110 - replies come on their own
                    await anyio.sleep(0.01)
            pid = proxy.id
    finally:
        logger.handlers[:], logger.level = handlers, level
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    refused = [x for x in lines if x.get("state") == "note"]
    assert len(refused) == 10  # the first ten; the next would be the 1000th
    assert [x["count"] for x in refused] == list(range(1, 11))
    for x in refused:
        assert (x["proxy"], x["op"], x["level"], x["logger"]) == (pid, "set", "warning", "cogs.proxy")
        assert x["key"].startswith("log-")
        assert "OVERSIZE" in x["msg"] or "max_bytes" in x["msg"]
