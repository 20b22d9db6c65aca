"""The streaming pipeline on the real broker: replay == detect, dead letters, scale-out."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from detectors.base import Detection
from replay.package import ReplayPackage, load_package
from replay.registry import write_registry
from replay.run import detect_package
from replay.scenario import build_tonga2022
from replay.streaming import (
    Collected,
    collect,
    read_dead_letters,
    replay_package,
    start_workers,
    stop_workers,
)
from streams.app import control
from streams.schemas import ObservationPacket, encode
from streams.topics import Topics, create_topics, delete_topics
from tests.conftest import same_reports
from tocsin.settings import Settings

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def tonga(tmp_path_factory: pytest.TempPathFactory) -> ReplayPackage:
    return load_package(build_tonga2022(tmp_path_factory.mktemp("pkg") / "tonga2022"))


@pytest.fixture(scope="module")
def detect_report(tonga: ReplayPackage) -> dict:  # type: ignore[type-arg]
    return detect_package(tonga, packet_seconds=600.0)


def _run_topics(settings: Settings, run_id: str) -> list[str]:
    """The broker's topics of the run ``run_id``."""
    return sorted(t for t in asyncio.run(_names(settings)) if f".{run_id}." in t)


def test_detect_report_is_not_empty(detect_report: dict) -> None:  # type: ignore[type-arg]
    # the equality tests below mean nothing if both sides are empty
    assert detect_report["schema"] == "tocsin.report/1"
    assert len(detect_report["detections"]) >= 10
    assert detect_report["incidents"], "the Tonga scenario must give an incident"
    assert detect_report["alerts"], "and alerts"


@pytest.mark.parametrize(("speed", "partitions"), [(None, 4), (3000.0, 2)])
def test_replay_equals_detect(kafka_settings: Settings, tonga: ReplayPackage,
                              detect_report: dict, speed: float | None,  # type: ignore[type-arg]
                              partitions: int, tmp_path: Path) -> None:
    report = asyncio.run(replay_package(tonga, kafka_settings, speed=speed,
                                        partitions=partitions, progress_stream=None,
                                        run_dir=tmp_path, timeout=600))
    assert report["mode"] == "replay" and report["run"]["partitions"] == partitions
    same_reports(report, detect_report)
    # a clean package dead-letters nothing, and the finished run's topics are gone
    assert report["run"]["dead_letters"] == []
    assert report["run"]["topics"] == "deleted"
    assert _run_topics(kafka_settings, report["run"]["run_id"]) == []


def test_two_workers_one_group_equal_one_worker(kafka_settings: Settings,
                                                tonga: ReplayPackage, detect_report: dict,  # type: ignore[type-arg]
                                                tmp_path: Path) -> None:
    report = asyncio.run(replay_package(tonga, kafka_settings, speed=None, partitions=6,
                                        workers=2, progress_stream=None, run_dir=tmp_path,
                                        timeout=600))
    assert report["run"]["workers"] == 2
    logs = sorted(tmp_path.glob("worker-*.log"))
    assert len(logs) == 2
    same_reports(report, detect_report)


async def _stop(out: Collected, collector: asyncio.Task[Any], procs: list[Any],
                timeout: float) -> None:
    """End a test's collector and stop its workers, even when the collector fails (a failed
    test must not leave its workers running)."""
    out.done.set()
    try:
        await asyncio.wait_for(collector, timeout)
    finally:
        stop_workers(procs)


