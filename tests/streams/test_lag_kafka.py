"""Consumer lag on the real broker: log-end offset minus the group's committed offset."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError

from streams.lag import consumer_lag, monitor_lag
from tocsin.settings import Settings

pytestmark = pytest.mark.kafka


def test_lag_is_end_minus_committed_per_partition(kafka_settings: Settings) -> None:
    topic = f"lagtest-{uuid.uuid4().hex[:8]}"
    group = f"group-{uuid.uuid4().hex[:8]}"
    boot = kafka_settings.bootstrap

    async def go() -> tuple[dict, dict, list[dict]]:  # type: ignore[type-arg]
        admin = AIOKafkaAdminClient(bootstrap_servers=boot)
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=boot, acks="all")
        await producer.start()
        for i in range(10):
            await producer.send_and_wait(topic, b"x", partition=0)
            if i < 4:
                await producer.send_and_wait(topic, b"y", partition=1)
        await producer.stop()
        reader = AIOKafkaConsumer(bootstrap_servers=boot, group_id=None)
        await reader.start()
        try:
            # nothing committed yet; a fresh broker makes its offsets topic on first use
            for _ in range(100):
                try:
                    before = await consumer_lag(admin, reader, group, [topic])
                    break
                except GroupCoordinatorNotAvailableError:
                    await asyncio.sleep(0.3)
            worker = AIOKafkaConsumer(bootstrap_servers=boot, group_id=group,
                                      enable_auto_commit=False)
            await worker.start()
            worker.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
            await worker.commit({TopicPartition(topic, 0): 7, TopicPartition(topic, 1): 4})
            await worker.stop()
            after = await consumer_lag(admin, reader, group, [topic])
        finally:
            await reader.stop()
        seen: list[dict] = []  # type: ignore[type-arg]
        task = asyncio.create_task(monitor_lag(boot, group, [topic], seen.append, every_s=0.2))
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await admin.close()
        return before, after, seen

    before, after, seen = asyncio.run(go())
    assert before["total"] == 14 and before["partitions"] == {f"{topic}[0]": 10,
                                                              f"{topic}[1]": 4}
    assert after["total"] == 3 and after["topics"] == {topic: 3}
    assert after["partitions"] == {f"{topic}[0]": 3, f"{topic}[1]": 0}
    assert seen and seen[0]["total"] == 3 and seen[0]["group"] == group and "at" in seen[0]
