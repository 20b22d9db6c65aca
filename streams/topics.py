"""Topic names and their explicit creation.

Every run has its own namespace ``<prefix>.<run_id>.*`` so a replay never mixes with live
data or with another replay. Observations are keyed by station id (so more partitions and
workers scale out); detections, incidents and alerts have one partition each because
association needs the global view and alert chains must stay in order.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition

from tocsin.settings import Settings

log = logging.getLogger("tocsin.streams")

CONTROL_SCHEMA = "tocsin.control/1"


def control(kind: str, **fields: Any) -> bytes:
    """A control message (``watermark``, ``end``) for the run's topics."""
    return orjson.dumps({"schema": CONTROL_SCHEMA, "type": kind, **fields})

# Kafka's legal topic characters and longest name; "observations" is the longest suffix
_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 249
_LONGEST_SUFFIX = len(".observations")


class TopicError(ValueError):
    """A run's topics cannot be named or created as asked (the message names the topic,
    the bad value and what was allowed, or the broker's error)."""


def _check_part(what: str, value: str) -> None:
    if not value:
        raise TopicError(f"{what} is empty: topic names need one of [A-Za-z0-9._-]+")
    bad = _ILLEGAL.search(value)
    if bad:
        raise TopicError(f"{what} {value!r} has {bad.group()!r}, which Kafka does not allow "
                         f"in a topic name (allowed: [A-Za-z0-9._-])")


@dataclass(frozen=True)
class Topics:
    prefix: str
    run_id: str
    partitions: int
    replication: int
    #: the observations topic's ``retention.ms`` (None: the broker's default): a worker
    #: taking stations over rebuilds their detectors from what the topic still holds
    retention_ms: int | None = None

    def __post_init__(self) -> None:
        _check_part("topic prefix", self.prefix)
        _check_part("run id", self.run_id)
        if len(self.observations) > _MAX_NAME:
            raise TopicError(f"run id {self.run_id!r} makes topic names longer than Kafka's "
                             f"{_MAX_NAME} characters (at most "
                             f"{_MAX_NAME - len(self.prefix) - 1 - _LONGEST_SUFFIX} allowed "
                             f"with prefix {self.prefix!r})")
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise TopicError(f"partitions {self.partitions!r}: the observations topic needs "
                             f"at least 1")
        if not isinstance(self.replication, int) or self.replication < 1:
            raise TopicError(f"replication factor {self.replication!r}: at least 1")
        if self.retention_ms is not None and self.retention_ms < 1:
            raise TopicError(f"retention {self.retention_ms!r} ms: at least 1")

    @classmethod
    def for_run(cls, settings: Settings, run_id: str, partitions: int | None = None) -> Topics:
        """The run's topics; ``partitions`` of the observations topic (default
        ``settings.partitions``). Raises :class:`TopicError` (a ValueError) for a run id or
        prefix with characters Kafka does not allow, or fewer than 1 partition."""
        return cls(settings.topic_prefix, run_id,
                   settings.partitions if partitions is None else partitions,
                   settings.replication, round(settings.observations_retention_s * 1000))

    def _name(self, what: str) -> str:
        return f"{self.prefix}.{self.run_id}.{what}"

    @property
    def observations(self) -> str:
        return self._name("observations")

    @property
    def detections(self) -> str:
        return self._name("detections")

    @property
    def incidents(self) -> str:
        return self._name("incidents")

    @property
    def alerts(self) -> str:
        return self._name("alerts")

    @property
    def seismic(self) -> str:
        return self._name("seismic")

    @property
    def deadletter(self) -> str:
        return self._name("deadletter")

    def layout(self) -> dict[str, int]:
        return {
            self.observations: self.partitions,
            self.detections: 1,
            self.incidents: 1,
            self.alerts: 1,
            self.seismic: 1,
            self.deadletter: 1,
        }

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-{self.run_id}"


