"""The worker app's helpers that need no broker."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest


def test_outputs_wait_for_the_database() -> None:
    """An agent's store call is tried again while the database cannot be reached (its
    input is not committed meanwhile); other errors are not swallowed: they are not tried
    again, and come out as a StoreRefused naming them (the agent dead-letters the input and
    goes on; a crash left the record unacknowledged, to crash the agent again)."""
    import asyncio

    from sqlalchemy.exc import OperationalError

    from streams.app import StoreRefused, until_stored

    calls: list[int] = []

    def save() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        return "stored"

    assert asyncio.run(until_stored(save, "x", first_wait=0.01)) == "stored"
    assert len(calls) == 3

    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(StoreRefused, match="x not stored: ValueError: a bug") as err:
        asyncio.run(until_stored(broken, "x", first_wait=0.01))
    assert isinstance(err.value.__cause__, ValueError)


def test_a_slow_database_does_not_hold_the_event_loop_up() -> None:
    """A save ran on the worker's event loop: while the database took its time (or a dead
    connection its TCP timeout) no other agent, send, heartbeat or commit ran."""
    import asyncio
    import threading

    from streams.app import until_stored

    released = threading.Event()

    def slow() -> str:
        # only a task on the event loop lets it go: on the loop, it would wait in vain
        return "stored" if released.wait(20) else "the save held the event loop"

    async def go() -> str:
        async def release() -> None:
            released.set()

        task = asyncio.create_task(release())
        try:
            return await until_stored(slow, "x")
        finally:
            await task

    assert asyncio.run(go()) == "stored"


def test_consumer_hands_a_message_over_at_once_and_races_the_flow_only_if_it_waits(
        tmp_path: object) -> None:
    """The worker consumer's ``wait_first`` (Faust calls it once per fetched message with
    the channel callback and ``suspend_flow.wait()``): a callback that does not wait has run
    when the call returns, with no task; one that waits runs its first step at once, then
    finishes when what it waits for comes, or is cancelled when the flow is suspended
    first, as in Faust's own ``wait_first``."""
    import asyncio
    import contextvars
    from pathlib import Path

    from streams.app import _Consumer, create_app
    from streams.topics import Topics
    from tocsin.settings import Settings

    settings = Settings(home=Path(str(tmp_path)), kafka_bootstrap="127.0.0.1:9")
    app = create_app(settings, Topics.for_run(settings, "unit", 1), [])

    async def scenario() -> list[object]:
        consumer = app.consumer
        assert isinstance(consumer, _Consumer)
        seen: list[object] = []

        async def quick() -> str:
            seen.append("quick")
            return "delivered"

        before = len(asyncio.all_tasks())
        res = await consumer.wait_first(quick(), consumer.suspend_flow.wait())
        assert len(asyncio.all_tasks()) == before
        assert (res.results, res.stopped) == (["delivered"], False)

        async def waits(fut: asyncio.Future[str]) -> str:
            seen.append("start")
            try:
                value = await fut
                seen.append(value)
                return value
            finally:
                seen.append("finally")

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        call = asyncio.ensure_future(consumer.wait_first(waits(fut), consumer.suspend_flow.wait()))
        await asyncio.sleep(0)
        assert seen[-1] == "start"  # its first step ran
        fut.set_result("queued")
        res = await call
        assert res.results == ["queued"] and seen[-2:] == ["queued", "finally"]

        # the first step runs in a copy of the context, as a task's would
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

        async def sets() -> str:
            var.set("set by the callback")
            return var.get()

        res = await consumer.wait_first(sets(), consumer.suspend_flow.wait())
        assert res.results == ["set by the callback"] and var.get() == "unset"

        # a future the callback waits on can be awaited by others meanwhile
        fut = loop.create_future()
        call = asyncio.ensure_future(consumer.wait_first(waits(fut), consumer.suspend_flow.wait()))

        async def also() -> str:
            return await fut

        other = asyncio.ensure_future(also())  # awaits the same future
        await asyncio.sleep(0)
        fut.set_result("shared")
        assert await other == "shared" and (await call).results == ["shared"]

        fut = loop.create_future()
        call = asyncio.ensure_future(consumer.wait_first(waits(fut), consumer.suspend_flow.wait()))
        await asyncio.sleep(0)
        consumer.suspend_flow.set()  # a rebalance: the waiting callback is given up
        res = await call
        assert fut.cancelled() and seen[-2:] == ["start", "finally"]  # cancelled in its wait
        assert res.results == [True]  # suspend_flow.wait() won

        # with the flow already suspended it is Faust's wait_first: both run as tasks
        res = await consumer.wait_first(quick(), consumer.suspend_flow.wait())
        assert res.results == ["delivered", True]
        return seen

    assert asyncio.run(scenario()).count("quick") == 2


