"""The duty dashboard of a live run: a :class:`~dashboards.state.LiveState` that follows the
run's topics in Kafka (``tocsin dashboard``).

:func:`follow` reads the workers' outputs (detections, incident revisions, alerts, seismic
events) from the earliest record the broker holds, so a dashboard started (or restarted)
in the middle of an event shows what has happened, and the observations from
``history_s`` back (the stations' recent series and feed health; the topic holds weeks),
then goes on reading as they come. A record it cannot decode is skipped (the workers
dead-letter it); control messages (watermarks, end markers) are not shown. The reading
never ends: a live run has no end. :func:`feeder` is the one mapping of messages onto
the state, used by the replay demo too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from dashboards.state import LiveState
from detectors.base import Detection
from streams.app import _is_control
from streams.schemas import (
    AlertMessage,
    IncidentRevision,
    Message,
    ObservationPacket,
    SchemaError,
    SeismicEventMessage,
    decode,
)
from streams.topics import Topics

log = logging.getLogger("tocsin.dashboard")


def feeder(state: LiveState) -> Callable[[Message], None]:
    """A listener that hands each message to the state."""

    def feed(msg: Message) -> None:
        if isinstance(msg, ObservationPacket):
            state.on_packet(msg)
        elif isinstance(msg, Detection):
            state.on_detection(msg)
        elif isinstance(msg, IncidentRevision):
            state.on_revision(msg)
        elif isinstance(msg, AlertMessage):
            state.on_alert(msg)
        elif isinstance(msg, SeismicEventMessage):
            state.on_seismic(msg.body)

    return feed


async def follow(bootstrap: str, topics: Topics, state: LiveState,
                 history_s: float = 12 * 3600.0,
                 now: Callable[[], float] = time.time) -> None:
    """Feed ``state`` from the run's topics until cancelled (see the module docstring).
    Observations stamped more than ``history_s`` before ``now()`` are not read."""
    feed = feeder(state)
    outputs = [topics.detections, topics.incidents, topics.alerts, topics.seismic]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=200, max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        await consumer.topics()  # the metadata: the observations' partitions as they are
        tps = [TopicPartition(t, 0) for t in outputs]
        parts = consumer.partitions_for_topic(topics.observations) or range(topics.partitions)
        obs = [TopicPartition(topics.observations, p) for p in sorted(parts)]
        consumer.assign(tps + obs)
        await consumer.seek_to_beginning(*tps)
        since = int(1000 * (now() - history_s))
        found = await consumer.offsets_for_times({tp: since for tp in obs})
        ends = await consumer.end_offsets(obs)
        for tp in obs:
            at = found.get(tp)
            consumer.seek(tp, ends[tp] if at is None else at.offset)
        log.info("following %s: outputs from the earliest, observations from %.1f h back",
                 topics.app_id, history_s / 3600.0)
        while True:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for records in batch.values():
                for rec in records:
                    raw = rec.value
                    if not isinstance(raw, bytes) or _is_control(raw) is not None:
                        continue
                    try:
                        msg = decode(raw)
                    except SchemaError:
                        continue  # the workers dead-letter it; a viewer skips it
                    try:
                        feed(msg)
                    except Exception:  # one odd message must not blank the room's screen
                        log.exception("dashboard: %s[%s]@%s not shown", rec.topic,
                                      rec.partition, rec.offset)
                # a long history in one go: let the web server answer in between
                await asyncio.sleep(0)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
