"""SeedLink ingest against a SeedLink 3.1 server on loopback, on the real MSVF record.

The server (replay/seedlink_server.py) is checked with ObsPy's own SeedLink client first,
so the protocol on the wire is not only agreed between our two halves.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from detectors.base import StationInfo
from detectors.picker import StaLtaPicker
from replay.seedlink_server import SeedLinkServer, records_512
from streams.schemas import decode
from streams.seedlink import Ingest, SeedLinkClient, parse_stream_id, record_to_packet

LHZ = "II.MSVF.10.LHZ"
INFO = StationInfo(LHZ, "seismic", -17.745, 178.053, 800.0, "counts")


@pytest.fixture(scope="module")
def msvf_file(shared_data: Path) -> Path:
    return shared_data / "tonga2022" / "seismic" / "Tonga_2022-01-15_II.MSVF.10.LHZ.mseed"


@pytest.fixture(scope="module")
def records(msvf_file: Path) -> list[bytes]:
    recs = records_512([msvf_file])
    assert len(recs) > 100 and all(len(r) == 512 for r in recs)
    return recs


@pytest.fixture(scope="module")
def msvf_data(msvf_file: Path) -> tuple[float, np.ndarray]:
    from obspy import read

    tr = read(str(msvf_file)).merge()[0]
    return tr.stats.starttime.timestamp, np.asarray(tr.data, dtype=np.float64)


@pytest.fixture
def server_thread(records: list[bytes]) -> Iterator[SeedLinkServer]:
    """The server in its own event loop thread (for ObsPy's blocking client)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, SeedLinkServer] = {}
    stop = asyncio.Event()

    async def main() -> None:
        async with SeedLinkServer(records) as srv:
            holder["srv"] = srv
            ready.set()
            await stop.wait()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(10)
    yield holder["srv"]
    loop.call_soon_threadsafe(stop.set)
    t.join(10)


def test_obspy_seedlink_client_reads_our_server(server_thread: SeedLinkServer,
                                                records: list[bytes], msvf_data) -> None:
    from obspy import Stream
    from obspy.clients.seedlink.slclient import SLClient
    from obspy.clients.seedlink.slpacket import SLPacket

    client = SLClient(timeout=30)
    client.slconn.set_sl_address(f"127.0.0.1:{server_thread.port}")
    client.multiselect = "II_MSVF:10LHZ"
    client.initialize()
    got: list[tuple[int, object]] = []

    def handler(count: int, pkt: SLPacket) -> bool:
        if pkt.get_type() not in (SLPacket.TYPE_SLINF, SLPacket.TYPE_SLINFT):
            got.append((pkt.get_sequence_number(), pkt.get_trace()))
        return len(got) >= len(records)

    client.run(packet_handler=handler)
    assert [s for s, _ in got] == list(range(1, len(records) + 1))
    st = Stream([tr for _, tr in got]).merge()
    assert len(st) == 1 and st[0].id == LHZ
    t0, data = msvf_data
    assert st[0].stats.starttime.timestamp == pytest.approx(t0)
    np.testing.assert_array_equal(np.asarray(st[0].data, dtype=np.float64), data)
    assert any(c.startswith("STATION") for c in server_thread.commands)


def test_parse_stream_id_names_the_bad_value() -> None:
    assert parse_stream_id(LHZ) == ("II", "MSVF", "10", "LHZ")
    with pytest.raises(ValueError, match="'MSVF.LHZ'"):
        parse_stream_id("MSVF.LHZ")
    assert parse_stream_id("II.MSVF.*.LH?") == ("II", "MSVF", "*", "LH?")
    # a station pattern never resumed by sequence number (its last one is kept by station):
    # a bare DATA after an outage, and what came meanwhile was lost
    for bad in ("II.MS*.10.LHZ", "I?.MSVF.10.LHZ"):
        with pytest.raises(ValueError, match="a network and station are codes, not patterns"):
            parse_stream_id(bad)


async def _collect(client: SeedLinkClient, ingest: Ingest, n: int,
                   on_record=None) -> list:  # type: ignore[no-untyped-def]
    out = []
    async for seq, rec in client.packets():
        pkt = ingest.packet(seq, rec)
        if pkt is not None:
            out.append(pkt)
            if on_record is not None:
                on_record(len(out))
        if len(out) >= n:
            break
    return out


def test_reconnects_and_resumes_without_gap_or_duplicate(records: list[bytes],
                                                        msvf_data) -> None:
    async def main() -> tuple[list, SeedLinkClient, Ingest, SeedLinkServer]:
        # a live feed, 40 records at a time; the connection is cut twice while streaming
        async with SeedLinkServer(records[:40]) as srv:
            client = SeedLinkClient("127.0.0.1", srv.port, [LHZ], reconnect_delay=0.05)
            ingest = Ingest(client, {LHZ: INFO})

            def on_record(k: int) -> None:
                if k in (100, 250):
                    srv.drop_connections()
                if k % 40 == 0:
                    srv.append(records[k:k + 40])

            pkts = await asyncio.wait_for(_collect(client, ingest, len(records), on_record), 60)
            return pkts, client, ingest, srv

    pkts, client, ingest, srv = asyncio.run(main())
    assert srv.connections >= 3 and client.connections == srv.connections
    assert [p.seq for p in pkts] == list(range(1, len(records) + 1))
    assert any(c.startswith("DATA ") for c in srv.commands)  # resumed by sequence number
    t0, data = msvf_data
    assert pkts[0].start == pytest.approx(t0)
    np.testing.assert_array_equal(np.concatenate([p.values for p in pkts]), data)
    m = ingest.metrics[LHZ]
    assert (m.records, m.samples, m.seq_gaps, m.time_gaps) == (len(records), len(data), 0, 0)
    assert m.latency_s > 0 and not math.isnan(m.last_end)
    assert pkts[0].lat == INFO.lat and pkts[0].kind == "seismic"


class _BadHeaderFirst(SeedLinkServer):
    """Its first connection sends ``good`` records, then one packet with the header
    ``bad``, and stays open until the client hangs up; later connections are the normal
    server's."""

    def __init__(self, records: list[bytes], bad: bytes, good: int) -> None:
        super().__init__(records)
        self.bad, self.good, self.served = bad, good, 0

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      requests, fetch: bool) -> None:  # type: ignore[no-untyped-def]
        self.served += 1
        if self.served > 1:
            return await super()._stream(reader, writer, requests, fetch)
        recs = next(iter(self.by_station.values()))
        for seq, rec in enumerate(recs[:self.good], start=1):
            writer.write(b"SL%06X" % seq + rec)
        writer.write(self.bad + recs[self.good])
        await writer.drain()
        while await reader.read(256):  # until the client closes the connection
            pass


