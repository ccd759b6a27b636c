"""The ``cogs`` command: one module per command group, each registering on ``main``.

Exit codes: 0 success, 1 an operation failed (one clear line on stderr),
2 bad usage or configuration, 3 the coordinator is unreachable.
"""

from __future__ import annotations

from cogs.cli import acl, alerts, bench, catalog, cluster, demo, exporter, keeper, lab, monitor, nf  # noqa: F401 - they register
from cogs.cli.base import main

__all__ = ["main"]