def test_bad_messages_go_to_dead_letter_and_worker_keeps_running(
        kafka_settings: Settings, tmp_path: Path) -> None:
    topics = Topics.for_run(kafka_settings, "dlq-test", 1)
    registry = tmp_path / "registry.csv"
    write_registry([], registry)

    good = ObservationPacket("S1", "barometer", "LDI", 1642204800.0, 60.0,
                             np.full(30, 1010.0), "hPa", lat=-21.1, lon=-175.2)
    # S1 again, later, but as a tide gauge: it decodes, and its pipeline rejects it
    wrong_kind = ObservationPacket("S1", "tide_gauge", "LDI", 1642210000.0, 60.0,
                                   np.full(30, 1.0), "m", lat=-21.1, lon=-175.2)
    # (key, value), in the order they are sent (one partition)
    sent = [(b"S2", b"not json at all"),
            (b"S2", b'{"schema": "tocsin.observation/1", "station_id": "S2"}'),
            (b"S2", orjson.dumps({**orjson.loads(encode(good)), "sample_interval_s": -5})),
            (b"S1", encode(good)),
            (b"S1", encode(wrong_kind)),
            (b"S2", b"[1, 2]"),
            # a watermark whose time is not a number (it would have crashed the associator)
            (b"control", orjson.dumps({"schema": "tocsin.control/1", "type": "watermark",
                                       "time": "soon", "partitions": 1})),
            # each of these crashed the detect agent or stalled the association for good:
            # a packet ending past year 9999, a schema that is not a string, a run id
            # nested deeper than orjson writes, an unknown control type (dropped without a
            # word), a mark claiming 100,000 partitions (every detection held after it)
            (b"S2", orjson.dumps({**orjson.loads(encode(good)), "sample_interval_s": 1e12})),
            (b"S2", b'{"schema": []}'),
            (b"control", b'{"schema": "tocsin.control/1", "type": "end", "run": '
             + b"[" * 300 + b"]" * 300 + b"}"),
            (b"control", orjson.dumps({"schema": "tocsin.control/1", "type": "flush"})),
            (b"control", orjson.dumps({"schema": "tocsin.control/1", "type": "watermark",
                                       "time": 1.7e9, "partitions": 100_000}))]
    bad = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # the offsets that come back as dead letters
    # on the incidents topic: revisions that decoded but then crashed the alert agent (its
    # supervisor restarted it past them: lost), and kept the stage failing on every later one
    revision = {"schema": "tocsin.incident/1", "incident_id": "bad-1",
                "type": "volcanic_eruption", "revision": 1, "issued_s": 1.642e9,
                "status": "watch"}
    bad_revisions = [orjson.dumps({**revision, "forecasts": ["bad"]}),
                     orjson.dumps({**revision, "issued_s": 1e20})]
    # on the detections topic: a detection declared 10 h behind two others that a
    # watermark has already released, with one hour of lateness allowed (the checkpoint
    # took the first); the next watermark releases it
    def pick(declared: float) -> Detection:
        return Detection("X1", "seismic", "sta_lta", "1", declared - 50, declared - 45, 1e4,
                         "counts", declared, lat=-17.7, lon=178.1)

    t = 1642204800.0
    late_dets = [encode(pick(t + 10 * 3600)), encode(pick(t + 12 * 3600)),
                 control("watermark", time=t + 13 * 3600, partition=0, partitions=1),
                 encode(pick(t)),
                 control("watermark", time=t + 14 * 3600, partition=0, partitions=1),
                 # params nested deeper than its dead letter could be written (a crash)
                 encode(pick(t + 15 * 3600))[:-1] + b',"params":' + b'{"a":' * 300 + b"1"
                 + b"}" * 300 + b"}"]
    settings = kafka_settings.model_copy(update={"association_lateness_s": 3600.0})

    async def go() -> tuple[list[dict], Collected]:  # type: ignore[type-arg]
        await create_topics(kafka_settings.bootstrap, topics)
        procs = start_workers(settings, topics, registry, 1, tmp_path)
        out = Collected()
        task = asyncio.create_task(collect(kafka_settings, topics, out, []))
        try:
            producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
            await producer.start()
            try:
                for key, raw in sent:  # sent together: the worker takes them as one batch
                    await producer.send(topics.observations, raw, key=key)
                for raw in bad_revisions:
                    await producer.send(topics.incidents, raw, key=b"bad-1")
                for raw in late_dets:
                    await producer.send(topics.detections, raw, key=b"X1")
                await producer.flush()
                await producer.send_and_wait(topics.observations,
                                             control("end", partitions=1, run="dlq"),
                                             key=b"control", partition=0)
            finally:
                await producer.stop()
            # the end marker passes every stage only if the worker survived the bad input
            await asyncio.wait_for(out.done.wait(), 120)
            assert all(p.poll() is None for p in procs), "the worker died"
            consumer = AIOKafkaConsumer(topics.deadletter, group_id=None,
                                        bootstrap_servers=kafka_settings.bootstrap,
                                        auto_offset_reset="earliest")
            await consumer.start()
            letters: list[dict] = []  # type: ignore[type-arg]
            try:
                while len(letters) < len(bad) + len(bad_revisions) + 2:
                    batch = await consumer.getmany(timeout_ms=10000)
                    assert batch, f"only {len(letters)} dead letters"
                    for recs in batch.values():
                        letters.extend(orjson.loads(r.value) for r in recs)
            finally:
                await consumer.stop()
            return letters, out
        finally:
            await _stop(out, task, procs, 10)

    letters, _ = asyncio.run(go())
    assert [d["schema"] for d in letters] == ["tocsin.deadletter/1"] * (len(bad) + 4)
    # what a replay's report keeps of them (its topics are deleted)
    kept = asyncio.run(read_dead_letters(kafka_settings.bootstrap, topics))
    assert kept == [{"source": d["source"], "reason": d["reason"], "key": d["key"]}
                    for d in letters]
    of_revisions = [d for d in letters if d["source"].startswith(topics.incidents)]
    of_late, of_deep = [d for d in letters if d["source"].startswith(topics.detections)]
    assert of_late["source"] == f"{topics.detections}[0]@4"  # the watermark released it
    assert of_deep["source"] == f"{topics.detections}[0]@5"
    assert "field 'params' nests deeper than 32 levels" in of_deep["reason"]
    assert of_late["reason"].startswith("LateDetection: detection sta_lta:X1:1642204750.000")
    assert "checkpoint" in of_late["reason"] and "3600 s" in of_late["reason"]
    assert orjson.loads(of_late["value"])["onset"] == "2022-01-14T23:59:10.000Z"
    letters = [d for d in letters if d not in of_revisions and d is not of_late
               and d is not of_deep]
    assert [d["source"] for d in of_revisions] == [f"{topics.incidents}[0]@{i}" for i in (0, 1)]
    assert "is not an object" in of_revisions[0]["reason"]
    assert "issued_s = 1e+20" in of_revisions[1]["reason"]
    assert "time = 'soon'" in letters[5]["reason"]
    # in the input's order, the detector's rejection (4) before the decode failure after it
    assert [d["source"] for d in letters] == [f"{topics.observations}[0]@{i}" for i in bad]
    assert "not JSON" in letters[0]["reason"]
    assert "values" in letters[1]["reason"]
    assert "-5" in letters[2]["reason"] and "sample_interval" in letters[2]["reason"]
    assert letters[2]["value"].startswith("{")
    assert "PacketError" in letters[3]["reason"] and "tide_gauge" in letters[3]["reason"]
    assert "expected a JSON object" in letters[4]["reason"]
    assert "do not end within 1900-2200 (sample_interval_s" in letters[6]["reason"]
    assert "schema [] is not a string" in letters[7]["reason"]
    assert "run = [[[[" in letters[8]["reason"]
    assert "type 'flush' is not one of" in letters[9]["reason"]
    assert "partitions = 100000, but the observations topic has 1" in letters[10]["reason"]


