"""The Prometheus /metrics endpoint every FleetPulse service serves (same vocabulary everywhere)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics on host:port in a background thread; port 0 means off.

    A port already taken is logged and ignored: metrics are not worth failing the service.
    """
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics endpoint %s:%d not started: %s", host, port, exc)
    else:
        log.info("metrics on http://%s:%d/metrics", host, port)
