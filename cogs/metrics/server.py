"""One HTTP endpoint serving a Prometheus registry (prometheus_client's threaded
WSGI server): ``/metrics`` and ``/``, in the text exposition format."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from cogs.errors import ConfigError


class MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0: a free one) until ``close()``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"metrics port {port} is not a TCP port (0-65535; 0 picks a free one)")
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
        self.registry = registry
        self.host = host
        self.port: int = self._httpd.server_port
        self._closed = threading.Event()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