def test_replaying_twice_stores_each_output_once(kafka_settings: Settings, tonga: ReplayPackage,
                                                tmp_path: Path) -> None:
    from sqlalchemy import func, select

    from responders.store import RevisionRow, Store

    settings = kafka_settings.model_copy(update={"home": tmp_path / "home"})
    reports = [asyncio.run(replay_package(tonga, settings, speed=None, progress_stream=None,
                                          run_dir=tmp_path / f"run{i}", timeout=600,
                                          keep_topics=i == 0))
               for i in range(2)]
    same_reports(reports[0], reports[1])
    kept = Topics.for_run(settings, reports[0]["run"]["run_id"])
    assert reports[0]["run"]["topics"] == "kept"
    assert _run_topics(settings, reports[0]["run"]["run_id"]) == sorted(kept.layout())
    asyncio.run(delete_topics(settings.bootstrap, kept))
    assert _run_topics(settings, reports[1]["run"]["run_id"]) == []
    store = Store(settings.db_url)
    counts = store.counts()
    with store.engine.connect() as c:
        live_revisions = c.execute(select(func.count()).select_from(RevisionRow).where(
            RevisionRow.status != "retracted")).scalar_one()
    report = reports[1]
    assert counts.detections == len(report["detections"]) > 0
    assert counts.incidents == len(report["incidents"]) > 0
    assert live_revisions == sum(len(i["revisions"]) for i in report["incidents"])
    assert counts.alerts == len(report["alerts"]) > 0
    store.close()