def test_take_available_batches_what_has_arrived_and_acks_after_the_batch(
        tmp_path: object) -> None:
    """The detect agent's ``take_available(max_)``: waits for one event, takes the others
    already in the channel (at most ``max_``, in order), acks a batch only when the next is
    asked for (never one given up half-way), does not hold a lone event back for more, and
    drops events fetched before a rebalance (an older consumer generation) unprocessed and
    unacked."""
    import asyncio
    from pathlib import Path

    from streams.app import _Stream, create_app
    from streams.topics import Topics
    from tocsin.settings import Settings

    settings = Settings(home=Path(str(tmp_path)), kafka_bootstrap="127.0.0.1:9")
    app = create_app(settings, Topics.for_run(settings, "unit", 1), [])

    async def scenario() -> None:
        app.flow_control.resume()  # as the worker does once its partitions are assigned
        channel = app.channel()
        stream = app.stream(channel)
        assert isinstance(stream, _Stream)
        for i in range(3):
            await channel.send(value=f"v{i}".encode())
        batches = stream.take_available(2).__aiter__()
        first = await asyncio.wait_for(batches.__anext__(), 10)
        assert [e.value for e in first] == [b"v0", b"v1"]
        assert not any(e.message.acked for e in first)  # held by the caller: not acked
        second = await asyncio.wait_for(batches.__anext__(), 10)
        assert [e.value for e in second] == [b"v2"]
        assert all(e.message.acked for e in first) and not second[0].message.acked

        pending = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0.01)
        assert not pending.done()  # nothing has arrived: it waits
        await channel.send(value=b"lone")
        for _ in range(20):  # a few rounds of the loop, no time: a timer would still run
            if pending.done():
                break
            await asyncio.sleep(0)
        assert pending.done(), "a lone event was held back for more"
        lone = pending.result()
        assert [e.value for e in lone] == [b"lone"]
        assert second[0].message.acked

        await channel.send(value=b"stale")
        app.consumer_generation_id += 1  # a rebalance after it was fetched
        await channel.send(value=b"fresh")
        fresh = await asyncio.wait_for(batches.__anext__(), 10)
        assert [e.value for e in fresh] == [b"fresh"]
        await batches.aclose()
        # given up half-way (the agent cancelled while on it): not acked, so not committed,
        # fetched again after a restart
        assert not fresh[0].message.acked

    asyncio.run(scenario())


@pytest.mark.parametrize("loglevel", ["warn", "info"])
def test_worker_keeps_the_root_logger_at_the_level_asked_for(tmp_path: object,
                                                             loglevel: str) -> None:
    """Faust's worker, at WARN, hangs a spinner handler on the root logger and sets it to
    DEBUG for good, so every library ``log.debug`` builds a record; the app's worker class
    leaves the root at the level asked for, and debug calls stop at the level check."""
    import io
    import logging
    from pathlib import Path

    from streams.app import create_app
    from streams.topics import Topics
    from tocsin.settings import Settings

    settings = Settings(home=Path(str(tmp_path)), kafka_bootstrap="127.0.0.1:9")
    app = create_app(settings, Topics.for_run(settings, "unit", 1), [])
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        worker = app.conf.Worker(app, loglevel=loglevel, stdout=io.StringIO(),
                                 stderr=io.StringIO())
        worker._setup_logging()
        assert root.level == logging.getLevelName(loglevel.upper().replace("WARN", "WARNING"))
        assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
        assert worker.spinner is None
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_taken_says_which_partitions_went_through_another_worker_meanwhile() -> None:
    from types import SimpleNamespace

    from streams.takeover import Taken

    def events(*offsets: tuple[int, int]) -> list[SimpleNamespace]:
        return [SimpleNamespace(message=SimpleNamespace(topic="obs", partition=p, offset=o))
                for p, o in offsets]

    taken = Taken()
    # a topic's first records: nothing came before them
    assert taken.behind(events((0, 0), (0, 1), (1, 0))) == {}
    # the records that follow, in one batch or in several
    assert taken.behind(events((0, 2), (1, 1), (1, 2))) == {}
    assert taken.behind(events((1, 3))) == {}
    # partition 1 went to another worker and came back at 9: 4..8 were processed there;
    # partition 2 was never here, and its first record is not the topic's first
    assert taken.behind(events((0, 3), (1, 9), (1, 10), (2, 40))) == {("obs", 1): 9,
                                                                    ("obs", 2): 40}
    # after that, both go on from where the batch left them
    assert taken.behind(events((1, 11), (2, 41))) == {}
    # records again that the state has already taken in (redelivered): not behind
    assert taken.behind(events((0, 2), (0, 3), (0, 4))) == {}


