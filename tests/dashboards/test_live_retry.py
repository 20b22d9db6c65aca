"""The live dashboard's reading across Kafka errors, on a stand-in client: the timing of a
failure that a real broker cannot be made to give on cue (the real broker going away and
coming back: tests/dashboards/test_live_kafka.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

import dashboards.live as live
from dashboards.state import LiveState
from streams.topics import Topics
from tocsin.settings import Settings

TOPICS = Topics.for_run(Settings(), "retry", 1)


class _Consumer:
    def __init__(self, fail_end_offsets: int) -> None:
        self.fail, self.seeks = fail_end_offsets, []  # type: ignore[var-annotated]

    def assign(self, tps: Any) -> None:
        pass

    async def position(self, tp: TopicPartition) -> int:
        return 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.topic, offset))

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.extend((tp.topic, "beginning") for tp in tps)

    async def end_offsets(self, tps: Any) -> dict[TopicPartition, int]:
        if self.fail:
            self.fail -= 1
            raise KafkaTimeoutError("the broker went away")
        return {tp: 1_000_000 for tp in tps}

    async def offsets_for_times(self, q: Any) -> dict[TopicPartition, Any]:
        return {tp: type("At", (), {"offset": 999_000})() for tp in q}

    async def getmany(self, **kw: Any) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.02)
        return {}

    async def stop(self) -> None:
        pass


class _Admin:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return [{"topic": n, "error_code": 0, "partitions": [{"partition": 0}]}
                for n in names]

    async def close(self) -> None:
        pass


def _follow(consumer: _Consumer, admin: _Admin, monkeypatch: pytest.MonkeyPatch,
            seconds: float = 1.5) -> LiveState:
    async def connect(bootstrap: str) -> tuple[_Consumer, _Admin]:
        return consumer, admin

    monkeypatch.setattr(live, "_connect", connect)
    state = LiveState()

    async def go() -> None:
        task = asyncio.create_task(live.follow("x:1", TOPICS, state, refresh_s=0.1,
                                               retry_max_s=0.1))
        await asyncio.sleep(seconds)
        assert not task.done(), task
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    return state


def test_a_failure_before_the_history_is_found_does_not_read_it_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka failed after the observation partitions were assigned and before the seek to
    ``history_s`` back: the retry left them read from their beginning (weeks)."""
    consumer = _Consumer(fail_end_offsets=1)
    state = _follow(consumer, _Admin(), monkeypatch)
    obs = [offset for topic, offset in consumer.seeks if topic == TOPICS.observations]
    assert obs == ["beginning", 999_000]  # assigned from the start, then the history
    assert state.source is not None and state.source["ok"]


def test_a_failure_while_the_partitions_are_assigned_does_not_read_it_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka failed in the seek to the beginning of newly assigned partitions, after they
    were counted as assigned: the next look found nothing new, the history was never set,
    and the observations were read from their beginning (weeks)."""
    class _Failing(_Consumer):
        def __init__(self) -> None:
            super().__init__(fail_end_offsets=0)
            self.fail_seek = 1

        async def seek_to_beginning(self, *tps: TopicPartition) -> None:
            if self.fail_seek:
                self.fail_seek -= 1
                raise KafkaTimeoutError("the broker went away")
            await super().seek_to_beginning(*tps)

    consumer = _Failing()
    state = _follow(consumer, _Admin(), monkeypatch)
    obs = [offset for topic, offset in consumer.seeks if topic == TOPICS.observations]
    assert obs == [999_000]  # the history, though the first assignment failed half way
    assert state.source is not None and state.source["ok"]


def test_an_error_that_is_not_about_reaching_kafka_is_said_as_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = _follow(_Consumer(0), _Admin(TopicAuthorizationFailedError("no ACL")),
                    monkeypatch, seconds=0.5)
    assert state.source is not None and not state.source["ok"]
    assert state.source["detail"].startswith(
        "Kafka at x:1 refuses the dashboard (TopicAuthorizationFailedError"), state.source
    state = _follow(_Consumer(0), _Admin(KafkaTimeoutError()), monkeypatch, seconds=0.5)
    assert state.source["detail"] == "Kafka at x:1 does not answer (KafkaTimeoutError)"
