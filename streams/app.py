"""`fleetpulse stream`: the Faust worker around `StreamProcessor`.

Faust is the runtime: the consumer group, partition assignment, the agent, the producer, the
web server. The windowing is ours (`streams/windows.py`), because Faust's windowed tables lose
data (a last-closed-window shared by all partitions, closing by wall clock during catch-up,
late events dropped silently). Each batch of raw records is processed, its outputs sent and
flushed, and only then are the records acknowledged — and only those no open 5 s window still
needs. Faust commits acknowledged offsets, so after a crash the worker replays from the oldest
record of a still-open window: open windows are rebuilt, never lost (a window closed just
before the crash may be emitted twice).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import faust

from schemas import Resolution
from streams.processor import Outputs, StreamProcessor
from streams.settings import StreamSettings
from streams.windows import Grace

log = logging.getLogger(__name__)


class StreamWorker:
    """The Faust app, its agent and timer, and the acknowledgement bookkeeping."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        s = settings
        datadir = s.home_dir / "stream" / s.stream_group
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            s.stream_group,
            broker=[f"kafka://{b}" for b in s.kafka_bootstrap.split(",")],
            store="memory://",
            datadir=str(datadir),
            topic_allow_declare=False,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            broker_rebalance_timeout=20.0,
            broker_commit_interval=1.0,
            stream_wait_empty=False,
            web_enabled=s.stream_web_port > 0,
            web_port=s.stream_web_port or 6066,
            producer_acks=-1,
        )
        self.processor = StreamProcessor(
            source_topic=s.raw_topic,
            grace=Grace(s.grace_5s, s.grace_1h, s.grace_1d),
            offline_after=s.offline_after,
        )
        raw_opts: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        self.raw = self.app.topic(s.raw_topic, **raw_opts)
        names = {
            Resolution.FIVE_SECONDS: s.agg_5s_topic,
            Resolution.ONE_HOUR: s.agg_1h_topic,
            Resolution.ONE_DAY: s.agg_1d_topic,
        }
        self.aggs = {res: self.app.topic(names[res], **raw_opts) for res in Resolution}
        self.status = self.app.topic(s.status_topic, **raw_opts)
        self.dlq = self.app.topic(s.dlq_topic, **raw_opts)
        self.held: dict[int, deque[Any]] = {}
        self.last_record: dict[int, float] = {}
        self.events_in = 0
        self._reported = 0
        self.app.agent(self.raw, name="windows")(self._windows)
        self.app.timer(1.0)(self._tick)
        self.app.timer(10.0)(self._report)
        self.app.on_partitions_revoked.connect(self._revoked)

    async def _windows(self, stream: Any) -> None:
        s = self.settings
        async for events in stream.noack_take(s.stream_batch, within=s.stream_batch_within):
            now = time.time()
            out = Outputs()
            for ev in events:
                msg = ev.message
                out.extend(
                    self.processor.record(msg.partition, msg.offset, msg.key, msg.value, now)
                )
                self.held.setdefault(msg.partition, deque()).append(ev)
                self.last_record[msg.partition] = now
            self.events_in += len(events)
            out.extend(self.processor.close_due(now))
            await self._publish(out)

    async def _tick(self) -> None:
        now = time.time()
        out = self.processor.tick(now)
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic != self.raw.get_topic_name():
                continue
            nxt = self.processor.next_offsets.get(tp.partition)
            high = consumer.highwater(tp)
            caught_up = nxt is not None and high is not None and nxt >= high
            quiet = now - self.last_record.get(tp.partition, 0.0) >= 1.0
            if caught_up and quiet:
                out.extend(self.processor.idle(tp.partition, now))
        await self._publish(out)

    async def _report(self) -> None:
        rate = (self.events_in - self._reported) / 10.0
        self._reported = self.events_in
        open_windows = sum(w.open_windows() for w in self.processor.partitions.values())
        late = sum(w.late for w in self.processor.partitions.values())
        log.info("%.0f events/s in, %d open 5 s windows, %d late so far", rate, open_windows, late)

    async def _publish(self, out: Outputs) -> None:
        """Send the outputs, wait until Kafka has them, then acknowledge what is done."""
        for agg in out.aggregates:
            await self.aggs[agg.resolution].send(
                key=agg.server_id.encode(), value=agg.to_json_bytes()
            )
        for change in out.statuses:
            await self.status.send(key=change.server_id.encode(), value=change.to_json_bytes())
        for letter in out.dead_letters:
            key = letter.key.encode() if letter.key is not None else None
            await self.dlq.send(key=key, value=letter.to_json_bytes())
        if out.aggregates or out.statuses or out.dead_letters:
            await self.app.producer.flush()
        self._ack_done()

    def _ack_done(self) -> None:
        for partition, held in self.held.items():
            upto = self.processor.committable(partition)
            if upto is None:
                continue
            while held and held[0].message.offset < upto:
                held.popleft().ack()

    async def _revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        for tp in revoked:
            if tp.topic == self.raw.get_topic_name():
                self.processor.revoke(tp.partition)
                self.held.pop(tp.partition, None)

    def run(self) -> None:
        """Run the worker until SIGTERM/SIGINT (Faust handles the signals)."""
        worker = faust.Worker(self.app, loglevel="INFO", quiet=True)
        worker.execute_from_commandline()
