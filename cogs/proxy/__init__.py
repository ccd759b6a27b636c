"""The state proxy: the library each middlebox embeds (batching, callbacks, replicas)."""

from cogs.proxy.batcher import Backpressure
from cogs.proxy.cache import MISS
from cogs.proxy.proxy import StateProxy
from cogs.proxy.stats import ProxyStatistics

__all__ = ["MISS", "Backpressure", "ProxyStatistics", "StateProxy"]
