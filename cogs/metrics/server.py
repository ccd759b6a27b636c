"""One HTTP endpoint serving a Prometheus registry: ``/metrics`` (and ``/``) in the
text exposition format, plus any JSON routes its owner adds (the exporter's
``/targets``). prometheus_client's WSGI app on a threaded WSGI server, in a daemon
thread: a scrape never waits for the event loop of the process it describes."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from cogs.errors import ConfigError

Route = Callable[[], Any]  # returns what the route serves as JSON


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape on stderr."""


def _server_class(host: str) -> type[ThreadingWSGIServer]:
    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server


class MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0: a free one) until ``close()``."""

    def __init__(
        self, registry: CollectorRegistry, host: str, port: int, routes: Mapping[str, Route] | None = None
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"metrics port {port} is not a TCP port (0-65535; 0 picks a free one)")
        metrics = make_wsgi_app(registry)
        extra = dict(routes or {})

        def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
            route = extra.get(environ.get("PATH_INFO", ""))
            if route is None:
                return metrics(environ, start)  # type: ignore[no-any-return]
            body = json.dumps(route()).encode()
            start("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        try:
            self._httpd = make_server(host, port, app, _server_class(host), handler_class=_Quiet)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"cogs-metrics-{port}", daemon=True)
        self._thread.start()
        self.registry = registry
        self.host = host
        self.port: int = self._httpd.server_port
        self._closed = threading.Event()

    @property
    def address(self) -> str:
        """host:port as others reach it: a wildcard listen address names this host."""
        host = socket.gethostname() if self.host in ("", "0.0.0.0", "::") else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

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
