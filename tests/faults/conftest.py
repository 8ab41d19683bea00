"""The fault tests' own stack: three brokers and a PostgreSQL cluster under
`.fleetpulse/test[-N]-faults/`, on ports 50 up from the test stack's (so the other tests keep
their single broker, and a drill that kills PostgreSQL disturbs nothing else)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from infra import stack
from infra.settings import StackSettings
from tests.conftest import ROOT, TEST_ENV

_N = int(os.environ.get("FLEETPULSE_TEST_STACK", "0") or 0)


@pytest.fixture(scope="session")
def cluster_settings() -> Iterator[StackSettings]:
    """The running 3-broker stack (started here if needed; stopped at the end if it was)."""
    base = 29142 + _N * 100
    settings = StackSettings(
        home=ROOT / ".fleetpulse" / f"{os.path.basename(TEST_ENV['FLEETPULSE_HOME'])}-faults",
        kafka_brokers=3,
        kafka_bootstrap=f"127.0.0.1:{base}",
        kafka_controller_port=base + 1,
        kafka_internal_port=base + 4,
        kafka_proxied_port=0,
        kafka_proxy_port=0,
        pg_port=55452 + _N * 100,
    )
    results = stack.up(settings)
    started_here = any(started for _, started in results)
    yield settings
    if started_here and not os.environ.get("FLEETPULSE_TEST_KEEP_STACK"):
        stack.down(settings)