class _FakeConsumer:
    """What read_back asks of an AIOKafkaConsumer, over records held in memory: record
    ``o`` is stamped ``1000 * o`` ms, its key is ``b"even"`` or ``b"odd"``."""

    def __init__(self, records: dict[tuple[str, int], list[int]]) -> None:
        from aiokafka import TopicPartition

        self.records = {TopicPartition(*k): v for k, v in records.items()}
        self.pos: dict[Any, int] = {}
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    def assign(self, tps: list[Any]) -> None:
        self.pos = {tp: 0 for tp in tps}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: 0 for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.pos[tp] = offset

    def pause(self, tp: Any) -> None:
        pass

    async def offsets_for_times(self, stamps: dict[Any, int]) -> dict[Any, Any]:
        from types import SimpleNamespace

        out = {}
        for tp, ms in stamps.items():
            later = [o for o in self.records[tp] if 1000 * o >= ms]
            out[tp] = SimpleNamespace(offset=later[0], timestamp=1000 * later[0]) if later \
                else None
        return out

    async def getmany(self, *tps: Any, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        from types import SimpleNamespace

        out = {}
        for tp in tps:
            offs = [o for o in self.records[tp] if o >= self.pos[tp]][:max_records]
            if offs:
                out[tp] = [SimpleNamespace(offset=o, value=b"x", timestamp=1000 * o,
                                           key=b"odd" if o % 2 else b"even") for o in offs]
                self.pos[tp] = offs[-1] + 1
        return out

    async def position(self, tp: Any) -> int:
        return self.pos[tp]


def test_read_back_reads_before_the_offsets_and_stops_its_consumer_however_the_loop_ends(
) -> None:
    """A rebuild that raised half-way left read_back's consumer running (an async generator
    left early is not closed): its worker then hung on SIGTERM. The agents iterate it in
    contextlib.aclosing."""
    import contextlib

    from streams.takeover import read_back

    def fake() -> _FakeConsumer:
        return _FakeConsumer({("t", 0): list(range(250)), ("t", 1): list(range(5))})

    async def read_all(c: _FakeConsumer) -> list[tuple[int, int]]:
        got = []
        async with contextlib.aclosing(read_back("", {("t", 0): 230, ("t", 1): 3},
                                                 consumer=c)) as batches:
            async for records in batches:
                assert c.running
                got.append((records[0].offset, records[-1].offset))
        return got

    c = fake()
    assert asyncio.run(read_all(c)) == [(0, 99), (0, 2), (100, 199), (200, 229)]
    assert not c.running

    async def crash(c: _FakeConsumer) -> None:
        async with contextlib.aclosing(read_back("", {("t", 0): 230}, consumer=c)) as batches:
            async for _ in batches:
                raise RuntimeError("a rebuild's body failed")

    c = fake()
    with pytest.raises(RuntimeError, match="body failed"):
        asyncio.run(crash(c))
    assert not c.running


def test_read_back_starts_at_a_time_and_leaves_out_a_key_s_older_records() -> None:
    """A detect rebuild reads what its detectors need (the longest horizon: from a time,
    by Kafka's offsets for times), not all the topic holds; a station needing less is
    left out before its later start, without being decoded."""
    import contextlib

    from streams.takeover import read_back

    async def read(**kw: Any) -> list[tuple[int, bytes]]:
        c = _FakeConsumer({("t", 0): list(range(250)), ("t", 1): list(range(5))})
        got = []
        async with contextlib.aclosing(read_back("", {("t", 0): 230, ("t", 1): 5},
                                                 consumer=c, **kw)) as batches:
            async for records in batches:
                got.extend((r.offset, r.key) for r in records)
        return got

    got = asyncio.run(read(since_ms=150_500, key_since_ms={b"odd": 200_000}))
    assert [o for o, _ in got] == [*range(152, 200, 2), *range(200, 230)]  # t[1]: none
    assert asyncio.run(read(since_ms=10**9)) == []  # nothing stamped so late
    assert len(asyncio.run(read())) == 235  # from the earliest


def test_a_detect_rebuild_reads_each_station_s_horizon_before_the_takeover() -> None:
    """Where a detect rebuild reads from. It took the newest record of the whole batch as
    "now" (in a backlog, hours after the takeover: the stations got less than their
    horizon) and every kind's longest horizon even with a registry of barometers only
    (32 days fetched where 9.75 h do); a record without a timestamp crashed it."""
    from types import SimpleNamespace

    from detectors.base import StationInfo
    from detectors.pipeline import DetectorBank
    from streams.app import REBUILD_MARGIN_S, _stamp_ms, detect_horizons, rebuild_window

    def ev(p: int, o: int, ts: float | None) -> Any:
        return SimpleNamespace(message=SimpleNamespace(topic="obs", partition=p, offset=o,
                                                       timestamp=ts))

    events = [ev(0, 40, 1000.0), ev(1, 7, 900.0), ev(0, 41, 9000.0), ev(1, 8, 12000.0)]
    assert _stamp_ms(events, {("obs", 0): 40, ("obs", 1): 7}) == 900_000.0
    assert _stamp_ms(events, {("obs", 0): 41}) == 9_000_000.0
    assert _stamp_ms([ev(0, 40, None)], {("obs", 0): 40}) is None

    bank = DetectorBank()
    baro = StationInfo("B1", "barometer", 0.0, 0.0)
    tide = StationInfo("T1", "tide_gauge", 0.0, 0.0)
    per_key, longest = detect_horizons(bank, [baro])
    assert per_key == {b"B1": 9.75 * 3600e3} and longest == 9.75 * 3600e3
    assert detect_horizons(bank, [baro, tide])[1] == 32 * 86400e3
    assert detect_horizons(bank, [])[1] == 32 * 86400e3  # no registry: any kind
    now = 1.7e12
    since, keys = rebuild_window(*detect_horizons(bank, [baro, tide]), now)
    margin = 1000 * REBUILD_MARGIN_S
    assert since == now - margin - 32 * 86400e3
    assert keys == {b"B1": now - margin - 9.75 * 3600e3, b"T1": since}
    assert rebuild_window(per_key, longest, None) == (None, {})
    assert rebuild_window(per_key, longest, -1.0) == (None, {})
    assert rebuild_window({b"X": float("inf")}, float("inf"), now) == (None, {})
    assert rebuild_window(per_key, longest, 1000.0)[0] == 0  # not before the epoch


def test_a_broker_that_refuses_the_retention_change_is_logged_not_fatal(
        caplog: pytest.LogCaptureFixture) -> None:
    """Without the right to alter a topic (ACLs, a managed cluster) the refusal stopped
    every command that creates topics; they now run with what the topic keeps."""
    from types import SimpleNamespace

    from streams.topics import _ensure_retention

    sent: list[Any] = []

    class Admin:
        async def describe_configs(self, resources: list[Any]) -> list[Any]:
            entries = [("retention.ms", str(7 * 86400_000), False, 1),
                       ("max.message.bytes", "2000000", False, 1),
                       ("segment.bytes", "1073741824", False, 5)]  # the broker's, not sent
            return [SimpleNamespace(API_VERSION=2, resources=[(0, None, 2, "t", entries)])]

        async def alter_configs(self, resources: list[Any]) -> list[Any]:
            sent.extend(resources)
            return [SimpleNamespace(resources=[(29, "not authorized", 2, "t")])]

    with caplog.at_level("WARNING", logger="tocsin.streams"):
        asyncio.run(_ensure_retention(Admin(), "t", 35 * 86400_000))  # type: ignore[arg-type]
    (res,) = sent
    assert res.configs == {"retention.ms": str(35 * 86400_000), "max.message.bytes": "2000000"}
    assert "refused the change" in caplog.text and "TopicAuthorizationFailed" in caplog.text


T0 = 1.7e9  # the fake packets' first second


def _barometer_packet(sid: str, start: float) -> bytes:
    """Ten minutes of a flat barometer at 1 Hz, encoded."""
    import numpy as np

    from streams.schemas import ObservationPacket, encode

    return encode(ObservationPacket(sid, "barometer", "P", start, 1.0, np.full(600, 1e5), "Pa"))


def _detect_stage(tmp_path: object, monkeypatch: pytest.MonkeyPatch, run: str,
                  read_back: Any) -> tuple[Any, Any, Any, Any]:
    """An app on two registered barometers, B1 and B2, whose takeovers read back through
    ``read_back``: (app, its topics, its detector bank, its detect agent)."""
    from pathlib import Path

    import streams.app as app_module
    from detectors.base import StationInfo
    from streams.topics import Topics
    from tocsin.settings import Settings

    settings = Settings(home=Path(str(tmp_path)), kafka_bootstrap="127.0.0.1:9")
    topics = Topics.for_run(settings, run, 2)
    reg = [StationInfo("B1", "barometer", 10, 20, 0, "Pa"),
           StationInfo("B2", "barometer", 11, 21, 0, "Pa")]
    monkeypatch.setattr(app_module, "read_back", read_back)
    app = app_module.create_app(settings, topics, reg)
    return app, topics, app.tocsin["bank"], app.tocsin["agents"][0]  # type: ignore[attr-defined]


def test_a_takeover_forgets_the_stations_it_had_from_the_partition(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detect agent driven with fake events and a fake read back (found by review):
    a station rebuilt in one takeover of a partition that then fell silent kept its old
    pipeline through the next takeover of that partition, which read nothing of it
    back (it is older than its horizon): it must start afresh, as a new worker's would."""
    from types import SimpleNamespace

    def event(offset: int, sid: str, i: int) -> Any:
        return SimpleNamespace(value=_barometer_packet(sid, T0 + 600 * i), key=sid.encode(),
                               message=SimpleNamespace(topic=topics.observations, partition=0,
                                                       offset=offset, timestamp=T0 + 600 * i))

    def record(sid: str, i: int) -> Any:
        return SimpleNamespace(value=_barometer_packet(sid, T0 + 600 * i), key=sid.encode(),
                               offset=i, topic=topics.observations, partition=0,
                               timestamp=int(1000 * (T0 + 600 * i)))

    async def read_back(*_: Any, **__: Any) -> Any:
        for records in script.pop(0):
            yield records

    app, topics, bank, detect = _detect_stage(tmp_path, monkeypatch, "placed", read_back)
    # what each read back yields: the first, B1's ten records; the second, nothing
    script = [[[record("B1", i) for i in range(10)]], [[]]]
    seen: list[list[str]] = []

    class Stream:
        async def take_available(self, n: int) -> Any:
            for batch in ([event(10, "B2", 10)], [event(500, "B2", 400)]):
                yield batch
                seen.append(sorted(bank.pipelines))

    asyncio.run(detect.fun(Stream()))
    assert not script  # both takeovers rebuilt
    assert seen == [["B1", "B2"], ["B2"]], seen


def test_a_worker_lets_go_of_the_stations_of_partitions_it_no_longer_holds(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detect agent driven with fake events and Faust's assignment signal: a worker
    kept the pipelines of every station it had ever had, through any number of
    rebalances. A partition that goes elsewhere takes its stations' pipelines with it; one
    the rebalance leaves here keeps them; one that comes back is rebuilt."""
    from types import SimpleNamespace

    from faust.types import TP

    where = {"B1": 0, "B2": 1}

    def event(offset: int, sid: str) -> Any:
        return SimpleNamespace(
            value=_barometer_packet(sid, T0 + 600 * offset), key=sid.encode(),
            message=SimpleNamespace(topic=topics.observations, partition=where[sid],
                                    offset=offset, timestamp=T0 + 600 * offset))

    rebuilt: list[dict[tuple[str, int], int]] = []

    async def read_back(_bootstrap: str, upto: Any, **__: Any) -> Any:
        rebuilt.append(dict(upto))
        yield []

    app, topics, bank, detect = _detect_stage(tmp_path, monkeypatch, "letgo", read_back)
    seen: list[list[str]] = []

    class Stream:
        async def take_available(self, n: int) -> Any:
            # each batch, then the assignment of the rebalance after it
            steps = [([event(0, "B1"), event(0, "B2")], (1,)),  # B1's partition goes
                     ([event(1, "B2")], (0, 1)),  # B1's comes back, B2's stays here
                     ([event(1, "B1"), event(2, "B2")], None)]
            for batch, then in steps:
                yield batch
                seen.append(sorted(bank.pipelines))
                if then is not None:
                    await app.on_partitions_assigned.send(
                        {TP(topics.observations, p) for p in then} | {TP(topics.detections, 0)})

    asyncio.run(detect.fun(Stream()))
    assert seen == [["B1", "B2"], ["B2"], ["B1", "B2"]], seen
    # B1's partition came back, even with no record taken elsewhere: rebuilt; B2's not
    assert rebuilt == [{(topics.observations, 0): 1}], rebuilt


def test_read_back_says_so_when_it_gets_no_record(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A read back whose broker went away waited without a word (the stage holds its
    input all that time). It now says where it stands every STALL_S, and reads on."""
    import contextlib

    import streams.takeover as takeover

    c = _FakeConsumer({("t", 0): list(range(10))})
    real = c.getmany
    calls = {"n": 0}

    async def flaky(*tps: Any, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        calls["n"] += 1
        if calls["n"] <= 3:  # the broker away for three polls
            await asyncio.sleep(0.02)
            return {}
        return await real(*tps, timeout_ms=timeout_ms, max_records=max_records)

    c.getmany = flaky  # type: ignore[method-assign]
    monkeypatch.setattr(takeover, "STALL_S", 0.03)

    async def read() -> int:
        n = 0
        async with contextlib.aclosing(takeover.read_back("", {("t", 0): 10},
                                                          consumer=c)) as batches:
            async for records in batches:
                n += len(records)
        return n

    with caplog.at_level("WARNING", logger="tocsin.streams"):
        assert asyncio.run(read()) == 10
    (msg,) = [r.getMessage() for r in caplog.records if "no record" in r.getMessage()]
    assert "t[0] at 0 of 10" in msg, msg


def test_watermark_gate_holds_a_resent_detection_once_and_releases_in_order() -> None:
    """A detect worker that crashed before its commit sends its detections again: the gate
    (whose heap compared the Detection objects of two equal entries, a TypeError that
    crashed the associate agent and every rebuild after it) holds each key once, and
    releases in (declared, key) order once every partition's mark has passed."""
    from detectors.base import Detection
    from streams.app import WatermarkGate
    from streams.topics import control

    def det(station: str, onset: float, declared: float) -> Detection:
        return Detection(station, "barometer", "lamb_pulse", "1", onset, onset + 60.0, 1.5,
                         "hPa", declared)

    a, b, c = det("A", 100.0, 700.0), det("B", 90.0, 700.0), det("C", 50.0, 650.0)
    gate = WatermarkGate()
    for d in (a, b, a, c, det("A", 100.0, 700.0)):
        gate.add(d)
    assert len(gate.buffer) == 3 and len(gate.held) == 3

    def mark(p: int, t: float) -> list[str]:
        ctl = orjson.loads(control("watermark", time=t, partition=p, partitions=2))
        return [d.key for d in gate.control(ctl)]

    assert mark(0, 800.0) == []  # partition 1 has not passed them
    assert mark(1, 660.0) == [c.key]
    assert mark(1, 700.0) == [a.key, b.key]  # same declared: by key
    assert gate.buffer == [] and gate.held == {}
    gate.add(a)  # after its release it is held again: the associator drops what it has seen
    assert mark(1, 900.0) == [a.key]


def test_a_transaction_the_database_refuses_is_not_tried_again() -> None:
    """A constraint or a value the database cannot take is the outputs' fault, not the
    moment's: StoreRefused names what and why, at once; a lost connection is waited out."""
    from sqlalchemy.exc import IntegrityError, InterfaceError

    from streams.app import StoreRefused, until_stored

    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: x.key"))

    with pytest.raises(StoreRefused, match=r"2 detections not stored: the database refused "
                       r"them: IntegrityError: .*UNIQUE constraint failed: x\.key"):
        asyncio.run(until_stored(refused, "2 detections", first_wait=0.01))
    assert len(calls) == 1

    def reconnects() -> str:
        calls.append(2)
        if calls.count(2) < 2:
            raise InterfaceError("SELECT", {}, Exception("connection already closed"))
        return "stored"

    assert asyncio.run(until_stored(reconnects, "x", first_wait=0.01)) == "stored"


def test_a_revision_the_store_cannot_bind_is_refused_not_a_crash(tmp_path: Any) -> None:
    """A revision of 2**63 decoded, and saving its alert raised OverflowError in sqlite3 (not
    a SQLAlchemyError): it escaped until_stored and crashed the alert agent, again on the
    same record after each restart. Now the schema stops at the 32-bit column's largest,
    and anything else a save raises is a StoreRefused (dead-lettered, the agent goes on)."""
    from dataclasses import replace

    from responders.stage import AlertStage
    from responders.store import Store
    from streams.app import StoreRefused, until_stored
    from streams.schemas import REVISION_MAX, Forecast, IncidentRevision, SchemaError, decode

    rev = IncidentRevision("eruption-1", "volcanic_eruption", 1, 1.6422e9, "watch", 1.6421e9,
                           -20.5, -175.4, 314.0, ("d",), ("A", "B", "C", "D"),
                           forecasts=(Forecast("nkfa", "tide_gauge", 1.6423e9, 68.0, -21.14,
                                               -175.18),))
    for n in (2**63, REVISION_MAX + 1, 0):
        with pytest.raises(SchemaError, match=f"revision {n} is not a positive integer of "
                           f"at most {REVISION_MAX}"):
            decode(orjson.dumps({**rev.to_dict(), "revision": n}))
    top = decode(orjson.dumps({**rev.to_dict(), "revision": REVISION_MAX}))
    assert isinstance(top, IncidentRevision) and top.revision == REVISION_MAX
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    (msg,) = AlertStage().add(top)
    store.save_all([msg])  # the largest a revision may be is stored
    huge = replace(msg, identifier="tocsin.eruption-1.r9223372036854775808.alert",
                   revision=2**63)  # made in process, past the schema

    def save() -> None:
        store.save_all([huge])

    with pytest.raises(StoreRefused, match="1 alert not stored: OverflowError"):
        asyncio.run(until_stored(save, "1 alert", first_wait=0.01))
    store.close()


def test_a_control_message_is_known_whatever_the_order_of_its_fields() -> None:
    from streams.app import _is_control

    ours = orjson.dumps({"schema": "tocsin.control/1", "type": "end", "partitions": 2})
    other = orjson.dumps({"type": "end", "partitions": 2, "run": "x" * 100,
                          "schema": "tocsin.control/1"})
    assert _is_control(ours) == {"schema": "tocsin.control/1", "type": "end", "partitions": 2}
    assert _is_control(other) is not None and _is_control(other)["type"] == "end"  # type: ignore[index]
    # a long message (an observation packet) is not searched beyond its start
    long = orjson.dumps({"schema": "tocsin.observation/2", "source": "x" * 5000,
                         "note": "tocsin.control/1"})
    assert _is_control(long) is None


def test_a_packet_ending_days_after_the_clock_is_refused_by_name() -> None:
    """A packet stamped in 2199 (a station's timing fault, a producer other than our
    ingest) was taken, and the station's detectors then refused every correct packet
    after it as 'in the gap' it skipped."""
    import numpy as np

    from streams.app import observation
    from streams.schemas import ObservationPacket, SchemaError, encode

    now = 1.642e9
    ok = encode(ObservationPacket("S1", "barometer", "LDI", now + 3600.0, 60.0,
                                  np.full(10, 1010.0), "hPa"))
    assert observation(ok, now=now).station_id == "S1"  # an hour ahead: clocks differ
    bad = encode(ObservationPacket("S1", "barometer", "LDI", 7.2e9, 60.0,
                                   np.full(10, 1010.0), "hPa"))
    with pytest.raises(SchemaError, match=r"observation S1: ends at 2198-.* days after the "
                       r"worker's clock .* a timing fault"):
        observation(bad, now=now)


def test_control_messages_a_stage_cannot_act_on_are_refused_by_name() -> None:
    """Each of these was taken: a mark claiming 100,000 partitions held every detection
    after it for good (no incident, no alert, no dead letter); an unknown type was dropped
    without a word; a nested run id could not be sent on (orjson writes 254 levels), and
    the agent crashed on it."""
    from streams.app import WatermarkGate, check_control
    from streams.schemas import SchemaError

    base = {"schema": "tocsin.control/1", "type": "watermark", "time": 1.642e9}
    check_control(base)
    check_control({**base, "partitions": 4, "partition": 3, "run": "r-1"}, 4)
    nested: object = "r"
    for _ in range(300):
        nested = [nested]
    for change, partitions, needle in [
            ({"type": "flush"}, None, "type 'flush' is not one of ['watermark', 'end']"),
            ({"type": None}, None, "type None"),
            ({"run": nested}, None, "run = [[[[[[["),
            ({"run": "x" * 201}, None, "at most 200 characters"),
            ({"partitions": 2, "partition": 2}, None, "partition 2 of 2 partitions"),
            ({"partitions": 100_000, "partition": 0}, 4,
             "partitions = 100000, but the observations topic has 4"),
            ({"partition": 7}, 4, "partition = 7, but the observations topic has 4")]:
        with pytest.raises(SchemaError, match=re.escape(needle)):
            check_control({**base, **change}, partitions)

    gate = WatermarkGate(2)  # two observation partitions
    with pytest.raises(SchemaError, match="partitions = 100000"):
        gate.control({**base, "partitions": 100_000, "partition": 0})
    assert gate.partitions == 2 and not gate.marks  # the bad mark changed nothing
    gate.control({"schema": "tocsin.control/1", "type": "end", "partition": 0})
    gate.control({"schema": "tocsin.control/1", "type": "end", "partition": 1})
    assert gate.ended  # the two ends end it, as before


def test_a_mark_claiming_more_partitions_is_taken_once_the_broker_has_them(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions added to scale out: the marks then claim more partitions than the
    worker was started with, and the broker, asked afresh, confirms it; a claim the broker
    does not confirm (100,000) is a dead letter, as before."""
    from types import SimpleNamespace

    import faust

    import streams.app as app_module

    app, topics, _, detect = _detect_stage(tmp_path, monkeypatch, "grown", None)
    asked: list[str] = []

    class Producer(app_module._Producer):
        def __init__(self) -> None:  # no broker: only the partition count is asked
            pass

        async def partition_count(self, topic: str) -> int:
            asked.append(topic)
            return 3  # the two the worker was started with, and one added since

    producer = Producer()

    async def started() -> Any:
        return producer

    monkeypatch.setattr(app, "maybe_start_producer", started)
    sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self: Any, *, key: Any = None, value: Any = None, **_: Any) -> None:
        sent.append((self.get_topic_name(), orjson.loads(value)))

    monkeypatch.setattr(faust.topics.Topic, "send", send)

    def mark(offset: int, partition: int, claimed: int) -> Any:
        value = orjson.dumps({"schema": "tocsin.control/1", "type": "watermark",
                              "time": T0, "partitions": claimed})
        return SimpleNamespace(value=value, key=b"control", message=SimpleNamespace(
            topic=topics.observations, partition=partition, offset=offset, timestamp=T0))

    class Stream:
        async def take_available(self, n: int) -> Any:
            yield [mark(0, 2, 3), mark(0, 0, 100_000)]  # (offsets 0: no takeover)

    asyncio.run(detect.fun(Stream()))
    assert asked == [topics.observations] * 2  # each claim beyond what was known
    (forwarded, letter) = sent
    assert forwarded == (topics.detections, {"schema": "tocsin.control/1",
                                             "type": "watermark", "partition": 2,
                                             "partitions": 3, "time": T0, "run": None})
    assert letter[0] == topics.deadletter
    assert "partitions = 100000, but the observations topic has 3" in letter[1]["reason"]
