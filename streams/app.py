"""The Faust app factory: decode, call a detector stage, emit.

``create_app(settings, topics, registry)`` builds one app with three agents:

* ``detect``    observations -> per-station detector pipelines -> detections
* ``associate`` detections   -> associator                     -> incident revisions
* ``alert``     incidents    -> alert policy (CAP 1.2)          -> alerts

A message that cannot be decoded or validated goes to the dead-letter topic with the
reason and ``topic[partition]@offset``; the agent keeps running. Control messages
(``tocsin.control/1``, type ``end``) mark the end of a replay on each observation
partition and travel down the chain so the replayer knows when every stage is done.
A stage given partitions whose earlier records another worker processed (a rebalance, a
restart) first rebuilds its state from them (``streams.takeover``).
No app object exists at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping, Sequence
from functools import partial
from typing import Any

import faust
import faust.transport.drivers.aiokafka as faust_aiokafka
import orjson
from aiokafka.errors import KafkaError
from mode import BaseSignalT
from mode.services import WaitResults
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from detectors.association import Associator, LateDetection
from detectors.base import Detection, DetectorError, StationInfo
from detectors.pipeline import DetectorBank
from detectors.seismic import SeismicParams
from responders.delivery import Outbox, warm_up
from responders.stage import AlertStage
from responders.store import Store, StoreConflict
from streams.schemas import (
    MAX_AHEAD_S,
    GridFrame,
    ObservationPacket,
    SchemaError,
    SeismicEventMessage,
    decode,
    encode,
    epoch,
    iso,
    short,
)
from streams.takeover import Taken, read_back
from streams.topics import CONTROL_SCHEMA, Topics, control
from tocsin.settings import Settings

log = logging.getLogger("tocsin.streams")

#: how long a fetch may wait on the broker for more data. Faust hard-codes 1500 ms, and
#: aiokafka keeps one fetch in flight per broker, so a quiet topic's records (detections,
#: incidents) waited behind a busy one's 1.5-s fetches: up to seconds of latency per stage.
FETCH_MAX_WAIT_MS = 50
#: the most observation events handled together (the detect agent takes what has arrived)
DETECT_BATCH = 500
#: seconds read back before a detect rebuild's horizons, for a station's last record before
#: the takeover being older than the record at it (by up to a packet and its latency)
REBUILD_MARGIN_S = 3600.0


def detect_horizons(bank: DetectorBank, registry: Sequence[StationInfo],
                    ) -> tuple[dict[bytes, float], float]:
    """Each registry station's detector horizon (ms, by the station id as the records'
    key) and the longest: the registry's, or without one every kind's."""
    per_key = {st.station_id.encode(): 1000.0 * bank.horizon_s(st) for st in registry}
    longest = max(per_key.values(), default=max(
        (1000.0 * bank.horizon_s(StationInfo("any", kind, 0.0, 0.0))
         for kind in bank.detectors), default=0.0))
    return per_key, longest


def rebuild_window(per_key: Mapping[bytes, float], longest: float, upto_ms: float | None,
                   ) -> tuple[int | None, dict[bytes, int]]:
    """Where a detect rebuild reads from (a Kafka timestamp, ms) and where each station's
    records start: its horizon (``detect_horizons``) before ``upto_ms``, the timestamp of
    the record that called for the rebuild, less :data:`REBUILD_MARGIN_S`. The partitions
    are read from the longest horizon: a packet naming a station the registry lacks gets
    that much. None (the earliest) for a record with no timestamp or a detector with no
    horizon."""
    if upto_ms is None or not upto_ms >= 0 or not math.isfinite(longest):
        return None, {}
    anchor = upto_ms - 1000.0 * REBUILD_MARGIN_S
    keys = {k: math.floor(anchor - h) for k, h in per_key.items() if math.isfinite(h)}
    return max(0, math.floor(anchor - longest)), keys


def _stamp_ms(events: Sequence[Any], at: Mapping[tuple[str, int], int]) -> float | None:
    """The earliest Kafka timestamp (ms) of the events at the offsets ``at``; None if one
    has none. (The batch's newest could be hours later: a backlog.)"""
    stamps = [e.message.timestamp for e in events
              if at.get((e.message.topic, e.message.partition)) == e.message.offset]
    if not stamps or any(t is None or not t >= 0 for t in stamps):
        return None
    return 1000.0 * min(stamps)


class StoreRefused(Exception):
    """The database refused a transaction (a constraint, a value it cannot take): trying
    again would not help. The message names what was not stored and the database's
    error."""


async def until_stored(save: Callable[[], Any], what: str, *, first_wait: float = 0.5,
                       max_wait: float = 30.0) -> Any:
    """``save()`` in a thread (a database that answers slowly, or a connection that hangs
    until its TCP timeout, held up the whole worker's event loop: every agent, the
    producer's sends and the commits), tried again (waits doubling up to ``max_wait``)
    while the database cannot be reached: the agent holds its input meanwhile, so no offset
    is committed for outputs that were not stored (the consumer lag shows the stall).
    :class:`StoreRefused` if the
    database refuses the transaction itself (it escaped the agent before: the agent
    crashed, and its input stayed unacknowledged, so the partition's offset never moved
    past it again)."""
    wait = first_wait
    while True:
        try:
            return await asyncio.to_thread(save)
        except (SQLAlchemyError, StoreConflict) as exc:
            reason = str(exc).splitlines()[0]
            if not isinstance(exc, OperationalError | InterfaceError) and not getattr(
                    exc, "connection_invalidated", False):
                raise StoreRefused(f"{what} not stored: the database refused them: "
                                   f"{type(exc).__name__}: {reason}") from exc
            log.error("cannot store %s (%s); trying again in %.1f s", what, reason, wait)
            await asyncio.sleep(wait)
            wait = min(2 * wait, max_wait)
        except Exception as exc:  # noqa: BLE001 - a value the driver cannot bind, or a bug
            # not the database's answer, and trying again gives the same (sqlite3 raised
            # OverflowError binding an integer of 2**63): one input must not crash the stage
            reason = str(exc).splitlines()[0] if str(exc) else ""
            raise StoreRefused(f"{what} not stored: {type(exc).__name__}: {reason}") from exc


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


#: the callback's first step runs inline only on the interpreter it was built and tested
#: on: there it matches a task's first step (see ``_Consumer.wait_first``). On 3.12+,
#: ``asyncio.wait_for`` arms an ``asyncio.timeout`` on the current task, which inline would
#: be Faust's drain task (eager tasks would do it natively there; not tested here)
INLINE_FIRST_STEP = sys.version_info[:2] == (3, 11)


class _Rest:
    """Awaiting it runs the rest of a coroutine whose first step has already run and is
    waiting on ``pending`` (what that step yielded): ``yield from`` after the fact."""

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        pending = self.pending
        if pending is not None and hasattr(pending, "_asyncio_future_blocking"):
            pending._asyncio_future_blocking = True  # cleared after the first step
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # thrown in by the task (cancellation)
                try:
                    pending = self.coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = self.coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _rest(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Rest(coro, pending)


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """Faust's consumer hands every fetched message to its channels with
        ``wait_first(callback(message), suspend_flow.wait())``: four tasks and an
        ``asyncio.wait`` per message, most of a worker's per-message cost. The callback
        (decode, put on the stream's queue) almost never waits, so its first step runs
        here, at once, in a copy of the context as a task's would; only if it does wait (a
        full queue, paused flow) does the rest, as a task in that context, race
        ``suspend_flow`` as before. With the flow already suspended, or on another Python
        than 3.11 (``INLINE_FIRST_STEP``), this is Faust's ``wait_first``."""
        if (not INLINE_FIRST_STEP or len(coros) != 2 or timeout is not None
                or not asyncio.iscoroutine(coros[0]) or self.suspend_flow.is_set()
                or self._stopped.is_set() or self._crashed.is_set()):
            return await super().wait_first(*coros, timeout=timeout)
        first, other = coros
        ctx = contextvars.copy_context()
        try:
            pending = ctx.run(first.send, None)
        except StopIteration as stop:
            if asyncio.iscoroutine(other):
                other.close()  # never started
            return WaitResults([first], [stop.value], False)
        except BaseException:
            if asyncio.iscoroutine(other):
                other.close()
            raise
        if pending is not None and hasattr(pending, "_asyncio_future_blocking"):
            # as a task's step would: others may await the same future meanwhile
            pending._asyncio_future_blocking = False
        rest = self.loop.create_task(_rest(first, pending), context=ctx)
        return await super().wait_first(rest, other)


class _Producer(faust_aiokafka.Producer):
    async def wait_for_topics(self, topics: list[str]) -> None:
        """Have the topics' metadata now. On its first message to a topic, aiokafka's
        producer asks for the topic's metadata; when that request races with an update
        already on its way, it sleeps ``retry_backoff_ms`` (100 ms) and asks again. In 5
        of 31 bench replays the CAP alert, the first message of a worker to the alerts
        topic, came 100 ms after its incident."""
        producer = self._ensure_producer()
        for topic in topics:
            await producer.partitions_for(topic)

    async def partition_count(self, topic: str) -> int:
        """The topic's partitions as the broker has them now (metadata fetched afresh: a
        topic may have gained partitions since the cached answer)."""
        client = self._ensure_producer().client
        await client.force_metadata_update()
        return len(client.cluster.partitions_for_topic(topic) or ())


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
    Producer = _Producer


class _RawSchema(faust.Schema):
    """Keys and values stay the bytes Kafka holds (the agents decode and validate them).
    Faust's serializer registry ("raw" codec) returned the same bytes at a tenth of a
    worker's time per message; this builds the event directly."""

    def compile(self, app: Any, *, on_key_decode_error: Any = None,
                on_value_decode_error: Any = None, default_propagate: bool = False) -> Any:
        event = app.conf.Event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


class _Stream(faust.Stream):
    """faust.Stream with ``take_available``: batches of what has arrived, no timer."""

    async def take_available(self, max_: int) -> AsyncIterator[list[Any]]:
        """The events waiting in the stream's channel, at most ``max_`` at a time: waits for
        the first, takes the others that have already arrived, and acks them all when the
        caller asks for the next batch (so their offsets are committed only after the
        batch's outputs are stored; Faust's ``take_events`` also acked a batch its caller
        gave up half-way).

        Faust's ``take_events(n, within)`` keeps a batch open until ``n`` events or
        ``within`` seconds, so a lone event (an end marker, a quiet feed's packet) waited
        out the timer, and its iterator went once round the event loop per event (an
        ``asyncio.sleep(0)`` and a processor call each: half of a worker's Faust time).
        This one goes round once per batch. The per-event bookkeeping is Faust's iterator's
        (``faust._cython.streams.StreamIterator``): messages of an older assignment are
        dropped, the others tracked as unacked, the sensors told."""
        self._finalized = True
        started_by_us = await self.maybe_start()
        chan: Any = self.channel
        if not chan.is_iterator:
            chan = chan.__aiter__()
        queue = chan.queue
        app = self.app
        acking_topics = app.topics.acking_topics
        add_unacked = app.consumer.unacked.add
        on_message_in = self._on_message_in
        on_event_in = self._on_stream_event_in
        flow = app.flow_control
        try:
            while not self.should_stop:
                if queue._errors:
                    raise queue._errors.popleft()
                try:
                    values = [await chan.__anext__()]
                except StopAsyncIteration:
                    # the actor stops (Faust throws it into the channel): an async
                    # generator may not raise it, it would become a RuntimeError, a crash
                    return
                while len(values) < max_ and not queue.empty():
                    values.append(queue.get_nowait())
                generation = app.consumer_generation_id
                events = []
                for value in values:
                    if not isinstance(value, faust.types.EventT):
                        raise TypeError(f"take_available reads a topic's events, got "
                                        f"{type(value).__name__}")
                    msg = value.message
                    if not flow.is_active() or msg.generation_id != generation:
                        continue  # fetched before a rebalance: not ours to process now
                    if msg.topic in acking_topics and not msg.tracked:
                        msg.tracked = True
                        add_unacked(msg)
                        on_message_in(msg.tp, msg.offset, msg)
                    on_event_in(msg.tp, msg.offset, self, value)
                    events.append(value)
                if not events:
                    continue
                yield events
                # asked for the next batch: this one is done. A batch given up half-way (the
                # agent cancelled or crashed while on it) stays unacked, so its offsets are
                # not committed and it is fetched again: at least once, the upserts absorb it
                for event in events:
                    await self.ack(event)
        finally:
            if started_by_us:
                await self.stop()
                self.service_reset()


class _Worker(faust.Worker):
    """faust.Worker without the terminal spinner. At a log level of WARN or above, Faust's
    worker hangs a spinner handler on the root logger and sets the root to DEBUG, and
    leaves it there after start-up: every ``log.debug`` of aiokafka, Faust and mode
    (several per request and per fetch) then built a record that the handlers dropped,
    about 6 % of a worker's time in a replay. The root keeps the level asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None


class _App(faust.App):
    """faust.App with a consumer that fetches with a short wait (``FETCH_MAX_WAIT_MS``)."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


#: the control messages a stage acts on
CONTROL_TYPES = ("watermark", "end")
#: the longest run id a control message may carry (it is sent on through every stage)
RUN_ID_MAX = 200


def check_control(ctl: dict[str, Any], partitions: int | None = None) -> None:
    """SchemaError naming the field unless the control message is usable: a known
    ``type``, a ``time`` in seconds, ``partitions`` and ``partition`` counts (with
    ``partitions``, the observation partitions there are: a mark may not claim more, nor
    come from a partition beyond them; one claiming 100,000 held every detection after it
    for good), a ``run`` id that is a short string (it is sent on: a nested one could not
    be written again)."""
    kind = ctl.get("type")
    if kind not in CONTROL_TYPES:
        raise SchemaError(f"{CONTROL_SCHEMA}: type {short(kind)} is not one of "
                          f"{list(CONTROL_TYPES)}")
    run = ctl.get("run")
    if run is not None and not (isinstance(run, str) and len(run) <= RUN_ID_MAX):
        raise SchemaError(f"{CONTROL_SCHEMA}: run = {short(run)} is not a run id (a string "
                          f"of at most {RUN_ID_MAX} characters)")
    t = ctl.get("time")
    if t is not None:
        epoch(t, "time", CONTROL_SCHEMA)
    for name, least in (("partitions", 1), ("partition", 0)):
        n = ctl.get(name)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < least
                              or n > 100_000):
            raise SchemaError(f"{CONTROL_SCHEMA}: {name} = {short(n)} is not a count of "
                              f"partitions (an integer >= {least})")
    claimed, p = ctl.get("partitions"), ctl.get("partition")
    if claimed is not None and p is not None and p >= claimed:
        raise SchemaError(f"{CONTROL_SCHEMA}: partition {p} of {claimed} partitions")
    if partitions is not None:
        if claimed is not None and claimed > partitions:
            raise SchemaError(f"{CONTROL_SCHEMA}: partitions = {claimed}, but the "
                              f"observations topic has {partitions}")
        if p is not None and p >= partitions:
            raise SchemaError(f"{CONTROL_SCHEMA}: partition = {p}, but the observations "
                              f"topic has {partitions} partitions")


#: the longest control message looked for whole; observation packets are longer, and only
#: their first bytes are looked at (where our encoder puts the schema)
_CONTROL_MAX = 4096
_CONTROL_TAG = CONTROL_SCHEMA.encode()


def _is_control(raw: bytes) -> dict[str, Any] | None:
    """The control message ``raw`` is, or None. One written with its fields in another
    order (the schema not first: another producer's JSON) was taken for an unknown
    observation and dead-lettered."""
    if _CONTROL_TAG not in (raw if len(raw) <= _CONTROL_MAX else raw[:64]):
        return None
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return d if isinstance(d, dict) and d.get("schema") == CONTROL_SCHEMA else None


def dead_letter_record(event: Any, reason: str, value: bytes | None = None) -> bytes:
    """The dead letter of ``event`` (or of ``value``, a message the event's processing led
    to, with the event as its source)."""
    msg = event.message
    raw = value if value is not None else (
        event.value if isinstance(event.value, bytes) else str(event.value).encode())
    return orjson.dumps({
        "schema": "tocsin.deadletter/1",
        "reason": reason,
        "source": f"{msg.topic}[{msg.partition}]@{msg.offset}",
        "key": (event.key or b"").decode(errors="replace"),
        "value": raw[:65536].decode(errors="replace"),
    })


def observation(raw: bytes, now: float | None = None) -> ObservationPacket | GridFrame:
    """An observations-topic message decoded; :class:`SchemaError` if it is not one, or if
    it ends more than :data:`MAX_AHEAD_S` after ``now`` (the clock)."""
    pkt = decode(raw)
    if not isinstance(pkt, ObservationPacket | GridFrame):
        raise SchemaError(f"{type(pkt).__name__} does not belong on the observations topic")
    end = pkt.end if isinstance(pkt, ObservationPacket) else pkt.time
    now = time.time() if now is None else now
    if end > now + MAX_AHEAD_S:
        raise SchemaError(f"observation {pkt.station_id}: ends at {iso(end)}, "
                          f"{(end - now) / 86400:.1f} days after the worker's clock "
                          f"({iso(now)}): a timing fault, not taken")
    return pkt


def station_for(pkt: ObservationPacket | GridFrame,
                registry: dict[str, StationInfo]) -> StationInfo:
    """The registry's entry for the station, else what the packet says of itself."""
    known = registry.get(pkt.station_id)
    if known is not None:
        return known
    if isinstance(pkt, GridFrame):
        return StationInfo(pkt.station_id, pkt.kind, pkt.product_lat, pkt.product_lon, 0.0,
                           pkt.units)
    return StationInfo(pkt.station_id, pkt.kind, pkt.lat, pkt.lon,
                       0.0 if pkt.elevation_m != pkt.elevation_m else pkt.elevation_m,
                       pkt.units)


class WatermarkGate:
    """Holds detections until every observation partition's watermark has passed them.

    Detections come out in (declared, key) order, so the associator sees the same sequence
    whatever the partition count, the worker count or the speed of the replay. A detection
    sent again (a detect worker that crashed before its commit re-sends what it had sent)
    is held once.
    """

    def __init__(self, partitions: int | None = None) -> None:
        #: the observation partitions there are (None: as many as the marks say)
        self.known = partitions
        self.marks: dict[int, float] = {}
        self.partitions = partitions or 0
        self.buffer: list[tuple[float, str]] = []  # a heap of (declared, key)
        self.held: dict[str, Detection] = {}
        self.ended = False

    def add(self, det: Detection) -> None:
        if det.key in self.held:
            return
        self.held[det.key] = det
        heapq.heappush(self.buffer, (det.declared, det.key))

    def control(self, ctl: dict[str, Any]) -> list[Detection]:
        check_control(ctl, self.known)
        kind = ctl["type"]
        self.partitions = max(self.partitions, int(ctl.get("partitions") or 1))
        p = int(ctl.get("partition") or 0)
        t = math.inf if kind == "end" else float(ctl.get("time") or -math.inf)
        self.marks[p] = max(self.marks.get(p, -math.inf), t)
        low = min(self.marks.get(i, -math.inf) for i in range(self.partitions))
        out = []
        while self.buffer and self.buffer[0][0] <= low:
            out.append(self.held.pop(heapq.heappop(self.buffer)[1]))
        if low == math.inf:
            self.ended = True
            self.marks.clear()
        return out


def create_app(settings: Settings, topics: Topics, registry: list[StationInfo],
               gains: dict[str, float] | None = None) -> faust.App:
    """The worker app; ``gains`` (seismic station id -> counts per metre of displacement)
    size the seismic events the associator publishes (no magnitude without them)."""
    app = _App(
        topics.app_id,
        datadir=str(settings.cache_dir / "faust"),  # not the working directory
        broker=f"kafka://{settings.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_ms / 1000.0,
        broker_heartbeat_interval=1.0,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=16384,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        # the workers' outputs are few and each is on the way to an alert: they go at once
        # (what one step sends together still shares a request)
        producer_linger_ms=0,
        producer_max_request_size=8_000_000,
        consumer_max_fetch_size=8_000_000,
        Stream=_Stream,
        Worker=_Worker,
    )
    by_id = {s.station_id: s for s in registry}
    obs_topic = app.topic(topics.observations, internal=False, schema=_RawSchema())
    det_topic = app.topic(topics.detections, internal=False, schema=_RawSchema())
    inc_topic = app.topic(topics.incidents, internal=False, schema=_RawSchema())
    alert_topic = app.topic(topics.alerts, internal=False)
    seis_topic = app.topic(topics.seismic, internal=False)
    dlq_topic = app.topic(topics.deadletter, internal=False)

    # outputs are stored before the input's offset is committed (the agent acks an event
    # when it moves to the next one): a crash in between redelivers, the upsert absorbs it
    store = Store(settings.db_url, migrate_schema=False)
    dead_deliveries: list[dict[str, Any]] = []
    outbox = Outbox.from_settings(store, settings, dead_letter=dead_deliveries.append)
    bank = DetectorBank()
    bank.preload(s.kind for s in registry)
    # how far back a takeover rebuilds the detectors (see rebuild_window)
    horizons = detect_horizons(bank, registry)
    if topics.retention_ms is not None and math.isfinite(horizons[1]) and (
            horizons[1] > topics.retention_ms):
        log.warning("detect: the observations topic keeps %.1f days of records; the "
                    "detectors of %d stations need %.1f days to be rebuilt as they were "
                    "(raise TOCSIN_OBSERVATIONS_RETENTION_S)", topics.retention_ms / 864e5,
                    sum(h > topics.retention_ms for h in horizons[0].values()),
                    horizons[1] / 864e5)

    def new_associator() -> Associator:
        # a worker runs for months: it keeps no revisions the checkpoint has passed
        return Associator(registry, seismic=SeismicParams(gains=dict(gains or {})),
                          lateness_s=settings.association_lateness_s,
                          onset_lag_s=settings.association_onset_lag_s, history=False)

    associator = new_associator()
    # the gate knows the observation partitions there are: the worker's setting, or more
    # once a control message claims more and the broker confirms it (added to scale out)
    gate = WatermarkGate(topics.partitions)

    async def observation_partitions(ctl: dict[str, Any]) -> int:
        """The observation partitions a control message is checked against: asked of the
        broker when ``ctl`` claims more than are known (a mark claiming 100,000 held every
        later detection for good; one after partitions were added is right)."""
        known = gate.known or topics.partitions
        claimed = ctl.get("partitions")
        if isinstance(claimed, int) and not isinstance(claimed, bool) and claimed > known:
            producer = await app.maybe_start_producer()
            if isinstance(producer, _Producer):
                try:
                    known = max(known, await producer.partition_count(topics.observations))
                except KafkaError as exc:  # checked against what is known, then
                    log.warning("observation partitions not looked up: %r", exc)
            gate.known = known
        return known
    alert_stage = AlertStage(settings.cap_sender, settings.cap_status)
    # the offsets each stage's state has reached (see streams.takeover)
    taken = {"detect": Taken(), "associate": Taken(), "alert": Taken()}

    async def dead_letter(event: Any, reason: str, value: bytes | None = None) -> None:
        log.warning("dead-letter %s[%s]@%s: %s", event.message.topic, event.message.partition,
                    event.message.offset, reason)
        await dlq_topic.send(key=event.key, value=dead_letter_record(event, reason, value))

    def save_alerts(msgs: list[Any]) -> None:
        with store.begin() as conn:
            for msg in msgs:
                store.save_alert(msg, conn)
                outbox.enqueue(msg, conn)

    async def emit(found: list[tuple[Any, Sequence[Detection]]]) -> None:
        """The detections of these events stored, then sent. If the database refuses the
        transaction, each event's are stored on their own: an event whose detections it
        refuses goes to the dead-letter topic with the reason, and its detections are sent
        all the same (the association and the alerts go on; the letter says what the
        database lacks)."""
        dets = [det for _, ds in found for det in ds]
        if not dets:
            return
        try:
            await until_stored(partial(store.save_all, dets), f"{len(dets)} detections")
        except StoreRefused:
            for event, ds in found:
                try:
                    if ds:
                        await until_stored(partial(store.save_all, ds),
                                           f"detections {', '.join(d.key for d in ds)}")
                except StoreRefused as exc:
                    log.error("%s", exc)
                    await dead_letter(event, f"StoreRefused: {exc}")
        for det in dets:
            await det_topic.send(key=det.station_id.encode(), value=encode(det))

    async def feed_batch(batch: list[tuple[Any, StationInfo, ObservationPacket]]) -> None:
        """The batch's packets through the detector bank at once, in order."""
        if not batch:
            return
        results = bank.feed_many([(st, p.start, p.sample_interval, p.values)
                                  for _, st, p in batch])
        found: list[tuple[Any, Sequence[Detection]]] = []
        for (event, _, _), res in zip(batch, results, strict=True):
            if isinstance(res, DetectorError):
                await dead_letter(event, f"{type(res).__name__}: {res}")
            elif res:
                found.append((event, res))
        batch.clear()
        await emit(found)

    def rebuilt(stage: str, upto: dict[tuple[str, int], int], records: int, what: str,
                t0: float) -> None:
        log.warning("%s: took over %s with earlier records processed elsewhere: rebuilt %s "
                    "from %d records in %.2f s", stage,
                    ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(upto.items())),
                    what, records, time.monotonic() - t0)

    placed: dict[str, tuple[str, int]] = {}  # station id -> the partition its packets came on
    # the observation partitions of the latest assignment, until the detect agent has let
    # go of the stations of the others (Faust's signal hands over the whole assignment)
    assignment: list[set[tuple[str, int]]] = []

    @app.on_partitions_assigned.connect
    def _note_assignment(_app: Any, /, *args: Any, signal: BaseSignalT[Any],
                         **_: Any) -> None:
        assignment[:] = [{(tp.topic, tp.partition) for tp in args[0]
                          if tp.topic == topics.observations}]

    def let_go() -> None:
        """Forget the stations of the partitions this worker no longer holds, and where
        those partitions' records had brought its state: a worker running for months
        through rebalances kept every station it had ever had. If a partition comes back,
        its first record is then behind and the stations are rebuilt, as on a new worker
        (a rebalance that keeps a partition here keeps its stations)."""
        held = assignment.pop()
        for sid in [sid for sid, tp in placed.items() if tp not in held]:
            bank.forget(sid)
            del placed[sid]
        taken["detect"].keep(held)

    async def rebuild_detect(upto: dict[tuple[str, int], int], upto_ms: float | None) -> None:
        """The detectors of the partitions' stations as the records before ``upto`` left
        them; their detections are dropped (they went out when the records first came).
        Each station's records older than its detectors' horizon before ``upto_ms`` (the
        earliest Kafka timestamp of the records at ``upto``) are skipped. The stations this
        worker had from these partitions before start afresh too, even if none of their
        records is read back (a station silent for longer than its horizon)."""
        t0, n = time.monotonic(), 0
        seen: set[str] = set()
        for sid in [sid for sid, tp in placed.items() if tp in upto]:
            bank.forget(sid)
            del placed[sid]
        since, key_since = rebuild_window(*horizons, upto_ms)
        # a station's records older than its detectors need are not even decoded
        async with contextlib.aclosing(read_back(settings.bootstrap, upto, since_ms=since,
                                                 key_since_ms=key_since)) as batches:
            async for records in batches:
                items: list[tuple[StationInfo, float, float, Any]] = []
                for rec in records:
                    raw = rec.value
                    if not isinstance(raw, bytes) or _is_control(raw) is not None:
                        continue
                    try:
                        pkt = observation(raw)
                        station = station_for(pkt, by_id)
                    except (SchemaError, DetectorError):
                        continue  # dead-lettered when it first came
                    n += 1
                    placed[station.station_id] = (rec.topic, rec.partition)
                    if station.station_id not in seen:  # its first record: start it afresh
                        seen.add(station.station_id)
                        bank.forget(station.station_id)
                    if isinstance(pkt, ObservationPacket):
                        items.append((station, pkt.start, pkt.sample_interval, pkt.values))
                        continue
                    bank.feed_many(items)  # errors come back as results: dropped with them
                    items = []
                    with contextlib.suppress(DetectorError):
                        bank.feed_frame(station, pkt.time, pkt.lat, pkt.lon, pkt.values)
                bank.feed_many(items)
        rebuilt("detect", upto, n, f"the detectors of {len(seen)} stations", t0)

    @app.agent(obs_topic)
    async def detect(stream: Any) -> None:
        # events come in batches of what has arrived (the STA/LTA picker and the Lamb rows
        # advance their quiet stations together); a batch's offsets are committed after it
        # has been processed, its outputs stored
        async for events in stream.take_available(DETECT_BATCH):
            if assignment:
                let_go()
            behind = taken["detect"].behind(events)
            if behind:
                await rebuild_detect(behind, _stamp_ms(events, behind))
            batch: list[tuple[Any, StationInfo, ObservationPacket]] = []
            now = time.time()  # the clock a packet may not be far ahead of: once a batch
            for event in events:
                raw = event.value
                ctl = _is_control(raw) if isinstance(raw, bytes) else None
                if ctl is not None:
                    await feed_batch(batch)
                    try:
                        check_control(ctl, await observation_partitions(ctl))
                    except SchemaError as exc:
                        await dead_letter(event, f"SchemaError: {exc}")
                        continue
                    # after every packet before it on this partition: pass it on
                    await det_topic.send(key=b"control", value=control(
                        ctl["type"], partition=event.message.partition,
                        partitions=ctl.get("partitions"), time=ctl.get("time"),
                        run=ctl.get("run")))
                    continue
                try:
                    pkt = observation(raw, now)
                    placed[pkt.station_id] = (event.message.topic, event.message.partition)
                    if isinstance(pkt, ObservationPacket):
                        batch.append((event, station_for(pkt, by_id), pkt))
                        continue
                    await feed_batch(batch)
                    station = station_for(pkt, by_id)
                    dets = bank.feed_frame(station, pkt.time, pkt.lat, pkt.lon, pkt.values)
                except (SchemaError, DetectorError) as exc:
                    # the packets before it first: dead letters keep the input's order
                    await feed_batch(batch)
                    await dead_letter(event, f"{type(exc).__name__}: {exc}")
                    continue
                await emit([(event, dets)])
            await feed_batch(batch)

    async def rebuild_associate(upto: dict[tuple[str, int], int]) -> None:
        """A new associator and gate, given the detections and watermarks before ``upto``;
        the revisions and seismic events they make are dropped (they went out then)."""
        nonlocal associator, gate
        t0, n = time.monotonic(), 0
        associator, gate = new_associator(), WatermarkGate(gate.known)
        async with contextlib.aclosing(read_back(settings.bootstrap, upto)) as batches:
            async for records in batches:
                for rec in records:
                    n += 1
                    raw = rec.value
                    if not isinstance(raw, bytes):
                        continue
                    ctl = _is_control(raw)
                    if ctl is not None:
                        await observation_partitions(ctl)
                        try:
                            ready = gate.control(ctl)
                        except SchemaError:
                            continue  # dead-lettered when it first came
                        for det in ready:
                            with contextlib.suppress(Exception):  # dead-lettered then, too
                                associator.add(det)
                            await asyncio.sleep(0)  # an association each: let the others run
                        associator.take_seismic()
                        gate.ended = False
                        continue
                    with contextlib.suppress(SchemaError):  # dead-lettered when it first came
                        msg = decode(raw, "tocsin.detection/1")
                        assert isinstance(msg, Detection)
                        gate.add(msg)
        app.tocsin["associator"] = associator  # type: ignore[attr-defined]
        rebuilt("associate", upto, n, f"the associator ({len(gate.buffer)} detections held)",
                t0)

    @app.agent(det_topic)
    async def associate(stream: Any) -> None:
        async for event in stream.events():
            behind = taken["associate"].behind([event])
            if behind:
                await rebuild_associate(behind)
            raw = event.value
            ctl = _is_control(raw) if isinstance(raw, bytes) else None
            if ctl is not None:
                await observation_partitions(ctl)
                try:
                    ready = gate.control(ctl)
                except SchemaError as exc:
                    await dead_letter(event, f"SchemaError: {exc}")
                    continue
                for det in ready:
                    try:
                        revs = associator.add(det)
                    except LateDetection as exc:  # beyond the lateness allowed: said why
                        log.warning("%s", exc)
                        await dead_letter(event, f"LateDetection: {exc}", encode(det))
                        continue
                    except Exception as exc:  # noqa: BLE001 - one detection, not the stage
                        log.exception("associator failed on detection %s", det.key)
                        await dead_letter(event, f"association of {det.key} failed: "
                                          f"{type(exc).__name__}: {exc}", encode(det))
                        continue
                    if revs:
                        try:
                            await until_stored(partial(store.save_all, revs), "incident "
                                               f"revisions {', '.join(r.key for r in revs)}")
                        except StoreRefused as exc:  # sent all the same: the alerts go on
                            log.error("%s", exc)
                            await dead_letter(event, f"StoreRefused: {exc}", encode(det))
                    for rev in revs:
                        await inc_topic.send(key=rev.incident_id.encode(), value=encode(rev))
                    for ev in associator.take_seismic():
                        sm = SeismicEventMessage(ev.as_dict())
                        await seis_topic.send(key=sm.key.encode(), value=encode(sm))
                if gate.ended:
                    await seis_topic.send(key=b"control", value=control("end",
                                                                        run=ctl.get("run")))
                    await inc_topic.send(key=b"control", value=control("end", run=ctl.get("run")))
                    gate.ended = False
                continue
            try:
                msg = decode(raw, "tocsin.detection/1")
            except SchemaError as exc:
                await dead_letter(event, f"SchemaError: {exc}")
                continue
            assert isinstance(msg, Detection)  # decode checked the schema name
            gate.add(msg)

    async def rebuild_alert(upto: dict[tuple[str, int], int]) -> None:
        """A new alert stage, given the revisions before ``upto`` (what it sends for them
        is dropped: the alerts were stored and sent then)."""
        nonlocal alert_stage
        t0, n = time.monotonic(), 0
        alert_stage = AlertStage(settings.cap_sender, settings.cap_status)
        async with contextlib.aclosing(read_back(settings.bootstrap, upto)) as batches:
            async for records in batches:
                for rec in records:
                    raw = rec.value
                    if not isinstance(raw, bytes) or _is_control(raw) is not None:
                        continue
                    with contextlib.suppress(Exception):  # dead-lettered when it first came
                        rev = decode(raw, "tocsin.incident/1")
                        n += 1
                        alert_stage.add(rev)  # type: ignore[arg-type]
        app.tocsin["alerts"] = alert_stage  # type: ignore[attr-defined]
        rebuilt("alert", upto, n, "the alert stage", t0)

    @app.agent(inc_topic)
    async def alert(stream: Any) -> None:
        async for event in stream.events():
            behind = taken["alert"].behind([event])
            if behind:
                await rebuild_alert(behind)
            raw = event.value
            ctl = _is_control(raw) if isinstance(raw, bytes) else None
            if ctl is not None:
                try:
                    check_control(ctl)
                except SchemaError as exc:
                    await dead_letter(event, f"SchemaError: {exc}")
                    continue
                if ctl["type"] == "end":
                    await alert_topic.send(key=b"control", value=control("end",
                                                                         run=ctl.get("run")))
                continue
            try:
                rev = decode(raw, "tocsin.incident/1")
            except SchemaError as exc:
                await dead_letter(event, f"SchemaError: {exc}")
                continue
            try:
                msgs = alert_stage.add(rev)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - the stage is as it was before it
                log.exception("alert policy failed on %s", getattr(rev, "key", "?"))
                await dead_letter(event, f"alert policy failed: {type(exc).__name__}: {exc}")
                continue
            if msgs:
                # the alert and its deliveries (the outbox) in one transaction, before the
                # offset commit: a crash replays the revision, the keys absorb it
                try:
                    await until_stored(partial(save_alerts, msgs), "alerts "
                                       f"{', '.join(m.identifier for m in msgs)}")
                except StoreRefused as exc:  # on the alerts topic all the same
                    log.error("%s", exc)
                    await dead_letter(event, f"StoreRefused: {exc}; no delivery is queued "
                                      "for them")
            for msg in msgs:
                await alert_topic.send(key=msg.incident_id.encode(), value=encode(msg))

    @app.task
    async def warm_up_outputs() -> None:
        # before the first input: the first detection, incident and alert go out as fast
        # as the later ones (see responders.delivery.warm_up and _Producer)
        try:
            await asyncio.to_thread(warm_up, store, outbox)
        except SQLAlchemyError as exc:  # the agents wait for the database themselves
            log.warning("database warm-up failed: %s", str(exc).splitlines()[0])
        producer = await app.maybe_start_producer()
        if isinstance(producer, _Producer):
            try:
                await producer.wait_for_topics([t.get_topic_name() for t in (
                    det_topic, inc_topic, alert_topic, seis_topic, dlq_topic)])
            except KafkaError as exc:  # a send asks again itself
                log.warning("output topics' metadata not fetched: %r", exc)

    @app.timer(interval=0.5)
    async def deliver() -> None:
        try:
            await asyncio.to_thread(outbox.dispatch_due)
        except Exception:  # a failed round (the database away): the next one tries again;
            # an exception out of a timer would crash the worker and stop every delivery
            log.exception("delivery round failed")
        while dead_deliveries:
            d = dead_deliveries[0]
            try:
                await dlq_topic.send(key=d["alert"].encode(), value=orjson.dumps({
                    "schema": "tocsin.deadletter/1",
                    "reason": f"delivery failed: {d['reason']}", "source": "delivery",
                    "delivery": d}))
            except KafkaError as exc:
                # kept for the next round: out of a timer, the error would crash the worker
                log.error("dead delivery %s not sent to the dead-letter topic: %r",
                          d["key"], exc)
                return
            dead_deliveries.pop(0)
            log.error("delivery %s dead after %s attempts: %s", d["key"], d["attempts"],
                      d["reason"])

    app.tocsin = {  # type: ignore[attr-defined]
        "bank": bank, "associator": associator, "alerts": alert_stage, "store": store,
        "outbox": outbox,
        "agents": (detect, associate, alert),
    }
    return app
