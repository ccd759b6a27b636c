"""Prometheus metrics: a proxy's statistics (opt-in HTTP port per process) and the
coordinator's view (``cogs exporter``), in the text exposition format.

* :mod:`cogs.metrics.stats` turns any statistics dataclass into metric families,
  field by field, with HELP from the fields' ``#:`` comments;
* :mod:`cogs.metrics.proxy` serves the statistics of the proxies of one process
  (``StateProxy(metrics_port=...)`` / ``COGS_METRICS_PORT``);
* :mod:`cogs.metrics.exporter` serves what ``cogs monitor`` collects: nodes, states,
  proxies, alerts by state.
"""

from cogs.metrics.server import MetricsServer
from cogs.metrics.stats import families, field_docs, metric_kind

__all__ = ["MetricsServer", "families", "field_docs", "metric_kind"]
