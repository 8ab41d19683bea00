"""The stream worker's windowing written with Quix Streams: the peer `benchmarks/stream.py`
measures ours against.

Runs in its own virtualenv (`benchmarks/quix/.venv`, built by `make bench-setup`: Quix Streams
pins an older confluent-kafka than ours), as a script, and imports nothing of FleetPulse:

    benchmarks/quix/.venv/bin/python benchmarks/quix/app.py --bootstrap ... --raw ...

What it does, as close to `streams/windows.py` as Quix allows: raw events parsed from JSON (no
validation: Quix has no pydantic models; a JSON Schema could be given to its deserializer, at
a cost this does not pay), keyed by server (the raw topic's key), in event time (the
timestamp extractor reads the event's `timestamp`), 5 s tumbling windows with our 5 s grace
closed per key (`final()`, Quix's default "key" closing strategy: a server's own event time
closes its windows, as ours does), reduced to what a `WindowAcc` holds (count; sum, min, max
and latest of cpu, memory and disk; byte sums; the latest process list) and written as
`WindowAggregate` JSON. With `--out-1h/--out-1d`, hourly and daily windows are cascaded from
the closed 5 s windows, as ours are. What Quix has no counterpart for: corrections by late
samples (a late sample is dropped and logged), and the wall clock closing a quiet server's
windows (its last windows stay open until its next sample).

It prints `consumed <unix time>` once it has processed every record below `--ends` (the raw
topic's end offsets when the benchmark started it), then runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

#: What a window holds while open (the state Quix keeps per window and server): the count;
#: per percentage metric [sum, min, max, latest]; byte sums; the latest sample's timestamp
#: (ms) and, in 5 s windows, its process list.
Acc = dict[str, Any]
METRICS = (("cpu_usage", "cpu"), ("memory_usage", "memory"), ("disk_usage", "disk"))


def event_ms(value: Any) -> int:
    """A raw event's timestamp (ISO 8601 with an offset), ms since the epoch."""
    return int(datetime.fromisoformat(value["timestamp"]).timestamp() * 1000)


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """Quix's timestamp extractor: windows run on the event's own time, not the record's."""
    return event_ms(value)


def first_sample(e: Any) -> Acc:
    """A 5 s window's state from its first sample (Quix's `reduce` initializer)."""
    acc: Acc = {"count": 1, "rx": e["network_rx"], "tx": e["network_tx"]}
    for field, name in METRICS:
        v = e[field]
        acc[name] = [v, v, v, v]
    acc["last_ms"] = event_ms(e)
    acc["processes"] = e.get("processes", [])
    return acc


def add_sample(acc: Acc, e: Any) -> Acc:
    """`acc` with the sample `e` added (Quix's `reduce` reducer); the latest by timestamp sets
    `last` and the process list, whatever the order samples came in."""
    ts = event_ms(e)
    latest = ts >= acc["last_ms"]
    acc["count"] += 1
    for field, name in METRICS:
        v = e[field]
        m = acc[name]
        m[0] += v
        if v < m[1]:
            m[1] = v
        if v > m[2]:
            m[2] = v
        if latest:
            m[3] = v
    acc["rx"] += e["network_rx"]
    acc["tx"] += e["network_tx"]
    if latest:
        acc["last_ms"] = ts
        acc["processes"] = e.get("processes", [])
    return acc


def seed_rollup(window: Any) -> Acc:
    """An hourly or daily window's state from its first closed 5 s window (a Quix window
    result: `{"start", "end", "value"}`); without the process list, which rollups omit."""
    w = window["value"]
    acc: Acc = {"count": w["count"], "rx": w["rx"], "tx": w["tx"], "last_ms": w["last_ms"]}
    for _, name in METRICS:
        acc[name] = list(w[name])
    return acc


def merge_rollup(acc: Acc, window: Any) -> Acc:
    """`acc` with a closed 5 s window merged in: sums of counts and sums, min of mins, max of
    maxes, the latest window's `last`."""
    w = window["value"]
    latest = w["last_ms"] >= acc["last_ms"]
    acc["count"] += w["count"]
    for _, name in METRICS:
        m, o = acc[name], w[name]
        m[0] += o[0]
        if o[1] < m[1]:
            m[1] = o[1]
        if o[2] > m[2]:
            m[2] = o[2]
        if latest:
            m[3] = o[3]
    acc["rx"] += w["rx"]
    acc["tx"] += w["tx"]
    if latest:
        acc["last_ms"] = w["last_ms"]
    return acc


