"""The real broker: start/status/stop, and a produce/consume round trip with acks=all."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.broker import Broker, BrokerError, roll_over
from streams.topics import Topics, create_topics
from tests.conftest import missing
from tocsin.settings import Settings

pytestmark = pytest.mark.kafka


def test_status_reports_running(kafka_settings: Settings) -> None:
    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker to inspect")
    st = Broker(kafka_settings).status()
    assert st.running and st.pid is not None
    assert str(kafka_settings.broker_port) in st.bootstrap
    assert st.log.exists()


def test_topics_are_created_explicitly_and_round_trip(kafka_settings: Settings) -> None:
    topics = Topics.for_run(kafka_settings, "broker-test", 3)

    async def go() -> list[bytes]:
        await create_topics(kafka_settings.bootstrap, topics)
        await create_topics(kafka_settings.bootstrap, topics)  # idempotent
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all",
                                    enable_idempotence=True)
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topics.observations, f"m{i}".encode(),
                                             key=b"S1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topics.observations, bootstrap_servers=kafka_settings.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < 10:
                batch = await consumer.getmany(timeout_ms=5000)
                assert batch, "no records within 5 s"
                for recs in batch.values():
                    got.extend(r.value for r in recs)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(go())
    assert got == [f"m{i}".encode() for i in range(10)]  # one key, one partition: in order

def test_created_topics_take_a_produce_at_once(kafka_settings: Settings,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """create_topics returns when the leaders serve the partitions: a produce to every
    partition right after it needs no retry (the metadata shows a leader before the broker
    has taken the leadership up; 4 of 6 fresh topics got NotLeaderForPartitionError)."""

    async def go(run: str) -> None:
        topics = Topics.for_run(kafka_settings, run, 4)
        await create_topics(kafka_settings.bootstrap, topics)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all",
                                    enable_idempotence=True)
        await producer.start()
        try:
            sent = [await producer.send(topics.observations, b"x", partition=p)
                    for p in range(4)]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    with caplog.at_level("WARNING", logger="aiokafka"):
        for i in range(3):
            asyncio.run(go(f"at-once-{i}"))
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert not retried, retried



def test_port_taken_is_a_clear_error(kafka_settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    other = Settings(home=tmp_path, broker_port=kafka_settings.broker_port,
                     controller_port=kafka_settings.controller_port + 1)
    with pytest.raises(BrokerError, match=str(kafka_settings.broker_port)):
        Broker(other).start(timeout=5)
    # the controller's port too, before anything is launched (it failed after 4 s with
    # "exited with code 1; see log")
    from tests.conftest import free_port

    other = Settings(home=tmp_path, broker_port=free_port(),
                     controller_port=kafka_settings.broker_port)
    with pytest.raises(BrokerError, match=f"port {kafka_settings.broker_port} on 127.0.0.1 "
                                          r"\(the KRaft controller's\) is taken"):
        Broker(other).start(timeout=5)
    assert not (tmp_path / "broker" / "broker.pid").exists()


def test_heap_sizes_and_the_g1_region_size() -> None:
    from deploy.broker import g1_region_opts, heap_bytes

    assert heap_bytes("768m") == 768 << 20 and heap_bytes("2G") == 2 << 30
    assert heap_bytes("524288k") == 512 << 20 and heap_bytes("1073741824") == 1 << 30
    assert g1_region_opts("768m") == ("-XX:G1HeapRegionSize=16M",)
    assert g1_region_opts("256m") == ()  # 16-MB regions would leave 16 of them
    for bad in ("", "lots", "0m", "1.5g", "-1g"):
        with pytest.raises(BrokerError, match="not a JVM heap size"):
            heap_bytes(bad)


def test_broker_jit_setting() -> None:
    """The local broker runs on C1 alone unless TOCSIN_BROKER_JIT=tiered; anything else is
    an error naming the value."""
    from pydantic import ValidationError

    from deploy.broker import jit_opts

    assert Settings().broker_jit == "c1"
    assert jit_opts("c1") == ("-XX:TieredStopAtLevel=1",) and jit_opts("tiered") == ()
    cmd = Broker(Settings(broker_jit="tiered"))._java("kafka.Kafka")
    assert not any(o.startswith("-XX:TieredStopAtLevel") for o in cmd)
    assert "-XX:TieredStopAtLevel=1" in Broker(Settings())._java("kafka.Kafka")
    with pytest.raises(ValidationError, match="c2"):
        Settings(broker_jit="c2")  # type: ignore[arg-type]
    with pytest.raises(BrokerError, match="'c2'"):
        jit_opts("c2")


def test_topic_names_are_checked_before_kafka_sees_them() -> None:
    """A run id or prefix with a character Kafka does not allow, or fewer than 1 partition,
    is a ValueError naming the value (it was a 30-s "not ready" timeout, and 0 partitions
    silently became the default)."""
    from streams.topics import TopicError

    settings = Settings()
    with pytest.raises(ValueError, match=r"run id 'Tonga 2022-xxxx' has ' '"):
        Topics.for_run(settings, "Tonga 2022-xxxx")
    with pytest.raises(TopicError, match=r"run id 'a/b' has '/'.*\[A-Za-z0-9\._-\]"):
        Topics.for_run(settings, "a/b")
    with pytest.raises(TopicError, match="topic prefix 'to csin' has ' '"):
        Topics("to csin", "live", 1, 1)
    # and the setting itself, before anything is started
    with pytest.raises(ValueError, match=r"'to csin' is not 1-100 of \[A-Za-z0-9\._-\]"):
        Settings(topic_prefix="to csin")
    with pytest.raises(ValueError, match="' 768m' is not a JVM heap size"):
        Settings(broker_heap=" 768m")
    with pytest.raises(TopicError, match="run id is empty"):
        Topics.for_run(settings, "")
    with pytest.raises(TopicError, match="longer than Kafka's 249"):
        Topics.for_run(settings, "x" * 240)
    for bad in (0, -3):
        with pytest.raises(TopicError, match=rf"partitions {bad}\b"):
            Topics.for_run(settings, "live", bad)
    assert Topics.for_run(settings, "live").partitions == settings.partitions
    assert Topics.for_run(settings, "Tonga_2022.a-1", 2).observations == (
        "tocsin.Tonga_2022.a-1.observations")


def test_a_topic_the_broker_refuses_is_a_clear_error_at_once(kafka_settings: Settings) -> None:
    """The CreateTopics answer's error codes are checked: a refused topic raises at once,
    naming the topic and the broker's error (it was a 30-s "not ready" timeout)."""
    from streams.topics import TopicError

    topics = Topics(kafka_settings.topic_prefix, "refused", 1, replication=2)  # one broker
    # no time to wait for the topics: waiting would be a TimeoutError, not the answer
    with pytest.raises(TopicError, match=r"'tocsin\.refused\.observations'.*"
                                         r"InvalidReplicationFactorError"):
        asyncio.run(create_topics(kafka_settings.bootstrap, topics, timeout=0))


