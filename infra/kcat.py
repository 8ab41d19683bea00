"""`kcat` in the virtualenv: Debian's kcat, run with a librdkafka that can log in to Kafka 4.

Debian bookworm's kcat links librdkafka 2.0.2, whose SASL/SCRAM client repeats its nonce in
its final message; Kafka 4 brokers check the nonce strictly (as RFC 5802 says) and refuse the
login as "invalid credentials". librdkafka fixed it in 2.6.1 (confluentinc/librdkafka#4895).
This command runs the same kcat with the librdkafka that the `confluent-kafka` wheel ships
(ABI-compatible within 2.x), through `LD_LIBRARY_PATH`; everything else is kcat's own.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_HELP = "kcat is not installed: `apt-get install kcat` (or `make demo`, which installs it)"


def _library_dir() -> Path:
    """A folder whose `librdkafka.so.1` is the wheel's librdkafka."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise SystemExit(f"kcat: no librdkafka in {libs} (reinstall confluent-kafka)")
    folder = Path(sys.prefix) / "lib" / "fleetpulse-librdkafka"
    link = folder / "librdkafka.so.1"
    if not link.exists() or link.resolve() != found[0]:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".librdkafka.so.1.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(found[0])
        tmp.replace(link)
    return folder


def _system_kcat() -> str:
    """kcat on PATH, not this command."""
    here = Path(sys.argv[0]).resolve()
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).resolve() != here.parent
    )
    kcat = shutil.which("kcat", path=path)
    if kcat is None or Path(kcat).resolve() == here:
        raise SystemExit(_HELP)
    return kcat


def main() -> None:
    kcat = _system_kcat()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(_library_dir()), env.get("LD_LIBRARY_PATH", "")) if p
    )
    os.execve(kcat, [kcat, *sys.argv[1:]], env)  # noqa: S606 - kcat replaces this process
