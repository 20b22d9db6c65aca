"""A stage's state when it takes over partitions another worker (or an earlier run of this
one) has been processing.

The stages keep their state in memory: the detectors' baselines and triggers, the
associator's incidents and the watermark gate's held detections, what the alert stage
has sent. When a rebalance or a restart gives a worker a partition whose earlier records
were processed elsewhere, the stage rebuilds that state before it takes the partition's
next record: it reads the partition from its earliest record up to that one and feeds
the records through the same code with its outputs dropped (they were stored and sent
when the records first came: a record's offset is committed only after its outputs).

:class:`Taken` tells when: it keeps, per partition, the offset of the next record the
stage's state expects. A record further on means that the records in between went
through another worker. :func:`read_back` reads the records before it.

The detect stage reads no further back than its detectors need: the longest
``horizon_s`` of the registry's stations' detectors (the tide detector's harmonic history:
32 days) and an hour more before the record that triggered the rebuild, by the records'
Kafka timestamps, and it skips each station's records older than its own detectors'
horizon (a barometer needs hours) without decoding them (``streams.app.rebuild_window``).
The stations it had from those partitions before start afresh, and it forgets the stations
of the partitions a rebalance takes away from it (``let_go`` in ``streams.app``). The
observations topic is
created with a retention that covers the tide detector's
(``TOCSIN_OBSERVATIONS_RETENTION_S``; an existing topic with less is raised to it). A read
that makes no progress (the broker gone) logs so every ``STALL_S`` and goes on: the stage
holds its input meanwhile, as it does while the database is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

log = logging.getLogger("tocsin.streams")

#: seconds without a record before a read back says it is stalled (then again as often)
STALL_S = 30.0


class Taken:
    """The next offset each input partition's records have brought the stage's state to."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def keep(self, held: Iterable[tuple[str, int]]) -> None:
        """Forget the partitions not in ``held``: their next record is behind again."""
        held = set(held)
        self.next = {tp: o for tp, o in self.next.items() if tp in held}

    def behind(self, events: Iterable[Any]) -> dict[tuple[str, int], int]:
        """The partitions (topic, partition) whose first record among these Faust events
        comes after records the state has not taken in, each with that record's offset;
        the events are then counted as taken in. A partition seen for the first time is
        behind unless its record is the topic's first (offset 0)."""
        out: dict[tuple[str, int], int] = {}
        nxt = self.next
        for event in events:
            msg = event.message
            tp = (msg.topic, msg.partition)
            offset = msg.offset
            expected = nxt.get(tp)
            if (offset > expected if expected is not None else offset > 0) and tp not in out:
                out[tp] = offset
            nxt[tp] = offset + 1
        return out


async def read_back(bootstrap: str, upto: Mapping[tuple[str, int], int | None],
                    max_records: int = 100, consumer: Any = None,
                    since_ms: int | None = None, key_since_ms: Mapping[bytes, int] = {},
                    ) -> AsyncGenerator[list[ConsumerRecord[Any, Any]], None]:
    """The records of each partition before its offset in ``upto`` (``None``: its end when
    the read starts), from the earliest the broker holds, or with ``since_ms`` from the
    first stamped at or after it (Kafka's offsets for times), in batches (a batch is one
    partition's, in offset order). A record whose key is in ``key_since_ms`` and which is
    stamped before its value there is left out. ``consumer``: an unstarted consumer to read
    with instead of a new one on ``bootstrap`` (tests).

    Iterate it inside ``contextlib.aclosing``: a loop left early (its body raised) does
    not close an async generator, whose consumer then ran on until the garbage collector
    came by (a worker whose agent crashed in a rebuild hung on SIGTERM)."""
    tps = [TopicPartition(topic, partition) for topic, partition in upto]
    # earliest: if retention deletes the segment being read, the read goes on from what is
    # left (with the default, latest, it jumped to the end and the rebuild ended short)
    consumer = consumer or AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                            enable_auto_commit=False, fetch_max_wait_ms=50,
                                            auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        first = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps) if None in upto.values() else {}
        until = {tp: ends[tp] if upto[(tp.topic, tp.partition)] is None
                 else upto[(tp.topic, tp.partition)] for tp in tps}
        if since_ms is not None:
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
            # no record stamped so late: none to read
            first = {tp: max(first[tp], until[tp] if found.get(tp) is None
                             else found[tp].offset) for tp in tps}
        todo = {tp: end for tp, end in until.items() if first[tp] < end}
        for tp in tps:
            consumer.seek(tp, first[tp])
            if tp not in todo:
                consumer.pause(tp)
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=max_records)
            if batch:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= STALL_S:
                quiet_since = loop.time()
                positions = [f"{tp.topic}[{tp.partition}] at {await consumer.position(tp)} "
                             f"of {end}" for tp, end in todo.items()]
                log.warning("reading back for a takeover: no record for %.0f s (%s); the "
                            "stage waits for them", STALL_S, ", ".join(positions))
            for tp, records in batch.items():
                end = todo[tp]
                keep = [r for r in records if r.offset < end and (
                    r.key not in key_since_ms or r.timestamp >= key_since_ms[r.key])]
                if keep:
                    yield keep
                    # the caller's work on a batch does not yield: let the worker's timers,
                    # commits and other agents run between batches
                    await asyncio.sleep(0)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
                    consumer.pause(tp)
    finally:
        await consumer.stop()