@pytest.mark.parametrize("bad", [b"SL00zz07", b"XX000007", b"SL-00007"])
def test_a_bad_packet_header_reconnects_and_resumes(records: list[bytes], bad: bytes,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A packet whose header is not SL + 6 hex digits is a broken connection: the client
    logs it, reconnects and resumes after the last good record (it ended ingest)."""
    recs = records[:20]

    async def main() -> tuple[list, SeedLinkClient, SeedLinkServer]:
        async with _BadHeaderFirst(recs, bad, good=6) as srv:
            client = SeedLinkClient("127.0.0.1", srv.port, [LHZ], reconnect_delay=0.05)
            pkts = await asyncio.wait_for(_collect(client, Ingest(client, {LHZ: INFO}),
                                                   len(recs)), 30)
            return pkts, client, srv

    with caplog.at_level("WARNING", logger="streams.seedlink"):
        pkts, client, srv = asyncio.run(main())
    assert [p.seq for p in pkts] == list(range(1, len(recs) + 1))
    assert client.connections == srv.connections == 2
    assert "DATA 000007" in srv.commands  # resumed after the last good record
    assert any("bad SeedLink packet header" in r.getMessage() and "reconnecting" in
               r.getMessage() for r in caplog.records)


def test_picks_from_seedlink_packets_equal_picks_from_the_file(records: list[bytes],
                                                               msvf_data) -> None:
    t0, data = msvf_data
    whole = StaLtaPicker(INFO).feed(t0, 1.0, data)
    assert whole
    picker = StaLtaPicker(INFO)
    got = []
    for i, rec in enumerate(records, start=1):
        p = record_to_packet(rec, i, {LHZ: INFO}, "test")
        got.extend(picker.feed(p.start, p.sample_interval, p.values))
    assert got == whole


def test_a_bad_record_is_a_clear_error(records: list[bytes]) -> None:
    import struct

    with pytest.raises(ValueError, match="record #7: not miniSEED"):
        record_to_packet(b"\x00" * 512, 7, {}, "test")
    assert len(record_to_packet(records[0], 7, {}, "test").values) > 0

    def patched(offset: int, data: bytes) -> bytes:
        rec = bytearray(records[0])
        rec[offset:offset + len(data)] = data
        return bytes(rec)

    # each of these was taken: a packet of no samples (the record's samples lost without a
    # dead letter), a packet at a GHz
    with pytest.raises(ValueError, match=r"record #7 \(II\.MSVF\..*\): no samples could be "
                                         r"read from it"):
        record_to_packet(patched(44, struct.pack(">H", 0)), 7, {}, "test")  # data offset
    with pytest.raises(ValueError, match=r"sampling rate 1073676289.0 Hz is not that of a "
                                         r"sensor \(0 < rate <= 10000\)"):
        record_to_packet(patched(32, struct.pack(">hh", 32767, 32767)), 7, {}, "test")


@pytest.mark.kafka
def test_ingest_into_kafka(records: list[bytes], msvf_data, kafka_settings,  # type: ignore[no-untyped-def]
                           tmp_path: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.schemas import ObservationPacket, decode
    from streams.topics import Topics, create_topics

    topics = Topics.for_run(kafka_settings, "seedlink-test", 2)
    bad = bytearray(records[3])
    bad[48:52] = b"\xff\xff\xff\xff"  # corrupt the data offset: the record cannot decode

    async def main() -> tuple[list[ObservationPacket], list[bytes], Ingest]:
        await create_topics(kafka_settings.bootstrap, topics)
        async with SeedLinkServer([*records[:3], bytes(bad), *records[4:]]) as srv:
            client = SeedLinkClient("127.0.0.1", srv.port, [LHZ], fetch=True)
            ingest = Ingest(client, {LHZ: INFO})
            producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap,
                                        acks="all", enable_idempotence=True)
            await producer.start()
            try:
                await ingest.run(producer, topics.observations, topics.deadletter)
            finally:
                await producer.stop()
        out: list[ObservationPacket] = []
        dead: list[bytes] = []
        consumer = AIOKafkaConsumer(topics.observations, topics.deadletter,
                                    bootstrap_servers=kafka_settings.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            while len(out) < len(records) - 1 or not dead:
                batch = await consumer.getmany(timeout_ms=5000)
                assert batch, f"stalled at {len(out)} packets"
                for tp, msgs in batch.items():
                    for m in msgs:
                        if tp.topic == topics.deadletter:
                            dead.append(m.value)
                        else:
                            msg = decode(m.value)
                            assert isinstance(msg, ObservationPacket)
                            out.append(msg)
        finally:
            await consumer.stop()
        return out, dead, ingest

    out, dead, ingest = asyncio.run(main())
    assert ingest.bad == 1 and len(dead) == 1 and b"record #4" in dead[0]
    out.sort(key=lambda p: p.seq)
    assert [p.seq for p in out] == [s for s in range(1, len(records) + 1) if s != 4]
    m = ingest.metrics[LHZ]
    assert m.time_gaps == 1 and m.seq_gaps == 0  # received, but lost to the dead-letter topic
    t0, data = msvf_data
    got = np.concatenate([p.values for p in out])
    lost = len(record_to_packet(records[3], 4, {}, "test").values)
    assert len(got) == len(data) - lost


@pytest.mark.kafka
def test_seedlink_to_worker_picks_through_kafka(server_thread: SeedLinkServer, msvf_data,  # type: ignore[no-untyped-def]
                                                kafka_settings, tmp_path: Path) -> None:
    """tocsin seedlink -> observations topic -> tocsin worker (Faust) -> detections topic."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from aiokafka import AIOKafkaConsumer

    from detectors.base import Detection
    from streams.schemas import decode
    from streams.topics import Topics

    t0, data = msvf_data
    expected = sorted(d.key for d in StaLtaPicker(INFO).feed(t0, 1.0, data))
    assert expected
    registry = tmp_path / "registry.csv"
    registry.write_text("station_id,kind,lat,lon,elevation_m,units,file,format\n"
                        f"{LHZ},seismic,{INFO.lat},{INFO.lon},800,counts,,\n")
    env = {**os.environ, "TOCSIN_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
           "TOCSIN_HOME": str(tmp_path / "home"),
           "TOCSIN_SESSION_TIMEOUT_MS": str(kafka_settings.session_timeout_ms)}
    run_id = "seedlink-e2e"
    procs = []
    for args in (["seedlink", f"127.0.0.1:{server_thread.port}", LHZ, "--run-id", run_id,
                  "--registry", str(registry)],
                 ["worker", "--run-id", run_id, "--registry", str(registry)]):
        log = open(tmp_path / f"{args[0]}.log", "wb")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen([sys.executable, "-m", "tocsin", *args], env=env,
                                      stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    topics = Topics.for_run(kafka_settings, run_id)

    # the detections topic in its order: picks, and the ingest's watermarks passed on
    sequence: list[Detection | dict] = []  # type: ignore[type-arg]

    async def picks() -> list[Detection]:
        consumer = AIOKafkaConsumer(topics.detections, bootstrap_servers=kafka_settings.bootstrap,
                                    auto_offset_reset="earliest", group_id=None,
                                    metadata_max_age_ms=1000)
        await consumer.start()
        got: list[Detection] = []
        try:
            deadline = time.monotonic() + 180
            while len(got) < len(expected) and time.monotonic() < deadline:
                for p in procs:
                    assert p.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                batch = await consumer.getmany(timeout_ms=2000)
                for msgs in batch.values():
                    for m in msgs:
                        if m.key != b"control":
                            msg = decode(m.value)
                            assert isinstance(msg, Detection)
                            got.append(msg)
                            sequence.append(msg)
                        else:
                            sequence.append(json.loads(m.value))
        finally:
            await consumer.stop()
        return got

    try:
        got = asyncio.run(picks())
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    assert sorted(d.key for d in got) == expected
    assert all(d.lat == INFO.lat for d in got)
    # the watermarks release the picks to the association, as a replay's do
    from streams.app import WatermarkGate

    gate, released, marks = WatermarkGate(), [], {}
    for item in sequence:
        if isinstance(item, Detection):
            gate.add(item)
        else:
            assert item["type"] == "watermark" and item["partitions"] == 4
            marks[item["partition"]] = item["time"]
            released += gate.control(item)
    assert sorted(marks) == [0, 1, 2, 3], "a watermark from every partition"
    passed = min(marks.values())
    assert released and sorted(d.key for d in released) == sorted(
        d.key for d in got if d.declared <= passed)


@pytest.mark.kafka
def test_a_restarted_ingest_resumes_from_its_state_file(records: list[bytes], kafka_settings,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.schemas import ObservationPacket, decode
    from streams.topics import Topics, create_topics

    topics = Topics.for_run(kafka_settings, "seedlink-restart", 1)
    state = tmp_path / "state.json"

    async def ingest_once(limit: int | None) -> tuple[int, list[str]]:
        async with SeedLinkServer(records) as srv:
            client = SeedLinkClient("127.0.0.1", srv.port, [LHZ], fetch=True)
            ingest = Ingest(client, {LHZ: INFO}, state_file=state, save_every=7)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap,
                                        acks="all", enable_idempotence=True)
            await producer.start()
            try:
                n = await ingest.run(producer, topics.observations, topics.deadletter, limit)
            finally:
                await producer.stop()
            return n, list(srv.commands)

    async def main() -> tuple[int, int, list[str], list[int]]:
        await create_topics(kafka_settings.bootstrap, topics)
        first, _ = await ingest_once(100)   # stops after 100 records, like a crash would
        second, commands = await ingest_once(None)  # a new process: reads the state file
        consumer = AIOKafkaConsumer(topics.observations,
                                    bootstrap_servers=kafka_settings.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        seqs: list[int] = []
        try:
            while len(seqs) < len(records):
                batch = await consumer.getmany(timeout_ms=5000)
                assert batch, f"stalled at {len(seqs)} packets"
                for msgs in batch.values():
                    for m in msgs:
                        msg = decode(m.value)
                        assert isinstance(msg, ObservationPacket)
                        seqs.append(msg.seq)
        finally:
            await consumer.stop()
        return first, second, commands, seqs

    first, second, commands, seqs = asyncio.run(main())
    assert (first, second) == (100, len(records) - 100)
    assert "FETCH 000065" in commands  # resumed at record 101 (0x65)
    assert sorted(seqs) == list(range(1, len(records) + 1))  # nothing lost, nothing twice
    assert json.loads(state.read_text())["last_seq"] == {"II.MSVF": len(records)}


class _Client:
    """A SeedLink client that hands over ``records`` once, numbered from 1."""

    host, port = "loopback", 18000

    def __init__(self, records: list[bytes]) -> None:
        self.records = records
        self.last_seq: dict[str, int] = {}

    async def packets(self):  # type: ignore[no-untyped-def]
        for seq, rec in enumerate(self.records, start=1):
            yield seq, rec


def test_state_file_keeps_only_what_kafka_acknowledged(records: list[bytes],
                                                       tmp_path: Path) -> None:
    """Sends are pipelined; when one fails, the state file stops before it, even if
    later records of the station were acknowledged (a restart fetches it again)."""

    class Producer:
        n = 0

        async def send(self, topic, value, key=None, partition=None):  # type: ignore[no-untyped-def]
            self.n += 1
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            if self.n == 2:  # the broker rejects the second record
                loop.call_later(0.01, fut.set_exception, RuntimeError("send #2 failed"))
            else:
                loop.call_later(0.02, fut.set_result, None)
            return fut

    state = tmp_path / "state.json"
    ingest = Ingest(_Client(records[:3]), state_file=state)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="send #2 failed"):
        asyncio.run(ingest.run(Producer(), "obs", "dlq"))
    (station,) = json.loads(state.read_text())["last_seq"]
    assert json.loads(state.read_text())["last_seq"] == {station: 1}


class _Producer:
    """Takes every send at once; ``sent`` holds (key, partition, value) in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, int | None, bytes]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send(self, topic, value, key=None, partition=None):  # type: ignore[no-untyped-def]
        self.sent.append((key, partition, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_watermarks_follow_the_newest_record_on_every_partition(records: list[bytes]) -> None:
    """Without watermarks from the ingest, the workers' association would hold every live
    detection for ever. Each mark is the newest record's end less the lag, goes to every
    partition after the records before it, and comes when the mark has moved on by the
    step."""
    from streams.app import _is_control

    producer = _Producer()
    ingest = Ingest(_Client(records[:60]))  # type: ignore[arg-type]
    assert asyncio.run(ingest.run(producer, "obs", "dlq", watermark_lag_s=600.0,
                                  watermark_every_s=1800.0)) == 60
    newest, marks, i = -math.inf, [], 0
    while i < len(producer.sent):
        key, partition, value = producer.sent[i]
        ctl = _is_control(value)
        if ctl is None:
            assert key != b"control" and partition is None
            newest = max(newest, decode(value).end)  # type: ignore[union-attr]
            i += 1
            continue
        # one mark to each partition in a row, at the newest end so far less the lag
        group = [producer.sent[i + k] for k in range(3)]
        assert [(k, p) for k, p, _ in group] == [(b"control", 0), (b"control", 1),
                                                 (b"control", 2)]
        assert all(v == value for _, _, v in group)
        assert ctl["type"] == "watermark" and ctl["partitions"] == 3
        assert ctl["time"] == newest - 600.0
        marks.append(ctl["time"])
        i += 3
    assert len(marks) >= 3, marks
    assert all(b - a >= 1800.0 for a, b in zip(marks, marks[1:], strict=False))
    assert newest - 600.0 - marks[-1] < 1800.0  # the last one is at most a step behind
    # without a lag, none
    producer = _Producer()
    asyncio.run(Ingest(_Client(records[:60])).run(producer, "obs", "dlq"))  # type: ignore[arg-type]
    assert all(_is_control(v) is None for _, _, v in producer.sent)


def test_a_silent_feed_moves_the_watermarks_on_by_the_clock(records: list[bytes]) -> None:
    """When the feed stops, the detections of its last ``lag`` seconds must still reach the
    association. After ``lag`` seconds of the clock with no record the marks follow the
    clock, less the lag; a backlog that comes later never takes them back."""
    from streams.app import _is_control

    resume = asyncio.Event()

    class Client(_Client):
        async def packets(self):  # type: ignore[no-untyped-def]
            for seq, rec in enumerate(self.records, start=1):
                if seq == 6:
                    await resume.wait()  # silent until told
                yield seq, rec

    first, backlog = records[:5], records[5:8]
    newest = max(record_to_packet(r, i, {}, "test").end for i, r in enumerate(first))
    now = [newest + 30.0]  # the records came 30 s after their last sample
    looked = [0]  # how often the ingest has read the clock (each idle tick reads it)

    def clock() -> float:
        looked[0] += 1
        return now[0]

    producer = _Producer()
    ingest = Ingest(Client(first + backlog), clock=clock)  # type: ignore[arg-type]

    async def ticks(n: int) -> None:
        """Until the ingest has looked at the clock ``n`` more times."""
        start = looked[0]
        for _ in range(2000):
            if looked[0] >= start + n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"the clock was read {looked[0] - start} times, not {n}")

    def marks() -> list[float]:
        out = []
        for _, _, v in producer.sent:
            ctl = _is_control(v)
            if ctl is not None:
                out.append(ctl["time"])
        return out

    def data() -> int:
        return sum(_is_control(v) is None for _, _, v in producer.sent)

    async def main() -> None:
        run = asyncio.ensure_future(ingest.run(producer, "obs", "dlq", watermark_lag_s=600.0,
                                               watermark_every_s=0.01))
        while data() < 5:
            await asyncio.sleep(0.005)
        by_records = marks()
        assert by_records and by_records[-1] == newest - 600.0
        now[0] = newest + 30.0 + 599.0  # silent for less than the lag: nothing new
        await ticks(3)
        assert marks() == by_records
        now[0] = newest + 30.0 + 700.0  # silent for longer: a mark at the clock less the lag
        await ticks(3)
        idle = marks()[len(by_records):]
        assert idle == [newest + 130.0] * 3, idle  # one to each partition
        assert [p for _, p, _ in producer.sent[-3:]] == [0, 1, 2]
        now[0] += 50.0  # and on with the clock
        await ticks(3)
        assert marks()[-1] == newest + 180.0
        # the feed resumes with the server's backlog, older than the marks: they stay
        mark_count = len(marks())
        resume.set()
        assert await run == 8
        assert marks()[mark_count:] == [] or min(marks()[mark_count:]) > newest + 180.0
        assert sorted(marks()) == marks()  # never backwards
        # the clock's marks end with the run: no tick reads the clock any more (in the time
        # that took ten of them above)
        done, read = len(producer.sent), looked[0]
        now[0] += 5000.0
        await asyncio.sleep(0.1)
        assert len(producer.sent) == done and looked[0] == read

    asyncio.run(main())


def test_sequence_numbers_wrap_after_ffffff(records: list[bytes]) -> None:
    """Sequence numbers are six hex digits; a server numbering ring-wide wraps within days.
    After FFFFFF comes 000000: new records, not duplicates (every record after the wrap
    was dropped as sent again); a record sent again is still one, 000000 included."""
    from streams.seedlink import DUPLICATE, seq_after

    assert seq_after(0x000000, 0xFFFFFF) == 1 and seq_after(0x000002, 0xFFFFFE) == 4
    assert seq_after(0xFFFFFF, 0x000000) == 0 and seq_after(5, 5) == 0
    assert seq_after(6, 5) == 1 and seq_after(4, 5) == 0

    def rec() -> bytes:
        r = bytearray(b" " * 512)
        r[8:13], r[13:15], r[15:18], r[18:20] = b"MSVF ", b"10", b"LHZ", b"II"
        return bytes(r)

    sent = (0xFFFFFE, 0xFFFFFF, 0x000000, 0x000001, 0x000000, 0xFFFFFF, 0x000003)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (cmd := (await reader.readuntil(b"\r")).strip()) != b"END":
            writer.write(b"SeedLink v3.1\r\nfake\r\n" if cmd == b"HELLO" else b"OK\r\n")
        for seq in sent:
            writer.write(b"SL%06X" % seq + rec())
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> list[int]:
        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        client = SeedLinkClient("127.0.0.1", port, [LHZ], timeout=2)
        got: list[int] = []
        try:
            async for seq, _ in client.packets():
                got.append(seq)
                if len(got) == len(sent):
                    break
        finally:
            srv.close()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 10))
    assert got == [0xFFFFFE, 0xFFFFFF, 0, 1, DUPLICATE, DUPLICATE, 3]
    # the ingest counts a duplicate, and the numbers skipped across the wrap as a gap
    ingest = Ingest(_Client([]))  # type: ignore[arg-type]
    assert ingest.packet(0xFFFFFF, records[0]) is not None
    assert ingest.packet(DUPLICATE, records[0]) is None
    assert ingest.packet(0x000002, records[1]) is not None
    m = ingest.metrics[LHZ]
    assert (m.records, m.duplicates, m.seq_gaps) == (2, 1, 2)


def test_a_record_far_ahead_of_the_clock_is_dead_lettered(records: list[bytes]) -> None:
    """A record stamped in the future (a station's timing fault: a header year of 2198)
    carried the watermarks there, after which no mark could pass and the gate held every
    later detection for ever. One that ends more than ``max_ahead_s`` after the ingest's
    clock goes to the dead-letter topic with the reason; the others go on."""
    from streams.app import _is_control

    ends = [record_to_packet(r, i, {}, "test").end for i, r in enumerate(records[:6])]
    clock = ends[2] - 300.0  # records 0-2 end before the clock + 600 s, the rest after
    ahead = [e > clock + 600.0 for e in ends]
    assert any(ahead) and not all(ahead), ends
    producer = _Producer()
    ingest = Ingest(_Client(records[:6]), clock=lambda: clock)  # type: ignore[arg-type]
    sent = asyncio.run(ingest.run(producer, "obs", "dlq", watermark_lag_s=600.0))
    assert sent == ahead.count(False) and ingest.bad == ahead.count(True)
    letters = [json.loads(v) for _, _, v in producer.sent
               if _is_control(v) is None and b"tocsin.deadletter/1" in v]
    assert len(letters) == ahead.count(True)
    assert all("after the ingest's clock" in d["reason"] and "timing fault" in d["reason"]
               for d in letters), letters[0]["reason"]
    marks = [_is_control(v)["time"] for _, _, v in producer.sent if _is_control(v)]
    assert max(marks) <= clock  # the marks stay behind the clock


def test_the_client_is_closed_however_the_ingest_loop_ends(records: list[bytes]) -> None:
    """With a limit (or a failed send) the loop left the client's generator open, and its
    connection with it, until the garbage collector came by."""
    closed: list[bool] = []

    class Client(_Client):
        async def packets(self):  # type: ignore[no-untyped-def]
            try:
                for seq, rec in enumerate(self.records, start=1):
                    yield seq, rec
            finally:
                closed.append(True)

    ingest = Ingest(Client(records[:10]))  # type: ignore[arg-type]

    async def main() -> tuple[int, list[bool]]:
        n = await ingest.run(_Producer(), "obs", "dlq", limit=3)
        return n, list(closed)  # before the loop's shutdown closes what is left open

    assert asyncio.run(main()) == (3, [True])


def test_a_bad_state_file_is_a_seedlink_error_naming_it(tmp_path: Path) -> None:
    """It was a ValueError, which the command printed as a traceback."""
    from streams.seedlink import SeedLinkError

    state = tmp_path / "state.json"
    state.write_text('{"last_seq": [1, 2]}')
    with pytest.raises(SeedLinkError, match=f"{state}: not a SeedLink state file"):
        Ingest(_Client([]), state_file=state)  # type: ignore[arg-type]
    # a folder: found at the first save before, as an
    # IsADirectoryError traceback after records had gone out
    with pytest.raises(SeedLinkError, match="must be a file in a folder this process can"):
        Ingest(_Client([]), state_file=tmp_path)  # type: ignore[arg-type]
    assert Ingest(_Client([]), state_file=tmp_path / "new" / "s.json").acked == {}  # type: ignore[arg-type]
