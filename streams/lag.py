"""Consumer lag of the workers' group: how many messages Kafka holds that they have not
committed yet, per topic. Feed health on the dashboard shows it next to station latency.
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
from aiokafka.errors import KafkaError

log = logging.getLogger("tocsin.streams.lag")


async def consumer_lag(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer,
                       group_id: str, topics: list[str]) -> dict[str, Any]:
    """``{"group", "total", "topics": {topic: lag}, "partitions": {"topic[p]": lag}}``.

    Lag = log-end offset - committed offset; a partition the group has not committed yet
    counts from the log start (all of it is unread).
    """
    described = await admin.describe_topics(topics)
    tps = sorted(TopicPartition(d["topic"], part["partition"]) for d in described
                 if d.get("error_code", 0) == 0 for part in d.get("partitions", []))
    committed = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    by_topic: dict[str, int] = dict.fromkeys(topics, 0)
    parts: dict[str, int] = {}
    for tp in tps:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        lag = max(0, ends[tp] - done)
        by_topic[tp.topic] += lag
        parts[f"{tp.topic}[{tp.partition}]"] = lag
    return {"group": group_id, "total": sum(by_topic.values()), "topics": by_topic,
            "partitions": parts}


async def monitor_lag(bootstrap: str, group_id: str, topics: list[str],
                      report: Callable[[dict[str, Any]], None],
                      every_s: float = 2.0) -> None:
    """Report the group's lag every ``every_s`` seconds until cancelled."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        while True:
            try:
                lag = await consumer_lag(admin, consumer, group_id, topics)
                lag["at"] = time.time()
                report(lag)
            except KafkaError as exc:  # the group is not there yet, a leader moved
                log.debug("consumer lag of %s not available: %s", group_id, exc)
            await asyncio.sleep(every_s)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
        with contextlib.suppress(Exception):
            await admin.close()
