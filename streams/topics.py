"""Topic names and their explicit creation.

Every run has its own namespace ``<prefix>.<run_id>.*`` so a replay never mixes with live
data or with another replay. Observations are keyed by station id (so more partitions and
workers scale out); detections, incidents and alerts have one partition each because
association needs the global view and alert chains must stay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from tocsin.settings import Settings

CONTROL_SCHEMA = "tocsin.control/1"


@dataclass(frozen=True)
class Topics:
    prefix: str
    run_id: str
    partitions: int
    replication: int

    @classmethod
    def for_run(cls, settings: Settings, run_id: str, partitions: int | None = None) -> Topics:
        return cls(settings.topic_prefix, run_id, partitions or settings.partitions,
                   settings.replication)

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
    end offsets are asked of their leaders too, which fails the same way until they serve."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        new = [NewTopic(name, num_partitions=n, replication_factor=topics.replication)
               for name, n in topics.layout().items()]
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            described = {t.get("topic"): t
                         for t in await admin.describe_topics(list(topics.layout()))}
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


async def delete_topics(bootstrap: str, topics: Topics) -> None:
    """Delete the run's topics (a benchmark's runs, which nobody reads again)."""
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