def test_an_existing_topic_with_other_partitions_is_a_clear_error(
        kafka_settings: Settings) -> None:
    """TopicAlreadyExists is fine only if the topic has the partitions asked for."""
    from streams.topics import TopicError

    asyncio.run(create_topics(kafka_settings.bootstrap,
                              Topics.for_run(kafka_settings, "other-count", 2)))
    with pytest.raises(TopicError, match=r"'tocsin\.other-count\.observations' exists with 2 "
                                         r"partitions, 3 asked"):  # at once, as above
        asyncio.run(create_topics(kafka_settings.bootstrap,
                                  Topics.for_run(kafka_settings, "other-count", 3), timeout=0))


def _ours(broker: Broker) -> list[int]:
    """The pids of processes running this broker's configuration."""
    from pathlib import Path

    conf = str(broker.dir / "server.properties").encode()
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if conf in (proc / "cmdline").read_bytes().split(b"\0"):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def test_a_stale_pid_file_never_signals_another_process(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """After a SIGKILL or a reboot the pid file may name an unrelated process: stop killed
    its whole process group; and a live pid that leads no group made stop wait 30 s and
    then raise ProcessLookupError."""
    import subprocess

    import deploy.broker

    def waited(seconds: float) -> None:
        raise AssertionError(f"stop waited ({seconds} s) for a process that is not the broker")

    broker = Broker(Settings(home=tmp_path))
    broker.dir.mkdir(parents=True)
    for session in (True, False):
        other = subprocess.Popen(["sleep", "60"], start_new_session=session)
        try:
            broker.pid_file.write_text(str(other.pid))
            assert not broker.status().running
            with monkeypatch.context() as m:
                m.setattr(deploy.broker.time, "sleep", waited)
                broker.stop()
            assert other.poll() is None, "stop signalled a process that is not the broker"
            assert not broker.pid_file.exists()
        finally:
            other.kill()
            other.wait()


def test_a_broker_whose_pid_file_is_gone_is_still_found(kafka_settings: Settings,
                                                        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With its pid file removed, a running broker was 'stopped' to status, start found
    its port taken, and stop left it running: an orphan JVM."""
    from tests.conftest import free_port

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    broker = Broker(Settings(home=tmp_path, broker_port=free_port(),
                             controller_port=free_port(), cache_dir=kafka_settings.cache_dir))
    try:
        pid = broker.start(timeout=90).pid
        broker.pid_file.unlink()
        st = broker.status()
        assert st.running and st.pid == pid
        assert broker.pid_file.read_text().strip() == str(pid)  # written again
        broker.pid_file.unlink()
        broker.stop()
        assert _ours(broker) == []
        assert not broker.status().running
    finally:
        broker.stop()
        for left in _ours(broker):
            os.kill(left, signal.SIGKILL)


def test_two_starts_at_once_make_one_broker(kafka_settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The second of two starts launched a JVM of its own that died on the taken controller
    port, and wrote its pid over the first's: status said stopped, stop left the broker."""
    import threading

    from tests.conftest import free_port

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    settings = Settings(home=tmp_path, broker_port=free_port(), controller_port=free_port(),
                        cache_dir=kafka_settings.cache_dir)
    brokers = [Broker(settings), Broker(settings)]
    results: list[object] = [None, None]

    def start(i: int) -> None:
        try:
            results[i] = brokers[i].start(timeout=90)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        a, b = results
        assert not isinstance(a, Exception) and not isinstance(b, Exception), results
        assert a.pid == b.pid and a.running  # type: ignore[union-attr]
        assert _ours(brokers[0]) == [a.pid]  # type: ignore[union-attr]
    finally:
        brokers[0].stop()
    assert _ours(brokers[0]) == []


def test_roll_over_keeps_the_newest_logs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "broker.log"
    roll_over(log, 3)  # no log yet: nothing
    assert list(tmp_path.iterdir()) == []
    log.write_text("")
    roll_over(log, 3)  # an empty one stays
    assert [p.name for p in tmp_path.iterdir()] == ["broker.log"]
    for i in range(5):
        log.write_text(f"launch {i}\n")
        roll_over(log, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broker.log.1", "broker.log.2", "broker.log.3"]
    assert [(tmp_path / f"broker.log.{i}").read_text() for i in (1, 2, 3)] == [
        "launch 4\n", "launch 3\n", "launch 2\n"]
    # fewer kept than before: the older ones go too
    log.write_text("launch 5\n")
    roll_over(log, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broker.log.1", "broker.log.2"]
    assert (tmp_path / "broker.log.2").read_text() == "launch 4\n"


def test_the_log_size_reaches_log4j_in_a_form_it_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """f"{mb:g} MB" gave "1e+06 MB", which log4j's FileSize does not read: it rolled at its
    10 MB default."""
    import re

    for mb, kb in ((50.0, 51200), (0.02, 20), (1e6, 1024000000), (1e-5, 1)):
        argv = Broker(Settings(home=tmp_path, broker_log_mb=mb))._java("kafka.Kafka")
        size = next(a for a in argv if a.startswith("-Dtocsin.broker.log.size="))
        assert size == f"-Dtocsin.broker.log.size={kb} KB", (mb, size)
        # log4j-core's FileSize pattern
        assert re.fullmatch(r"([0-9]+([.,][0-9]+)?)\s*(|K|M|G|T)B?", size.split("=")[1],
                            re.IGNORECASE)


def test_the_broker_log_is_bounded_and_each_start_has_its_own(
        kafka_settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The log was one file appended to by every start, forever: 224 MB on a machine that
    had run the tests and benchmarks for a few days."""
    from tests.conftest import free_port

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    base = Settings(home=tmp_path, broker_port=free_port(), controller_port=free_port(),
                    cache_dir=kafka_settings.cache_dir)
    broker = Broker(base)
    broker.dir.mkdir(parents=True)
    # an earlier launch's log, which even says it started
    earlier = "[earlier] INFO [KafkaRaftServer nodeId=1] Kafka Server started\n"
    broker.log.write_text(earlier)
    try:
        assert broker.start(timeout=120).running
        assert broker.log.with_name("broker.log.1").read_text() == earlier
        assert earlier not in broker.log.read_text()
        assert "Kafka Server started" in broker.log.read_text()
    finally:
        broker.stop()
    # a small size: the log rolls over while the broker runs, and only the newest are kept
    small = base.model_copy(update={"broker_log_mb": 0.02, "broker_log_files": 3})
    broker = Broker(small)
    for old in broker.dir.glob("broker.log*"):  # every file left is this launch's
        old.unlink()
    try:
        assert broker.start(timeout=120).running  # ready, though it rolled during start-up
        asyncio.run(create_topics(small.bootstrap, Topics.for_run(small, "log-roll", 2)))
        logs = sorted(p.name for p in broker.dir.iterdir() if p.name.startswith("broker.log"))
    finally:
        broker.stop()
    assert logs == ["broker.log", "broker.log.1", "broker.log.2", "broker.log.3"]
    # over by the events written once it was full: log4j2 checks the size before a write,
    # not under the lock of the write, so threads logging at one instant each add theirs
    # (two 14-kB KafkaConfig dumps in one millisecond made a 20-kB file 46.9 kB); at most
    # three such dumps, against the 224 MB this test is about
    for name in logs:
        assert (broker.dir / name).stat().st_size < 0.02 * 2**20 + 3 * 16 * 1024, name


def test_a_cluster_id_that_starts_with_a_dash_formats(kafka_settings: Settings, tmp_path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage format took "-t -Xy..." for an option and failed ("--cluster-id/-t:
    expected one argument"): once in a CI run, as base64url ids start with "-" 1 in 64."""
    import base64
    import uuid

    import deploy.broker as broker_mod
    from tests.conftest import free_port

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    dashed = uuid.UUID(bytes=b"\xfb" + bytes(range(1, 16)))
    assert base64.urlsafe_b64encode(dashed.bytes).decode().startswith("-")
    monkeypatch.setattr(broker_mod.uuid, "uuid4", lambda: dashed)
    settings = Settings(home=tmp_path, broker_port=free_port(), controller_port=free_port(),
                        cache_dir=kafka_settings.cache_dir)
    broker = Broker(settings)
    try:
        assert broker.start(timeout=90).running
        meta = (broker.data_dir / "meta.properties").read_text()
        assert "cluster.id=-" in meta
    finally:
        broker.stop()


def test_a_broker_in_use_is_stopped_after_its_last_user(kafka_settings: Settings,
                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Replay A started the broker, replay B found it running and used it; when A ended it
    stopped the broker in the middle of B's run. A broker started with `tocsin broker
    start` is left running by the commands that use it."""
    from tests.conftest import free_port

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    settings = Settings(home=tmp_path, broker_port=free_port(), controller_port=free_port(),
                        cache_dir=kafka_settings.cache_dir)
    broker = Broker(settings)
    try:
        with broker.use() as first:
            assert first.running
            with Broker(settings).use() as second:
                assert second.pid == first.pid
            assert broker.status().running  # the first user is still on it
        assert not broker.status().running and _ours(broker) == []
        started = broker.start()
        with broker.use():
            pass
        assert broker.status().pid == started.pid  # started for good: left running
    finally:
        broker.stop()
    assert _ours(broker) == []


def test_an_interrupted_start_leaves_no_broker_behind(kafka_settings: Settings, tmp_path,  # type: ignore[no-untyped-def]
                                                      monkeypatch) -> None:
    """Ctrl-C in the wait for readiness left the JVM running, unknown: the next start
    launched another over its pid file, and stop stopped only that one."""
    from tests.conftest import free_port

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker")
    settings = Settings(home=tmp_path, broker_port=free_port(), controller_port=free_port(),
                        cache_dir=kafka_settings.cache_dir)
    broker = Broker(settings)
    launched: list[int] = []
    real = Broker._wait_ready

    def interrupted(self, pid, *args, **kw):  # type: ignore[no-untyped-def]
        launched.append(pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(Broker, "_wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        broker.start(timeout=90)
    assert launched and _ours(broker) == []  # the JVM it launched was stopped
    monkeypatch.setattr(Broker, "_wait_ready", real)
    try:
        st = broker.start(timeout=90)
        assert st.running and _ours(broker) == [st.pid]
    finally:
        broker.stop()


def test_the_observations_topic_keeps_what_a_takeover_reads_back_from_a_time(
        kafka_settings: Settings) -> None:
    """The observations topic is created with the retention the detectors' rebuild needs
    (the broker's default is 7 days; the tide fit takes 32), and a rebuild reads from a
    time: Kafka's offsets for times on the real broker, records stamped by their producer."""
    import contextlib

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.takeover import read_back

    topics = Topics.for_run(kafka_settings, "retention-test", 2)
    assert topics.retention_ms == 35 * 86400 * 1000
    now = int(time.time() * 1000)

    async def go() -> tuple[dict[str, str], list[tuple[int, bytes]]]:
        await create_topics(kafka_settings.bootstrap, topics)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
        await admin.start()
        try:
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topics.observations)])
            entries = {e[0]: e[1] for e in resp.resources[0][4]}
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topics.detections)])
            entries["detections"] = {e[0]: e[1] for e in resp.resources[0][4]}["retention.ms"]
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all",
                                    enable_idempotence=True)
        await producer.start()
        try:
            for i, hours in enumerate([10, 8, 6, 4, 2, 1]):
                for key in (b"A", b"B"):
                    await producer.send_and_wait(
                        topics.observations, key + str(i).encode(), key=key, partition=0,
                        timestamp_ms=now - hours * 3_600_000)
        finally:
            await producer.stop()
        got = []
        async with contextlib.aclosing(read_back(
                kafka_settings.bootstrap, {(topics.observations, 0): None,
                                           (topics.observations, 1): None},
                since_ms=now - 7 * 3_600_000,
                key_since_ms={b"B": now - 3 * 3_600_000})) as batches:
            async for records in batches:
                got.extend((r.offset, r.value) for r in records)
        return entries, got

    entries, got = asyncio.run(go())
    assert entries["retention.ms"] == str(35 * 86400 * 1000), entries["retention.ms"]
    assert entries["detections"] == str(7 * 86400 * 1000)  # the broker's default
    # from 7 h back; B (a station needing less) from 3 h back
    assert [v for _, v in got] == [b"A2", b"A3", b"A4", b"B4", b"A5", b"B5"], got


def test_an_existing_observations_topic_gets_the_retention_raised_never_lowered(
        kafka_settings: Settings) -> None:
    """A topic made before the setting (or by hand) kept its 7 days, silently: a takeover
    then rebuilt tide gauges from less than their 32 days."""
    import dataclasses

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    topics = Topics.for_run(kafka_settings, "retention-existing", 1)
    week = str(7 * 86400 * 1000)

    async def configs(admin: AIOKafkaAdminClient) -> dict[str, str]:
        # a topic just made may not be described yet (UNKNOWN_TOPIC_OR_PARTITION): CI
        # once read an empty answer here
        for _ in range(50):
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topics.observations)])
            code, message = resp.resources[0][:2]
            if not code:
                return {e[0]: e[1] for e in resp.resources[0][4]}
            await asyncio.sleep(0.2)
        raise AssertionError(f"{topics.observations} not described: error {code} {message}")

    async def go() -> list[dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(
                topics.observations, 1, 1,
                topic_configs={"retention.ms": week, "max.message.bytes": "2000000"})])
            seen = [await configs(admin)]
            await create_topics(kafka_settings.bootstrap, topics)
            seen.append(await configs(admin))
            await create_topics(kafka_settings.bootstrap,
                                dataclasses.replace(topics, retention_ms=3_600_000))
            seen.append(await configs(admin))
            return seen
        finally:
            await admin.close()

    before, raised, again = asyncio.run(go())
    assert before["retention.ms"] == week
    assert raised["retention.ms"] == str(35 * 86400 * 1000)
    assert raised["max.message.bytes"] == "2000000"  # its other settings kept
    assert again["retention.ms"] == raised["retention.ms"]  # never lowered


def test_a_topic_not_yet_described_is_asked_again_before_its_retention_is_left() -> None:
    """Just after a topic is made the broker may answer DescribeConfigs with
    UNKNOWN_TOPIC_OR_PARTITION (CI saw it): the retention check asks again instead of
    leaving the retention as it is; a non-retriable error is given back at once."""
    from types import SimpleNamespace

    from streams.topics import _describe

    class Admin:
        def __init__(self, codes: list[int]) -> None:
            self.codes, self.asked = codes, 0

        async def describe_configs(self, _resources: object) -> list[SimpleNamespace]:
            code = self.codes[min(self.asked, len(self.codes) - 1)]
            self.asked += 1
            entries = [] if code else [("retention.ms", "604800000", False, 1)]
            return [SimpleNamespace(resources=[(code, "", 2, "t", entries)], API_VERSION=1)]

    late = Admin([3, 3, 0])
    _resp, code, _message, entries = asyncio.run(_describe(late, "t"))  # type: ignore[arg-type]
    assert (code, late.asked) == (0, 3)
    assert entries[0][:2] == ("retention.ms", "604800000")

    refused = Admin([29])  # TOPIC_AUTHORIZATION_FAILED: not retriable
    _resp, code, _message, _entries = asyncio.run(_describe(refused, "t"))  # type: ignore[arg-type]
    assert (code, refused.asked) == (29, 1)

    never = Admin([3])
    _resp, code, _message, _entries = asyncio.run(
        _describe(never, "t", patience_s=0.5))  # type: ignore[arg-type]
    assert code == 3 and 2 <= never.asked <= 5
