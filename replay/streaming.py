"""``tocsin replay``: publish a package into Kafka in event time and run the full pipeline.

The replayer creates the run's topics, starts the Faust workers (separate processes, one
consumer group), publishes the packages' packets with their original timestamps at
``speed`` times real time (``None`` = as fast as possible), sends an end marker to every
observation partition, and collects detections, incident revisions and alerts from their
topics until the end marker has travelled through every stage. The report is built by the
same function as ``tocsin detect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from detectors.base import Detection
from replay.package import ReplayPackage
from replay.registry import build_registry, write_registry
from replay.report import build_report
from replay.run import package_packets, report_window
from responders.store import migrate
from streams.app import _is_control, control
from streams.schemas import (
    AlertMessage,
    GridFrame,
    IncidentRevision,
    Message,
    ObservationPacket,
    SchemaError,
    SeismicEventMessage,
    decode,
    encode,
    iso,
)
from streams.takeover import read_back
from streams.topics import Topics, create_topics, delete_topics
from tocsin.settings import Settings

Listener = Callable[[Message], None]
log = logging.getLogger("tocsin.replay")


class ReplayError(RuntimeError):
    """The streaming replay could not finish (a worker died, a stage timed out)."""


@dataclass
class Collected:
    detections: list[Detection] = field(default_factory=list)
    revisions: list[IncidentRevision] = field(default_factory=list)
    alerts: list[AlertMessage] = field(default_factory=list)
    seismic: list[SeismicEventMessage] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _dead_letter_entry(raw: bytes) -> dict[str, str]:
    """Where a dead letter came from and why (its value left out: the package has it)."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        rec = None
    if not isinstance(rec, dict):
        rec = {"reason": f"not a tocsin.deadletter/1 record: {raw[:200]!r}"}
    return {k: str(rec.get(k, "")) for k in ("source", "reason", "key")}


async def read_dead_letters(bootstrap: str, topics: Topics) -> list[dict[str, str]]:
    """Every record of the run's dead-letter topic, read to the end it has now (once the
    workers have stopped: the deliveries they gave up on while the replay drained are in
    it too)."""
    topic = topics.deadletter
    out: list[dict[str, str]] = []
    upto: dict[tuple[str, int], int | None] = {
        (topic, p): None for p in range(topics.layout()[topic])}
    async with contextlib.aclosing(read_back(bootstrap, upto)) as batches:
        async for records in batches:
            out.extend(_dead_letter_entry(rec.value) for rec in records)
    return out


def start_workers(settings: Settings, topics: Topics, registry_file: Path, n: int,
                  log_dir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    # the workers see the same settings as this process (bootstrap, home, database)
    env = {**os.environ, "TOCSIN_KAFKA_BOOTSTRAP": settings.bootstrap,
           "TOCSIN_HOME": str(settings.home), "TOCSIN_DATABASE_URL": settings.db_url,
           "TOCSIN_PACKET_SECONDS": str(settings.packet_seconds),
           "TOCSIN_ASSOCIATION_LATENESS_S": str(settings.association_lateness_s),
           "TOCSIN_ASSOCIATION_ONSET_LAG_S": str(settings.association_onset_lag_s),
           "TOCSIN_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
           "TOCSIN_TOPIC_PREFIX": settings.topic_prefix,
           # recorded data: its alerts are an exercise, never a current warning
           "TOCSIN_CAP_STATUS": "Exercise", "TOCSIN_CAP_SENDER": settings.cap_sender}
    for i in range(n):
        log = open(log_dir / f"worker-{i}.log", "ab")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tocsin", "worker", "--run-id", topics.run_id,
             "--partitions", str(topics.partitions), "--registry", str(registry_file),
             "--no-migrate"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        ))
        log.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


