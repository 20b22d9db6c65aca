"""The duty dashboard of a live run: a :class:`~dashboards.state.LiveState` that follows the
run's topics in Kafka (``tocsin dashboard``).

:func:`follow` reads the workers' outputs (detections, incident revisions, alerts, seismic
events) from the earliest record the broker holds, so a dashboard started (or restarted)
in the middle of an event shows what has happened, and the observations from
``history_s`` back (the stations' recent series and feed health; the topic holds weeks),
then goes on reading as they come. It creates nothing: it waits for the run's topics and
follows their partitions as they are. A record it cannot decode is skipped (the workers
dead-letter it); control messages (watermarks, end markers) are not shown. The reading
never ends: a live run has no end, and a broker that goes away is waited for (the view
says so meanwhile). :func:`feeder` is the one mapping of messages onto
the state, used by the replay demo too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)
from aiokafka.structs import ConsumerRecord

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
                 history_s: float = 12 * 3600.0, now: Callable[[], float] = time.time,
                 refresh_s: float = 10.0, retry_max_s: float = 10.0) -> None:
    """Feed ``state`` from the run's topics until cancelled (see the module docstring).
    Observations stamped more than ``history_s`` before ``now()`` are not read. The
    topics' partitions are looked up every ``refresh_s`` (every second until the run's
    topics exist: a dashboard may start before the workers): partitions added later are
    read from their beginning. The look-up also tells whether Kafka answers: when it does
    not, the state says so (``LiveState.on_source``) and the reading goes on trying, every
    second at first, at most ``retry_max_s`` apart, from where it was. (It ended, and the
    dashboard exited with status 0 and the page frozen as if live.)"""
    feed = feeder(state)
    outputs = [topics.detections, topics.incidents, topics.alerts, topics.seismic]

    def take(records: list[ConsumerRecord[Any, Any]]) -> None:
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
                log.exception("dashboard: %s[%s]@%s not shown", rec.topic, rec.partition,
                              rec.offset)

    loop = asyncio.get_running_loop()
    consumer: AIOKafkaConsumer | None = None
    admin: AIOKafkaAdminClient | None = None
    assigned: set[TopicPartition] = set()
    first_obs = True
    history: list[TopicPartition] = []  # observation partitions to read back from history_s
    look_at = 0.0
    wait = 1.0
    try:
        while True:
            try:
                if consumer is None or admin is None:
                    consumer, admin = await _connect(bootstrap)
                if loop.time() >= look_at:
                    new = await _partitions(admin, [*outputs, topics.observations]) - assigned
                    state.on_source(True, f"Kafka at {bootstrap}")
                    wait = 1.0
                    look_at = loop.time() + (refresh_s if assigned or new else 1.0)
                    if new:
                        # the history decided before the assignment: a failure inside it
                        # (after the partitions were counted as assigned) left it unset,
                        # and the observations read from their beginning
                        obs = [tp for tp in new if tp.topic == topics.observations]
                        if obs and first_obs:  # the first: the history; later ones whole
                            first_obs, history = False, obs
                        await _assign(consumer, assigned, new)
                        log.info("following %s: %s", topics.app_id,
                                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(new)))
                if history:
                    # until it is done, even across a retry: a failure here left the
                    # observations read from their beginning (weeks of them)
                    ends = await consumer.end_offsets(history)
                    found = await consumer.offsets_for_times(
                        {tp: int(1000 * (now() - history_s)) for tp in history})
                    for tp in history:
                        at = found.get(tp)
                        consumer.seek(tp, ends[tp] if at is None else at.offset)
                    history = []
                if not assigned:
                    await asyncio.sleep(1.0)
                    continue
                batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
                for records in batch.values():
                    # decoded in a thread (the state has a lock): the read back of a long
                    # history must not hold up the web server on this loop
                    await asyncio.to_thread(take, records)
            except (KafkaError, OSError) as exc:  # OSError: refused, reset, timed out
                # one that is not about reaching the broker (an authorisation, a version)
                # is said as it is: waiting for it to "answer" would mislead the room
                gone = isinstance(exc, (OSError, *_UNREACHABLE)) or getattr(
                    exc, "retriable", False)
                what = (f"Kafka at {bootstrap} does not answer ({type(exc).__name__})" if gone
                        else f"Kafka at {bootstrap} refuses the dashboard "
                             f"({type(exc).__name__}: {exc})")
                if state.source is None or state.source["ok"]:
                    log.warning("dashboard: %s; trying again", what)
                state.on_source(False, what)
                await asyncio.sleep(wait)
                wait = min(2.0 * wait, retry_max_s)
                look_at = 0.0  # ask again at once
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()


#: errors of a broker out of reach (and any aiokafka marks ``retriable``)
_UNREACHABLE = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError,
                RequestTimedOutError)


async def _connect(bootstrap: str) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
    """A started consumer (no group, no commits) and admin client; neither is left open if
    the other does not start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=200, max_partition_fetch_bytes=8 << 20)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await consumer.start()
        await admin.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()
        raise
    return consumer, admin


async def _partitions(admin: AIOKafkaAdminClient, names: list[str]) -> set[TopicPartition]:
    """The partitions the topics have now (none of a topic that does not exist yet)."""
    out: set[TopicPartition] = set()
    for t in await admin.describe_topics(names):
        if t.get("error_code", 0) == 0:
            out.update(TopicPartition(t["topic"], p["partition"])
                       for p in t.get("partitions") or [])
    return out


async def _assign(consumer: AIOKafkaConsumer, assigned: set[TopicPartition],
                  new: set[TopicPartition]) -> None:
    """Add ``new`` to the consumer's partitions (``assign`` replaces them: the others keep
    their positions), from their beginning."""
    kept = {tp: await consumer.position(tp) for tp in assigned}
    assigned |= new
    consumer.assign(sorted(assigned))
    for tp, offset in kept.items():
        consumer.seek(tp, offset)
    await consumer.seek_to_beginning(*sorted(new))