async def create_topics(bootstrap: str, topics: Topics, timeout: float = 30.0) -> None:
    """Create the run's topics (idempotent) and wait until their leaders serve them.

    A new partition's leader shows in the metadata before the broker has taken the
    leadership up: a produce sent at once got ``NotLeaderForPartitionError`` on some
    partitions and waited out the producer's retry backoff (100 ms). So the partitions'
    end offsets are asked of their leaders too, which fails the same way until they serve.

    A topic the broker refuses raises :class:`TopicError` at once, naming the topic and the
    broker's error; so does a topic that exists with another partition count than asked.
    The observations topic gets ``topics.retention_ms``; one that exists with less is
    raised to it (its other topic settings kept), never lowered (a broker that refuses
    the change is logged, not fatal)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        configs = {} if topics.retention_ms is None else {
            topics.observations: {"retention.ms": str(topics.retention_ms)}}
        new = [NewTopic(name, num_partitions=n, replication_factor=topics.replication,
                        topic_configs=configs.get(name, {}))
               for name, n in topics.layout().items()]
        # aiokafka hands back the broker's answer unchecked: one error code per topic
        resp = await admin.create_topics(new)
        existed, failed = _created(resp.topic_errors)
        if failed:
            raise TopicError("the broker did not create "
                             + "; ".join(f"topic {name!r}: {err}" for name, err in failed))
        if topics.retention_ms is not None and topics.observations in existed:
            await _ensure_retention(admin, topics.observations, topics.retention_ms)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            described = {t.get("topic"): t
                         for t in await admin.describe_topics(list(topics.layout()))}
            for name in existed:
                have = described.get(name, {})
                count = len(have.get("partitions") or [])
                asked = topics.layout()[name]
                if have.get("error_code", 0) == 0 and count and count != asked:
                    raise TopicError(f"topic {name!r} exists with {count} partitions, "
                                     f"{asked} asked (delete it, or ask for {count})")
            ready = all(
                name in described and described[name].get("error_code", 0) == 0
                and len(described[name].get("partitions", [])) == n
                and all(p.get("leader", -1) >= 0 for p in described[name]["partitions"])
                for name, n in topics.layout().items()
            )
            if ready:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topics {list(topics.layout())} not ready after {timeout} s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, retry_backoff_ms=20)
    await consumer.start()
    try:
        left = deadline - asyncio.get_running_loop().time()
        await asyncio.wait_for(consumer.end_offsets(
            [TopicPartition(name, p) for name, n in topics.layout().items() for p in range(n)]),
            timeout=max(left, 1.0))
    except TimeoutError:
        raise TimeoutError(f"topics {list(topics.layout())} have leaders that do not serve "
                           f"them after {timeout} s") from None
    finally:
        await consumer.stop()


async def _describe(admin: AIOKafkaAdminClient, topic: str,
                    patience_s: float = 10.0) -> tuple[Any, int, str, list[Any]]:
    """A topic's DescribeConfigs answer. Just after a topic is made the broker may not
    describe it yet (UNKNOWN_TOPIC_OR_PARTITION, retriable): asked again until
    ``patience_s`` has passed, then the last answer is given as it is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC,
                                                               topic)])
        code, message, _type, _name, entries = resp.resources[0][:5]
        if not code or not for_code(code).retriable or loop.time() > deadline:
            return resp, code, message, entries
        await asyncio.sleep(0.2)


async def _ensure_retention(admin: AIOKafkaAdminClient, topic: str, retention_ms: int) -> None:
    """An existing topic kept the retention it was made with (the broker's 7 days for a
    topic older than the setting): a takeover then rebuilt tide gauges from less than
    their 32 days. Raise it to ``retention_ms`` (AlterConfigs sets a topic's whole dynamic
    configuration: the others it has are sent along)."""
    resp, code, message, entries = await _describe(admin, topic)
    if code:
        log.warning("topic %s: its retention cannot be read (%s: %s); left as it is", topic,
                    for_code(code).__name__, message)
        return
    # (name, value, read_only, is_default | config_source, ...): source 1 is the topic's own
    own = {e[0]: e[1] for e in entries if not e[2] and (
        e[3] is False if resp.API_VERSION == 0 else e[3] == 1)}
    have = next((int(e[1]) for e in entries if e[0] == "retention.ms"), -1)
    if have < 0 or have >= retention_ms:  # -1: kept for ever
        return
    own["retention.ms"] = str(retention_ms)
    (alter,) = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                         configs=own)])
    code, message = alter.resources[0][:2]
    if code:  # no right to alter it (ACLs, a managed cluster): run with what it keeps
        log.warning("topic %s keeps %.1f days of records where %.1f are asked, and the "
                    "broker refused the change (%s: %s): takeovers rebuild tide gauges from "
                    "less than their harmonic history", topic, have / 864e5,
                    retention_ms / 864e5, for_code(code).__name__, message)
        return
    log.warning("topic %s kept %.1f days of records: raised to %.1f days "
                "(TOCSIN_OBSERVATIONS_RETENTION_S)", topic, have / 864e5, retention_ms / 864e5)


def _created(topic_errors: list[tuple[Any, ...]]) -> tuple[set[str], list[tuple[str, str]]]:
    """From a CreateTopics answer: the topics that existed already, and the (topic, the
    broker's error) of those it refused."""
    existed: set[str] = set()
    failed: list[tuple[str, str]] = []
    for name, code, *message in topic_errors:  # v0 has no message
        if code == 0:
            continue
        if code == TopicAlreadyExistsError.errno:
            existed.add(name)
            continue
        text = message[0] if message and message[0] else ""
        failed.append((name, f"{for_code(code).__name__} (Kafka error {code})"
                       + (f": {text}" if text else "")))
    return existed, failed


async def delete_topics(bootstrap: str, topics: Topics) -> None:
    """Delete the run's topics (a finished replay's: its outputs are in its report)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        resp = await admin.delete_topics(list(topics.layout()))
    finally:
        await admin.close()
    # aiokafka hands back the broker's answer unchecked; 3: the topic does not exist
    failed = [(t, code) for t, code, *_ in resp.topic_error_codes if code not in (0, 3)]
    if failed:
        raise RuntimeError(f"deleting topics failed (topic, Kafka error code): {failed}")