async def collect(settings: Settings, topics: Topics, out: Collected,
                  listeners: list[Listener], with_observations: bool = False) -> None:
    """Read the run's output topics (and observations, for a dashboard) until the end."""
    names = [topics.detections, topics.incidents, topics.alerts, topics.seismic]
    ended: set[str] = set()  # the run is over when the alerts and the seismic events end
    if with_observations:
        names.append(topics.observations)
    consumer = AIOKafkaConsumer(
        *names,
        bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
        fetch_max_wait_ms=50,  # the end markers arrive on quiet topics: do not wait 0.5 s
    )
    await consumer.start()
    try:
        while not out.done.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for rec in records:
                    ctl = _is_control(rec.value)
                    if ctl is not None:
                        if ctl.get("type") == "end" and tp.topic in (topics.alerts,
                                                                     topics.seismic):
                            ended.add(tp.topic)
                            if len(ended) == 2:
                                out.done.set()
                        continue
                    try:
                        msg = decode(rec.value)
                    except SchemaError:
                        continue  # the workers dead-letter it; a viewer just skips it
                    if isinstance(msg, Detection):
                        out.detections.append(msg)
                    elif isinstance(msg, IncidentRevision):
                        out.revisions.append(msg)
                    elif isinstance(msg, AlertMessage):
                        out.alerts.append(msg)
                    elif isinstance(msg, SeismicEventMessage):
                        out.seismic.append(msg)
                    for listener in listeners:
                        listener(msg)
    finally:
        await consumer.stop()


