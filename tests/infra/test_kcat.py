"""`kcat` in the virtualenv runs Debian's kcat with a librdkafka whose SCRAM Kafka 4 accepts
(2.6.1 or later; the login itself is tested in tests/infra/stack/test_kafka_security.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

KCAT = Path(sys.prefix) / "bin" / "kcat"


def test_kcat_runs_with_a_librdkafka_that_has_the_scram_fix() -> None:
    out = subprocess.run([str(KCAT), "-V"], capture_output=True, text=True, timeout=30, check=True)
    found = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out.stdout)
    assert found, out.stdout
    assert tuple(int(x) for x in found.groups()) >= (2, 6, 1)
    assert "sasl_scram" in out.stdout


def test_kcat_passes_its_arguments_and_status_through() -> None:
    out = subprocess.run(
        [str(KCAT), "-b", "127.0.0.1:1", "-L", "-m", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0 and "127.0.0.1:1" in out.stderr
