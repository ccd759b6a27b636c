"""cogs: a coordinator for the global states of network functions, on Redis Cluster.

The public surface is what ``__all__`` lists; everything else is implementation.
"""

from __future__ import annotations

from cogs.alerts import Alert, follow_alerts, read_alerts
from cogs.catalog import Catalog, StateSpec
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Mode, Op, StateTable
from cogs.errors import (
    AlertNotRecorded,
    BadDelta,
    BadFrame,
    BadKey,
    CatalogError,
    CatalogMismatch,
    ClusterError,
    CogsError,
    ConfigError,
    CoordinatorUnavailable,
    LibraryOutdated,
    Moved,
    OpError,
    Overflow,
    Oversize,
    UnknownOp,
    UnknownState,
    WrongType,
)
from cogs.proxy import MISS, Backpressure, ProxyStatistics, StateProxy
from cogs.proxy.blocking import BlockingStateProxy
from cogs.settings import CogsSettings, load_settings

__all__ = [
    "MISS",
    "Alert",
    "AlertNotRecorded",
    "Backpressure",
    "BadDelta",
    "BadFrame",
    "BadKey",
    "BlockingStateProxy",
    "Catalog",
    "CatalogError",
    "CatalogMismatch",
    "ClusterError",
    "CogsError",
    "CogsSettings",
    "ConfigError",
    "Coordinator",
    "CoordinatorUnavailable",
    "LibraryOutdated",
    "LocalCluster",
    "Mode",
    "Moved",
    "Op",
    "OpError",
    "Overflow",
    "Oversize",
    "ProxyStatistics",
    "StateProxy",
    "StateSpec",
    "StateTable",
    "UnknownOp",
    "UnknownState",
    "WrongType",
    "follow_alerts",
    "load_settings",
    "read_alerts",
]