def test_worker_producer_has_its_output_topics_metadata_before_the_first_send(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """aiokafka's producer fetches a topic's metadata on its first message to it, and
    sleeps 100 ms when that request races another: the worker's producer fetches its
    output topics' metadata when it starts."""
    from streams.app import _Producer, create_app

    settings = kafka_settings.model_copy(update={"home": tmp_path})
    topics = Topics.for_run(settings, "warm-producer", 1)
    outputs = [topics.detections, topics.incidents, topics.alerts, topics.seismic,
               topics.deadletter]

    async def go() -> tuple[list[object], list[object]]:
        await create_topics(settings.bootstrap, topics)
        app = create_app(settings, topics, [])
        producer = await app.maybe_start_producer()
        assert isinstance(producer, _Producer)
        try:
            cluster = producer._ensure_producer().client.cluster
            before = [cluster.partitions_for_topic(t) for t in outputs]
            await producer.wait_for_topics(outputs)
            return before, [cluster.partitions_for_topic(t) for t in outputs]
        finally:
            await producer.stop()

    before, after = asyncio.run(go())
    assert before == [None] * len(outputs)
    assert after == [{0}] * len(outputs)


async def _taken_in(settings: Settings, topics: Topics, timeout: float = 120.0) -> None:
    """Until the group has processed and committed everything on its three input topics
    (the same end offsets twice in a row, 0.5 s apart: detections made meanwhile count)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    inputs = [topics.observations, topics.detections, topics.incidents]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap)
    await admin.start()
    await reader.start()
    try:
        layout = topics.layout()
        tps = [TopicPartition(t, p) for t in inputs for p in range(layout[t])]
        deadline = asyncio.get_running_loop().time() + timeout
        last: dict[TopicPartition, int] | None = None
        while True:
            ends = await reader.end_offsets(tps)
            done = await admin.list_consumer_group_offsets(topics.app_id)
            committed = {tp: done[tp].offset if tp in done else 0 for tp in tps}
            if committed == ends and ends == last:
                return
            last = ends if committed == ends else None
            assert asyncio.get_running_loop().time() < deadline, (
                f"not taken in after {timeout} s: committed {committed}, ends {ends}")
            await asyncio.sleep(0.5)
    finally:
        await reader.stop()
        await admin.close()


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_stations_moved_to_another_worker_keep_their_history(
        kafka_settings: Settings, tonga: ReplayPackage, detect_report: dict,  # type: ignore[type-arg]
        tmp_path: Path, how: str) -> None:
    """A worker stops (or is killed: its last offsets are not committed, the next owner
    processes those records again) during the event and the other takes its partitions
    over (a rebalance); later that one stops too and a new worker takes everything (a
    restart).
    Each stage rebuilds the state of what it takes over from the partitions' earlier
    records, so the moved stations' detectors are not cold, the associator still has the
    incident and the alert stage knows what it has sent: the report is ``tocsin detect``'s.
    """
    from replay.registry import build_registry
    from replay.report import build_report
    from replay.run import package_packets
    from replay.streaming import Progress, encode_packets, publish, wait_for_group
    from responders.store import migrate

    settings = kafka_settings.model_copy(update={"home": tmp_path / "home"})
    topics = Topics.for_run(settings, f"moved-{how}", 4)  # topics of its own
    registry_file = tmp_path / "registry.csv"
    write_registry(build_registry(tonga, settings.station_registry), registry_file,
                   tonga.seismic_gains)
    packets = encode_packets(package_packets(tonga, settings.packet_seconds))
    cuts = [tonga.start + 4.83 * 3600, tonga.start + 7.0 * 3600]  # 04:50 and 07:00 UTC
    parts = [[p for p in packets if p.end < cuts[0]],
             [p for p in packets if cuts[0] <= p.end < cuts[1]],
             [p for p in packets if p.end >= cuts[1]]]
    assert all(parts) and sum(map(len, parts)) == len(packets)
    collected = Collected()
    procs = []

    async def go() -> None:
        await create_topics(settings.bootstrap, topics)
        migrate(settings.db_url)
        collector = asyncio.create_task(collect(settings, topics, collected, []))
        progress = Progress(tonga, None)
        try:
            first = start_workers(settings, topics, registry_file, 2, tmp_path / "ab")
            procs.extend(first)
            await wait_for_group(settings, topics.app_id, 2, first)
            await publish(settings, topics, parts[0], tonga, None, progress, end=False)
            await _taken_in(settings, topics)
            if how == "killed":
                # in the middle of its work: what it did since its last commit (Faust
                # commits every 2.8 s) is done again by the next owner
                await publish(settings, topics, parts[1], tonga, None, progress, end=False)
                os.killpg(first[1].pid, signal.SIGKILL)
                first[1].wait()
            else:
                stop_workers(first[1:])
                await publish(settings, topics, parts[1], tonga, None, progress, end=False)
            await _taken_in(settings, topics)  # by the first worker, which took over
            stop_workers(first[:1])  # a new worker takes over every partition
            (tmp_path / "c").mkdir()
            new = start_workers(settings, topics, registry_file, 1, tmp_path / "c")
            procs.extend(new)
            await wait_for_group(settings, topics.app_id, 1, new)
            await publish(settings, topics, parts[2], tonga, None, progress)
            await asyncio.wait_for(collected.done.wait(), 300)
        finally:
            await _stop(collected, collector, procs, 30)

    (tmp_path / "ab").mkdir()
    asyncio.run(go())
    logs = (tmp_path / "ab" / "worker-0.log").read_text()
    assert "rebuilt" in logs, logs[-3000:]  # the takeover did go through the rebuild
    report = build_report(detect_report["event"], collected.detections, collected.revisions,
                          collected.alerts, mode="replay", seismic_gains=tonga.seismic_gains)
    same_reports(report, detect_report)


def test_a_replay_whose_workers_all_die_stops_while_still_publishing(
        kafka_settings: Settings, tonga: ReplayPackage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replayer noticed dead workers only once it had published everything: at a
    real-time speed, minutes later."""
    import replay.streaming as streaming

    formed = streaming.wait_for_group

    async def then_kill(settings: Settings, group: str, members: int, procs: list[Any],
                        *args: Any, **kwargs: Any) -> None:
        await formed(settings, group, members, procs, *args, **kwargs)
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)

    reached: list[float] = []

    class Progress(streaming.Progress):
        def update(self, event_time: float, samples: int, final: bool = False) -> None:
            reached.append(event_time)
            super().update(event_time, samples, final)

    monkeypatch.setattr(streaming, "wait_for_group", then_kill)
    monkeypatch.setattr(streaming, "Progress", Progress)
    speed = (tonga.end - tonga.start) / 600.0  # ten minutes of publishing
    with pytest.raises(streaming.ReplayError, match="all workers exited"):
        asyncio.run(replay_package(tonga, kafka_settings, speed=speed, progress_stream=None,
                                   run_dir=tmp_path, timeout=600))
    # it gave up with most of the package still to send (it publishes in event time; the
    # first packet is due 7 s in, so it may have sent none)
    assert max(reached, default=tonga.start) < tonga.start + 0.5 * (tonga.end - tonga.start)