@lru_cache(maxsize=4096)
def iso(ms: int) -> str:
    """A UTC time as the message models write it ("...Z"). Cached, as ours: the windows of
    every server share their bounds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def aggregate_message(window: Any, key: bytes, resolution: str) -> dict[str, Any]:
    """A closed window as `WindowAggregate` JSON (schemas/messages.py), as ours writes it."""
    w = window["value"]
    n = w["count"]
    five = resolution == "5s"
    doc: dict[str, Any] = {
        "server_id": key.decode(),
        "resolution": resolution,
        "window_start": iso(window["start"]),
        "window_end": iso(window["end"]),
        "revision": 0,
        "count": n,
    }
    for field, name in METRICS:
        total, lo, hi, last = w[name]
        doc[field] = {
            # Clamped as ours: a mean of values in 0..100 can leave it by a rounding error.
            "avg": min(100.0, max(0.0, total / n)),
            "min": lo,
            "max": hi,
            "last": last if five else None,
        }
    doc["network_rx"] = w["rx"]
    doc["network_tx"] = w["tx"]
    doc["processes"] = w["processes"] if five else None
    doc["last_event_at"] = iso(w["last_ms"])
    doc["emitted_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return doc


class Progress:
    """Quix's `on_message_processed` hook (called after each record): prints `consumed
    <unix time>` once every partition's record before its end offset is processed."""

    def __init__(self, ends: dict[int, int]) -> None:
        self._last = {p: end - 1 for p, end in ends.items() if end > 0}
        if not self._last:
            self._done()

    def __call__(self, topic: str, partition: int, offset: int) -> None:
        if offset >= self._last.get(partition, sys.maxsize):
            del self._last[partition]
            if not self._last:
                self._done()

    @staticmethod
    def _done() -> None:
        print(f"consumed {time.time():.3f}", flush=True)


def _ends(text: str) -> dict[int, int]:
    """`0:120,1:98` → {0: 120, 1: 98}."""
    return {int(p): int(e) for p, e in (item.split(":") for item in text.split(",") if item)}


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--security-protocol", default="SASL_SSL")
    p.add_argument("--sasl-mechanism", default="SCRAM-SHA-512")
    p.add_argument("--username", default="admin", help="SCRAM user")
    p.add_argument("--password-file", type=Path, help="file holding the user's password")
    p.add_argument("--ca-file", type=Path, help="CA certificate of the brokers")
    p.add_argument("--group", required=True, help="consumer group (fresh: reads from earliest)")
    p.add_argument("--state-dir", type=Path, required=True, help="RocksDB state (fresh)")
    p.add_argument("--raw", required=True, help="raw topic")
    p.add_argument("--out-5s", required=True, help="5 s aggregates topic")
    p.add_argument("--out-1h", help="hourly aggregates topic (cascaded from the 5 s windows)")
    p.add_argument("--out-1d", help="daily aggregates topic (cascaded from the 5 s windows)")
    p.add_argument("--grace-ms", type=int, default=5000, help="5 s windows' grace, ms")
    p.add_argument("--commit-interval", type=float, default=2.0, help="checkpoint every, s")
    p.add_argument("--ends", type=_ends, default={}, help="raw end offsets: p:offset,...")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from quixstreams import Application
    from quixstreams.kafka.configuration import ConnectionConfig

    args = _arguments(argv)
    protocol = args.security_protocol.upper()
    connection: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        connection.update(
            sasl_mechanism=args.sasl_mechanism,
            sasl_username=args.username,
            sasl_password=args.password_file.read_text().strip(),
        )
    if protocol.endswith("SSL"):
        connection["ssl_ca_location"] = str(args.ca_file)
    app = Application(
        broker_address=ConnectionConfig(bootstrap_servers=args.bootstrap, **connection),
        consumer_group=args.group,
        auto_offset_reset="earliest",
        # Ours checkpoints (commits offsets, flushes its changelog) every 2 s as well.
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="WARNING",
        on_message_processed=Progress(args.ends),
    )
    raw = app.topic(args.raw, value_deserializer="json", timestamp_extractor=event_time)
    five = (
        app.dataframe(raw)
        .tumbling_window(duration_ms=5000, grace_ms=args.grace_ms)
        .reduce(add_sample, first_sample)
        .final()
    )
    out = {"5s": args.out_5s, "1h": args.out_1h, "1d": args.out_1d}
    five.apply(lambda w, k, t, h: aggregate_message(w, k, "5s"), metadata=True).to_topic(
        app.topic(out["5s"], value_serializer="json")
    )
    for resolution, size_ms in (("1h", 3_600_000), ("1d", 86_400_000)):
        topic = out[resolution]
        if topic is None:
            continue
        # A closed 5 s window's record time is its start; they close in order per server,
        # so no grace is needed here: an hour closes with the first 5 s window after it.
        rollup = five.tumbling_window(duration_ms=size_ms, grace_ms=0)
        rollup.reduce(merge_rollup, seed_rollup).final().apply(
            lambda w, k, t, h, r=resolution: aggregate_message(w, k, r), metadata=True
        ).to_topic(app.topic(topic, value_serializer="json"))
    app.run()


if __name__ == "__main__":
    main()