async def wait_for_group(settings: Settings, group_id: str, members: int,
                         procs: list[subprocess.Popen[bytes]], timeout: float = 180.0,
                         settle: float = 2.0) -> None:
    """Wait until the workers' consumer group is Stable with ``members`` members.

    A partition that moves to another worker in the middle of a replay is not lost (the
    worker rebuilds its stations' detectors from the partition's earlier records, see
    ``streams.takeover``), but that re-reading costs time: so the replayer publishes only
    once every worker has joined and the group has stayed Stable for ``settle`` seconds.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=15000)
    await admin.start()
    deadline = time.monotonic() + timeout
    stable_since: float | None = None
    seen = "unknown"
    try:
        while True:
            dead = [p.returncode for p in procs if p.poll() is not None]
            if dead:
                raise ReplayError(f"a worker exited before the group formed ({dead})")
            groups = []
            try:
                for resp in await admin.describe_consumer_groups([group_id]):
                    groups.extend(resp.groups)
            except KafkaError as exc:  # no coordinator yet: the offsets topic is being made
                seen = f"{type(exc).__name__}"
            # (error_code, group, state, protocol_type, protocol, members, ...)
            ok = any(g[1] == group_id and g[2] == "Stable" and len(g[5]) == members
                     for g in groups)
            if groups:
                seen = ", ".join(f"{g[2]} with {len(g[5])} members" for g in groups)
            now = time.monotonic()
            if ok:
                stable_since = stable_since or now
                if now - stable_since >= settle:
                    return
            else:
                stable_since = None
            if now > deadline:
                raise ReplayError(f"consumer group {group_id} not Stable with {members} "
                                  f"members after {timeout:.0f} s (last seen: {seen})")
            await asyncio.sleep(0.25)
    finally:
        await admin.close()


async def drain_deliveries(settings: Settings, timeout: float) -> int:
    """Keep the workers up while alert deliveries are still pending (up to ``timeout``);
    returns how many are left (they stay in the outbox for the next worker)."""
    from sqlalchemy import func, select

    from responders.store import DeliveryRow, create_store_engine

    engine = create_store_engine(settings.db_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as c:
                left = int(c.execute(select(func.count()).select_from(DeliveryRow).where(
                    DeliveryRow.status == "pending")).scalar_one())
            if left == 0 or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)
    finally:
        engine.dispose()


class Progress:
    """A one-line progress bar on stderr: event time reached and samples/s."""

    def __init__(self, pkg: ReplayPackage, stream: TextIO | None) -> None:
        self.pkg, self.stream = pkg, stream
        self.t0 = time.monotonic()
        self.samples = 0
        self.last = 0.0

    def update(self, event_time: float, samples: int, final: bool = False) -> None:
        self.samples += samples
        now = time.monotonic()
        if self.stream is None or (not final and now - self.last < 0.5):
            return
        self.last = now
        frac = min(1.0, (event_time - self.pkg.start) / (self.pkg.end - self.pkg.start))
        bar = "#" * int(frac * 30)
        rate = self.samples / max(now - self.t0, 1e-9)
        self.stream.write(f"\r[{bar:<30}] {iso(event_time)[:19]}Z  {self.samples:>10d} samples"
                          f"  {rate:>10.0f} samples/s")
        if final:
            self.stream.write("\n")
        self.stream.flush()


class _Batches:
    """Messages into per-partition batches (aiokafka ``BatchBuilder``), each sent when full
    or flushed: a fraction of ``send``'s per-message cost. A key's partition is the one
    ``send`` would choose (aiokafka's default partitioner, murmur2), computed once per key;
    messages of one partition keep their order."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> None:
        self.producer, self.topic, self.partitions = producer, topic, sorted(partitions)
        self.partitioner = DefaultPartitioner()
        self.part_of: dict[bytes, int] = {}
        self.open: dict[int, Any] = {}
        self.sent: list[asyncio.Future[Any]] = []
        self.count = 0

    async def add(self, value: bytes, key: bytes, partition: int | None = None) -> None:
        if partition is None:
            partition = self.part_of.get(key)
            if partition is None:
                partition = self.part_of[key] = self.partitioner(key, self.partitions,
                                                                 self.partitions)
        batch = self.open.get(partition)
        if batch is None:
            batch = self.open[partition] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            await self.flush(partition)
            batch = self.open[partition] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ReplayError(f"a message of {len(value)} bytes does not fit in a batch")
        self.count += 1

    async def flush(self, partition: int | None = None) -> None:
        for p in [partition] if partition is not None else list(self.open):
            batch = self.open.pop(p, None)
            if batch is not None:
                batch.close()
                self.sent.append(await self.producer.send_batch(batch, self.topic,
                                                                partition=p))

    async def wait(self) -> None:
        """Send what is open and wait until the broker has acknowledged everything."""
        await self.flush()
        if self.sent:
            await asyncio.gather(*self.sent)
        self.sent = []


@dataclass(frozen=True)
class Encoded:
    """A packet as the replayer sends it: its message, key, end time and sample count."""

    value: bytes
    key: bytes
    end: float
    samples: int


def encode_packets(packets: list[ObservationPacket | GridFrame]) -> list[Encoded]:
    """The packets' messages, made before the replay starts sending (while the workers
    start up), so that sending at speed ``max`` is bound by Kafka and the workers, not by
    JSON encoding in the replayer."""
    return [Encoded(encode(p), p.station_id.encode(), p.end, len(p.values)) for p in packets]


async def publish(settings: Settings, topics: Topics, packets: list[Encoded],
                  pkg: ReplayPackage, speed: float | None, progress: Progress,
                  watermark_every: float = 600.0, end: bool = True) -> float:
    """Send the (encoded) packets in order of their end time, with watermarks, and (if
    ``end``) the end markers after them: a replay sent in parts sends them with its last.

    Every ``watermark_every`` seconds of event time a ``watermark`` control message goes to
    every observation partition: no packet sent after it starts before its ``time`` (packets
    go out by end time and last at most ``packet_seconds``), so the associator downstream
    can take detections in event-time order.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True,
        linger_ms=5, max_batch_size=1 << 20, max_request_size=8_000_000,
    )
    await producer.start()
    t_start = time.monotonic()
    next_mark = pkg.start + watermark_every
    lateness = 2.0 * settings.packet_seconds
    try:
        out = _Batches(producer, topics.observations,
                       list(await producer.partitions_for(topics.observations)))
        for pkt in packets:
            if pkt.end >= next_mark:
                mark = control("watermark", time=next_mark - lateness,
                               partitions=topics.partitions, run=topics.run_id)
                for p in range(topics.partitions):
                    await out.add(mark, b"control", partition=p)
                next_mark += watermark_every * max(1, int((pkt.end - next_mark)
                                                          // watermark_every))
            if speed is not None:
                due = t_start + (pkt.end - pkg.start) / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await out.wait()  # what is due goes out before the pause
                    await asyncio.sleep(delay)
            await out.add(pkt.value, pkt.key)
            progress.update(pkt.end, pkt.samples)
            if out.count % 2000 == 0:
                await out.wait()
        if end:
            # the end marker after each partition's last packet (a partition's batches go
            # out in order), all partitions in one round trip
            marker = control("end", partitions=topics.partitions, run=topics.run_id)
            for p in range(topics.partitions):
                await out.add(marker, b"control", partition=p)
        await out.wait()
    finally:
        await producer.stop()
    return time.monotonic() - t_start


def _check_running(procs: list[subprocess.Popen[bytes]], collector: asyncio.Task[None],
                   run_dir: Path) -> None:
    """ReplayError if every worker has exited; the collector's error if it failed."""
    if collector.done():
        collector.result()  # raises the collector's error
    dead = [p.returncode for p in procs if p.poll() is not None]
    if len(dead) == len(procs):
        raise ReplayError(f"all workers exited ({dead}); see {run_dir}/worker-*.log")


async def _while_running(work: Coroutine[Any, Any, float],
                         procs: list[subprocess.Popen[bytes]], collector: asyncio.Task[None],
                         run_dir: Path) -> float:
    """``work``, given up (cancelled) as soon as no worker is left or the collector fails:
    a replay at a real-time speed publishes for minutes."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(task), 0.2)
            _check_running(procs, collector, run_dir)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def replay_package(pkg: ReplayPackage, settings: Settings, *, speed: float | None,
                         partitions: int | None = None, workers: int = 1,
                         listeners: list[Listener] | None = None,
                         progress_stream: TextIO | None = sys.stderr,
                         run_dir: Path | None = None, timeout: float = 1800.0,
                         with_observations: bool = False,
                         drain_timeout: float = 60.0,
                         on_lag: Callable[[dict[str, Any]], None] | None = None,
                         keep_topics: bool = False,
                         ) -> dict[str, Any]:
    """Replay ``pkg`` through the workers and return the report (see the module doc).

    ``on_lag`` receives the workers' consumer lag every 2 s while the run lasts. The run's
    topics are deleted once it has finished (its outputs are in the report and the
    database, its dead letters in the report's ``run``), unless ``keep_topics``; a run
    that fails keeps them, for a look at what went wrong.
    """
    run_id = f"{pkg.event_id}-{uuid.uuid4().hex[:8]}"
    topics = Topics.for_run(settings, run_id, partitions)
    run_dir = run_dir or settings.home / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    registry = build_registry(pkg, settings.station_registry)
    registry_file = run_dir / "registry.csv"
    write_registry(registry, registry_file, pkg.seismic_gains)
    await create_topics(settings.bootstrap, topics)
    migrate(settings.db_url)  # once, before the workers share the database
    packets = package_packets(pkg, settings.packet_seconds)
    procs = start_workers(settings, topics, registry_file, workers, run_dir)
    outgoing = encode_packets(packets)  # while the workers start
    del packets
    collected = Collected()
    collector = asyncio.create_task(collect(settings, topics, collected, listeners or [],
                                            with_observations))
    progress = Progress(pkg, progress_stream)
    lag_task = None
    if on_lag is not None:
        from streams.lag import monitor_lag

        lag_task = asyncio.create_task(monitor_lag(
            settings.bootstrap, topics.app_id,
            [topics.observations, topics.detections, topics.incidents], on_lag))
    stats: dict[str, Any] = {"run_id": run_id, "workers": workers,
                             "partitions": topics.partitions}
    try:
        await wait_for_group(settings, topics.app_id, workers, procs)
        t0 = time.monotonic()
        stats["publish_s"] = await _while_running(
            publish(settings, topics, outgoing, pkg, speed, progress), procs, collector,
            run_dir)
        progress.update(pkg.end, 0, final=True)
        deadline = time.monotonic() + timeout
        while not collected.done.is_set():
            _check_running(procs, collector, run_dir)
            if time.monotonic() > deadline:
                raise ReplayError(f"the pipeline did not finish within {timeout:.0f} s; "
                                  f"see {run_dir}/worker-*.log")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(collected.done.wait(), 0.1)
        stats["elapsed_s"] = time.monotonic() - t0
        stats["samples"] = progress.samples
        stats["packets"] = len(outgoing)
        stats["deliveries_pending"] = await drain_deliveries(settings, drain_timeout)
    finally:
        collected.done.set()
        if lag_task is not None:
            lag_task.cancel()
            with contextlib.suppress(BaseException):
                await lag_task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(collector, 10)
        stop_workers(procs)
    stats["dead_letters"] = await read_dead_letters(settings.bootstrap, topics)
    stats["topics"] = "kept" if keep_topics else "deleted"
    if not keep_topics:
        try:
            await delete_topics(settings.bootstrap, topics)
        except (KafkaError, RuntimeError, OSError, TimeoutError) as exc:
            # a finished run's report is what matters; the topics can go later
            stats["topics"] = f"not deleted: {type(exc).__name__}: {exc}"
            log.warning("replay %s: its topics were not deleted: %s", run_id, exc)
    event = {"id": pkg.event_id, "title": pkg.title, **report_window(pkg)}
    report = build_report(event, collected.detections, collected.revisions, collected.alerts,
                          mode="replay", seismic_gains=pkg.seismic_gains)
    # the seismic event revisions as the workers published them (sized with the package's
    # gains, which the registry file gives them); the report's seismic_events are computed
    # from the picks
    stats["seismic_revisions"] = [m.body for m in collected.seismic]
    report["run"] = stats
    return report
