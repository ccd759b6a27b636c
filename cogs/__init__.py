"""cogs: a coordinator for the global states of network functions, on Redis Cluster.

The public surface is what ``__all__`` lists; everything else is implementation.
"""

from __future__ import annotations

from cogs.alerts import Alert, follow_alerts, read_alerts
from cogs.catalog import Catalog, StateSpec
from cogs.cluster import LocalCluster
from cogs.coordinator.client import Coordinator
from cogs.coordinator.ops import Op, StateTable
from cogs.errors import (
    AckedLost,
    AlertNotRecorded,
    BadDelta,
    BadFrame,
    BadKey,
    BadReply,
    CatalogError,
    CatalogMismatch,
    ClusterError,
    CogsError,
    ConfigError,
    CoordinatorUnavailable,
    DeliveryTimeout,
    Exhausted,
    LibraryOutdated,
    Moved,
    NotOwner,
    OpError,
    Overflow,
    OverLimit,
    Oversize,
    PeerError,
    ProxyClosed,
    UnknownOp,
    UnknownState,
    WrongType,
)
from cogs.keys import Namespace, namespace
from cogs.protocol import Mode
from cogs.proxy import MISS, Backpressure, ProxyStatistics, StateProxy
from cogs.proxy.blocking import BlockingStateProxy
from cogs.settings import CogsSettings, load_settings
from cogs.values import TypeAdapter, register_type_adapter

__all__ = [
    "MISS",
    "AckedLost",
    "Alert",
    "AlertNotRecorded",
    "Backpressure",
    "BadDelta",
    "BadFrame",
    "BadKey",
    "BadReply",
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
    "DeliveryTimeout",
    "Exhausted",
    "LibraryOutdated",
    "LocalCluster",
    "Mode",
    "Moved",
    "Namespace",
    "NotOwner",
    "Op",
    "OpError",
    "OverLimit",
    "Overflow",
    "Oversize",
    "PeerError",
    "ProxyClosed",
    "ProxyStatistics",
    "StateProxy",
    "StateSpec",
    "StateTable",
    "TypeAdapter",
    "UnknownOp",
    "UnknownState",
    "WrongType",
    "follow_alerts",
    "load_settings",
    "namespace",
    "read_alerts",
    "register_type_adapter",
]
