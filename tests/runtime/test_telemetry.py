"""The telemetry endpoint: /metrics in the common vocabulary, /health from the dependencies."""

from __future__ import annotations

import json
import logging
import socket

import httpx

from runtime.telemetry import serve_telemetry, telemetry


def _get(port: int, path: str) -> tuple[int, str]:
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return r.status_code, r.text


def test_metrics_and_health() -> None:
    tel = telemetry("unittest")
    tel.declare(outputs=["t"], reasons=["validation"], kinds=["postgres"])
    tel.received.inc(3)
    assert serve_telemetry(tel, "127.0.0.1", 0) is None  # port 0 means off
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_telemetry(tel, "127.0.0.1", port)
    assert server is not None
    try:
        status, text = _get(port, "/metrics")
        assert status == 200
        for name in (
            "fleetpulse_unittest_received_total 3.0",
            'fleetpulse_unittest_sent_total{output="t"} 0.0',
            'fleetpulse_unittest_dropped_total{reason="validation"} 0.0',
            'fleetpulse_unittest_errors_total{kind="postgres"} 0.0',
            "fleetpulse_unittest_lag 0.0",
            "fleetpulse_unittest_batch_seconds_count 0.0",
        ):
            assert name in text, name
        assert _get(port, "/health")[0] == 200
        database = tel.outage("postgres", logging.getLogger("t"))
        database.failed(ConnectionRefusedError(111, "refused"))
        status, body = _get(port, "/health")
        health = json.loads(body)
        assert status == 503 and health["status"] == "unavailable"
        assert health["dependencies"]["postgres"].startswith("down for")
        database.ok()
        assert json.loads(_get(port, "/health")[1])["dependencies"] == {"postgres": "up"}
        # A second server on the same port is refused, logged, and the service goes on.
        assert serve_telemetry(tel, "127.0.0.1", port) is None
    finally:
        server.shutdown()
        server.server_close()
