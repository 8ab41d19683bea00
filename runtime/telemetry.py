"""One telemetry vocabulary for every FleetPulse service, served on /metrics with a /health.

Every component counts the same things under the same names (Prometheus adds `_total` to
counters):

    fleetpulse_<component>_received_total           what it took in
    fleetpulse_<component>_sent_total{output}       what it handed on (topic, table, resolution)
    fleetpulse_<component>_dropped_total{reason}    what it refused (dead-lettered, overflowed)
    fleetpulse_<component>_errors_total{kind}       failed attempts at a dependency (retried)
    fleetpulse_<component>_lag                      messages behind the end of its input
    fleetpulse_<component>_batch_seconds            time to process one batch

/health answers 200 with `{"status": "ok", ...}` while every dependency the service reported
to is up, and 503 with `"unavailable"` and the dependencies that are down otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

from runtime.logs import Outage

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Telemetry:
    """The common counters of one component, and the dependencies its /health reports."""

    component: str
    received: Counter
    sent: Counter
    dropped: Counter
    errors: Counter
    lag: Gauge
    batch_seconds: Histogram
    dependencies: dict[str, Outage] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def declare(
        self,
        outputs: Iterable[str] = (),
        reasons: Iterable[str] = (),
        kinds: Iterable[str] = (),
    ) -> None:
        """Create the labelled series up front, so /metrics shows them at 0 from the start
        (a rate over a series that appears late misses its first increase)."""
        for output in outputs:
            self.sent.labels(output=output)
        for reason in reasons:
            self.dropped.labels(reason=reason)
        for kind in kinds:
            self.errors.labels(kind=kind)

    def outage(self, name: str, log: logging.Logger) -> Outage:
        """The tracker of dependency `name` (one per name), shown on /health."""
        tracker = self.dependencies.get(name)
        if tracker is None:
            tracker = self.dependencies[name] = Outage(name, log)
        return tracker

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body) for /health."""
        now = time.monotonic()
        deps = {
            name: "up"
            if o.down_since is None
            else f"down for {now - o.down_since:.0f} s ({o.failures} failed attempts)"
            for name, o in sorted(self.dependencies.items())
        }
        healthy = all(o.up for o in self.dependencies.values())
        body = {
            "status": "ok" if healthy else "unavailable",
            "component": self.component,
            "uptime_s": round(time.time() - self.started, 1),
            "dependencies": deps,
        }
        return healthy, body


@cache
def telemetry(component: str) -> Telemetry:
    """The telemetry of `component` (created once per process: Prometheus names are global)."""
    prefix = f"fleetpulse_{component}"
    return Telemetry(
        component=component,
        received=Counter(f"{prefix}_received", f"Messages the {component} took in."),
        sent=Counter(f"{prefix}_sent", f"Messages the {component} handed on.", ["output"]),
        dropped=Counter(f"{prefix}_dropped", f"Messages the {component} refused.", ["reason"]),
        errors=Counter(f"{prefix}_errors", "Failed attempts at a dependency (retried).", ["kind"]),
        lag=Gauge(f"{prefix}_lag", "Messages behind the end of the input."),
        batch_seconds=Histogram(
            f"{prefix}_batch_seconds", "Seconds to process one batch.", buckets=_BATCH_BUCKETS
        ),
    )


def metrics_body() -> tuple[bytes, str]:
    """The Prometheus exposition of this process's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def health_body(tel: Telemetry) -> tuple[int, bytes]:
    healthy, body = tel.health()
    return (200 if healthy else 503), json.dumps(body).encode()


class _Handler(MetricsHandler):
    telemetry: Telemetry

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/health", "/healthz"):
            status, body = health_body(self.telemetry)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        return None  # scrapes are not worth a log line each


def serve_telemetry(tel: Telemetry, host: str, port: int) -> ThreadingHTTPServer | None:
    """Serve /metrics and /health on host:port in a background thread; port 0 means off.

    A port already taken is logged and ignored: metrics are not worth failing the service.
    """
    if not port:
        return None
    handler = type("Handler", (_Handler,), {"telemetry": tel})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        log.warning("metrics endpoint %s:%d not started: %s", host, port, exc)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="telemetry", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /health", host, server.server_port)
    return server
