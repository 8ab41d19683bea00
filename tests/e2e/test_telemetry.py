"""Every service, started as its command against the real stack, serves /metrics with the
common names and /health, and stops on Ctrl-C (SIGINT) within its timeout with status 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from infra.settings import StackSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SUFFIXES = ("received_total", "sent_total", "dropped_total", "errors_total", "lag", "batch_seconds")
STOP_TIMEOUT = 12  # more than the producers' flush timeout (10 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    # The registry's API is HTTPS with the stack's certificate; the other services' /metrics
    # is plain HTTP on loopback.
    ca = Path(os.environ["FLEETPULSE_HOME"]) / "tls" / "ca.crt"
    r = httpx.get(url, timeout=5, verify=ssl.create_default_context(cafile=ca))
    return r.status_code, r.text


def _command(service: str, port: int) -> tuple[list[str], dict[str, str], str]:
    """The command line, its environment, and where its /metrics is."""
    tag = uuid.uuid4().hex[:8]
    env = {"FLEETPULSE_METRICS_PORT": str(port), "FLEETPULSE_STOP_TIMEOUT": str(STOP_TIMEOUT)}
    base = f"http://127.0.0.1:{port}"
    if service == "agent":
        return ["agent", "--server-id", str(uuid.uuid4())], env, base
    if service == "simulator":
        env["FLEETPULSE_HOSTS"] = "5"
        return ["simulate"], env, base
    if service == "stream":
        env["FLEETPULSE_STREAM_GROUP"] = f"telemetry-stream-{tag}"
        return ["stream"], env, base
    if service == "sink":
        env["FLEETPULSE_SINK_GROUP"] = f"telemetry-sink-{tag}"
        return ["sink"], env, base
    # The registry's API serves /metrics and /health itself, over HTTPS.
    env = {"FLEETPULSE_REGISTRY_PORT": str(port), "FLEETPULSE_REGISTRY_GROUP": f"tel-{tag}"}
    return ["registry"], env, f"https://127.0.0.1:{port}"


@pytest.mark.parametrize("service", ["agent", "simulator", "stream", "sink", "registry"])
async def test_service_serves_the_common_metrics_and_stops_on_ctrl_c(
    service: str, stack_settings: StackSettings
) -> None:
    port = _free_port()
    args, env, base = _command(service, port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *args,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    component = "registry" if service == "registry" else service
    metrics_path = "/metrics/" if service == "registry" else "/metrics"
    try:
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, text = await asyncio.to_thread(_get, base + metrics_path)
            except httpx.TransportError:
                status = 0
            if status == 200 and f"fleetpulse_{component}_received_total" in text:
                break
            if proc.returncode is not None:
                _, err = await proc.communicate()
                pytest.fail(f"{service} exited {proc.returncode}: {err.decode()[-2000:]}")
            await asyncio.sleep(0.5)
        for suffix in SUFFIXES:
            assert f"fleetpulse_{component}_{suffix}" in text, suffix
        status, body = await asyncio.to_thread(_get, base + "/health")
        assert status == 200 and '"status": "ok"' in body.replace('":"', '": "')
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=STOP_TIMEOUT + 20)
        took = time.monotonic() - sent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert took < STOP_TIMEOUT + 2, f"stopped in {took:.1f} s"