def test_a_finished_replay_reports_late_dead_letters_and_survives_a_failed_delete(
        kafka_settings: Settings, tonga: ReplayPackage, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ways a finished replay lost what it had: a delivery dead-lettered while the
    replay drained its deliveries (after the end markers) was missing from the report and
    then deleted with the topics; and a failed topic deletion raised out of the replay, so
    a complete run wrote no report."""
    import replay.streaming as streaming

    late = orjson.dumps({"schema": "tocsin.deadletter/1", "reason": "delivery gave up",
                         "source": "delivery d-1", "key": "d-1"})

    async def drain_with_a_dead_delivery(settings: Settings, timeout: float) -> int:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        await producer.start()
        try:  # as a worker's deliver timer does, with the replay's end long through
            topic = next(t for t in await _names(settings) if t.endswith(".deadletter")
                         and t.startswith(f"{settings.topic_prefix}.{tonga.event_id}-"))
            await producer.send_and_wait(topic, late, key=b"d-1")
        finally:
            await producer.stop()
        return 0

    async def refused(bootstrap: str, topics: Topics) -> None:
        raise RuntimeError("deleting topics failed (topic, Kafka error code): [('x', 41)]")

    settings = kafka_settings.model_copy(update={"topic_prefix": "late"})
    monkeypatch.setattr(streaming, "drain_deliveries", drain_with_a_dead_delivery)
    monkeypatch.setattr(streaming, "delete_topics", refused)
    report = asyncio.run(replay_package(tonga, settings, speed=None, progress_stream=None,
                                        run_dir=tmp_path, timeout=600))
    assert report["incidents"], "the run finished and its report is whole"
    assert report["run"]["dead_letters"] == [
        {"source": "delivery d-1", "reason": "delivery gave up", "key": "d-1"}]
    assert report["run"]["topics"].startswith("not deleted: RuntimeError")
    kept = Topics.for_run(settings, report["run"]["run_id"])
    assert _run_topics(settings, report["run"]["run_id"]) == sorted(kept.layout())
    asyncio.run(delete_topics(settings.bootstrap, kept))


async def _names(settings: Settings) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def test_outputs_the_database_refuses_are_dead_letters_and_still_go_out(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """A transaction the database refuses (not one it cannot take now: those wait) escaped
    the agents: the worker's agent crashed, and the input it was on stayed unacknowledged,
    so the partition's offset never moved past it again. Here the database refuses one
    station's detections, every incident revision and every alert (SQLite triggers): the
    inputs go to the dead-letter topic with the database's reason, the outputs still go
    out (the report equals tocsin detect's), and the database has the rest."""
    import sqlite3

    from sqlalchemy import select

    from replay.scenario import build_synthetic
    from responders.store import DetectionRow, Store, migrate

    pkg = load_package(build_synthetic(tmp_path / "pkg", n_stations=30, hours=6.0))
    expected = detect_package(pkg, packet_seconds=600.0)
    refused = "SY.00014"
    assert refused in {d["station_id"] for d in expected["detections"]}
    assert expected["incidents"] and expected["alerts"]
    settings = kafka_settings.model_copy(update={"home": tmp_path / "home",
                                                 "database_url": None})  # SQLite's triggers
    migrate(settings.db_url)
    db = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"))
    db.executescript(f"""
        CREATE TRIGGER no_station BEFORE INSERT ON detections WHEN NEW.station_id = '{refused}'
            BEGIN SELECT RAISE(ABORT, 'refused for the test: {refused}'); END;
        CREATE TRIGGER no_revisions BEFORE INSERT ON incident_revisions
            BEGIN SELECT RAISE(ABORT, 'refused for the test: revisions'); END;
        CREATE TRIGGER no_alerts BEFORE INSERT ON alerts
            BEGIN SELECT RAISE(ABORT, 'refused for the test: alerts'); END;""")
    db.close()
    # (the old agents crashed on the first refusal and the run waited out its timeout)
    report = asyncio.run(replay_package(pkg, settings, speed=None, progress_stream=None,
                                        run_dir=tmp_path / "run", timeout=180))
    same_reports(report, expected)
    letters = report["run"]["dead_letters"]
    topics = Topics.for_run(settings, report["run"]["run_id"])
    by_topic: dict[str, list[str]] = {}
    for d in letters:
        assert d["reason"].startswith("StoreRefused: "), d
        assert "the database refused them: IntegrityError" in d["reason"], d
        by_topic.setdefault(d["source"].split("[")[0], []).append(d["reason"])
    (of_station,) = by_topic[topics.observations]
    assert f"lamb_pulse:{refused}:" in of_station and f"refused for the test: {refused}" in \
        of_station
    assert by_topic[topics.detections] and all(
        "refused for the test: revisions" in r for r in by_topic[topics.detections])
    assert len(by_topic[topics.incidents]) == len(expected["alerts"])
    assert all("no delivery is queued" in r for r in by_topic[topics.incidents])
    store = Store(settings.db_url)
    with store.engine.connect() as c:
        stored = set(c.execute(select(DetectionRow.station_id)).scalars())
    counts = store.counts()
    store.close()
    assert stored == {d["station_id"] for d in expected["detections"]} - {refused}
    assert (counts.incidents, counts.alerts) == (0, 0)
