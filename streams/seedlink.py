"""SeedLink 3.1 ingest: selected ``NET.STA.LOC.CHA`` streams into Kafka as observation packets.

:class:`SeedLinkClient` is a multi-station SeedLink client on asyncio (the protocol is a
few ASCII commands and then 520-byte packets; ObsPy 1.5.1's ``create_client`` is broken).
It keeps the last sequence number of every station; when the connection fails it
reconnects (with backoff) and asks each station for ``DATA <last + 1>``, so it resumes
without gap or duplicate; a packet the server sends again anyway is dropped by number.

:func:`ingest` decodes each record with ObsPy into an :class:`ObservationPacket` (one
packet per record: hundreds of samples, never one sample per message) with the station's
coordinates from a StationXML inventory or the station registry, and produces it to the
observation topic (``acks=all``, idempotent). A record that does not decode goes to the
dead-letter topic with the reason; ingest goes on. Watermarks (the newest record's end less
``TOCSIN_INGEST_WATERMARK_LAG_S``) go to every partition as the data move on, so that the
workers' association takes the detections in event-time order, as a replay's does; without
them it would hold every detection. :class:`StreamMetrics` keeps per stream
the latency (wall clock minus the end of the last record), records, samples, sequence gaps
(records the server no longer had), time gaps and duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import StationInfo
from streams.schemas import ObservationPacket, encode, iso
from streams.topics import control

log = logging.getLogger(__name__)

PACKET = 520  # 8-byte SeedLink header + 512-byte miniSEED record
SEQ_MOD = 1 << 24  # sequence numbers are 6 hex digits: after FFFFFF comes 000000
DUPLICATE = -1  # what ``SeedLinkClient.packets`` yields for the number of a record sent again


def seq_after(seq: int, last: int) -> int:
    """How many numbers ``seq`` comes after ``last``, modulo the wrap at FFFFFF; 0 if it is
    ``last`` or comes before it (within half the range)."""
    ahead = (seq - last) % SEQ_MOD
    return ahead if ahead < SEQ_MOD // 2 else 0


class SeedLinkError(RuntimeError):
    """The server refused a command or spoke something that is not SeedLink."""


class SeedLinkPacketError(SeedLinkError):
    """A packet header that is not ``SL`` and six hex digits: the stream is out of step,
    so the client treats it as a broken connection (reconnects and resumes)."""


_HEADER = re.compile(rb"SL[0-9A-Fa-f]{6}")


def packet_sequence(pkt: bytes) -> int:
    """The sequence number of a SeedLink packet (raises :class:`SeedLinkPacketError`)."""
    if not _HEADER.fullmatch(pkt[:8]):
        raise SeedLinkPacketError(f"bad SeedLink packet header {pkt[:8]!r} (expected SL and "
                                  "a 6-hex-digit sequence number)")
    return int(pkt[2:8], 16)


def parse_stream_id(text: str) -> tuple[str, str, str, str]:
    """``NET.STA.LOC.CHA`` (``?`` and ``*`` allowed in LOC and CHA) into its four codes."""
    parts = text.split(".")
    if len(parts) != 4 or not parts[0] or not parts[1] or not parts[3]:
        raise ValueError(f"stream {text!r} is not NET.STA.LOC.CHA (e.g. II.MSVF.10.LHZ)")
    if any(c in "*?" for c in parts[0] + parts[1]):
        # the client resumes each station at its last sequence number: a pattern names no
        # station, so it reconnected with a bare DATA and lost what came during the outage
        raise ValueError(f"stream {text!r}: a network and station are codes, not patterns "
                         "(? and * only in LOC and CHA)")
    return parts[0], parts[1], parts[2], parts[3]


def _writable_dir(folder: Path) -> bool:
    """Whether ``folder`` (or the nearest folder above it that exists, where it would be
    made) is a folder this process can write."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


@dataclass
class StreamMetrics:
    records: int = 0
    samples: int = 0
    duplicates: int = 0
    seq_gaps: int = 0        # records missing between sequence numbers
    time_gaps: int = 0
    gap_seconds: float = 0.0
    latency_s: float = math.nan
    last_end: float = math.nan
    dt: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in self.__dict__.items()}


@dataclass
class SeedLinkClient:
    host: str
    port: int
    streams: list[str]
    timeout: float = 60.0
    reconnect_delay: float = 1.0
    max_reconnect_delay: float = 30.0
    fetch: bool = False  # dial-up: stop at the server's END instead of waiting for more
    last_seq: dict[str, int] = field(default_factory=dict)  # "NET.STA" -> last sequence
    connections: int = 0

    def __post_init__(self) -> None:
        self._wanted = [parse_stream_id(s) for s in self.streams]
        if not self._wanted:
            raise ValueError("no SeedLink stream selected")

    async def _command(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       cmd: str) -> str:
        writer.write(cmd.encode("ascii") + b"\r")
        await writer.drain()
        reply = (await asyncio.wait_for(reader.readuntil(b"\r\n"), self.timeout)).decode()
        if cmd == "HELLO":
            reply += (await asyncio.wait_for(reader.readuntil(b"\r\n"), self.timeout)).decode()
            if not reply.lower().startswith("seedlink"):
                raise SeedLinkError(f"{self.host}:{self.port} is not a SeedLink server: "
                                    f"{reply.strip()!r}")
        elif reply.strip() != "OK":
            raise SeedLinkError(f"{self.host}:{self.port} refused {cmd!r}: {reply.strip()!r}")
        return reply

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout)
        self.connections += 1
        await self._command(reader, writer, "HELLO")
        by_station: dict[tuple[str, str], list[str]] = {}
        for net, sta, loc, cha in self._wanted:
            by_station.setdefault((net, sta), []).append(f"{loc:?<2}{cha}".replace("*", "?"))
        action = "FETCH" if self.fetch else "DATA"
        for (net, sta), selectors in by_station.items():
            await self._command(reader, writer, f"STATION {sta} {net}")
            for sel in selectors:
                await self._command(reader, writer, f"SELECT {sel}")
            last = self.last_seq.get(f"{net}.{sta}")
            resume = f" {(last + 1) % SEQ_MOD:06X}" if last is not None else ""
            await self._command(reader, writer, action + resume)
        writer.write(b"END\r")
        await writer.drain()
        return reader, writer

    async def packets(self) -> AsyncGenerator[tuple[int, bytes], None]:
        """(sequence number, 512-byte record), forever (or to END with ``fetch``); a record
        the server sent again has the number :data:`DUPLICATE`. Numbers wrap after FFFFFF.

        A failed connection, a timeout or a packet with a bad header close the connection;
        the client reconnects (the delay doubles up to ``max_reconnect_delay`` until a good
        packet comes) and resumes after each station's last good sequence number. A
        server that refuses the handshake raises :class:`SeedLinkError`."""
        delay = self.reconnect_delay
        while True:
            writer = None
            try:
                reader, writer = await self._connect()
                while True:
                    head = await asyncio.wait_for(reader.readexactly(3), self.timeout)
                    if head == b"END" and self.fetch:
                        return
                    rest = await asyncio.wait_for(reader.readexactly(PACKET - 3), self.timeout)
                    pkt = head + rest
                    if pkt[:6] == b"SLINFO":
                        continue
                    seq = packet_sequence(pkt)
                    delay = self.reconnect_delay  # the connection works
                    rec = pkt[8:]
                    key = record_stream_id(rec).rsplit(".", 2)[0]
                    last = self.last_seq.get(key)
                    if last is not None and not seq_after(seq, last):
                        yield DUPLICATE, rec  # sent again: the caller counts, never re-emits
                        continue
                    self.last_seq[key] = seq
                    yield seq, rec
            except (TimeoutError, OSError, asyncio.IncompleteReadError,
                    SeedLinkPacketError) as exc:
                log.warning("SeedLink %s:%s: %s; reconnecting in %.1f s", self.host, self.port,
                            exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, self.max_reconnect_delay)
            finally:
                if writer is not None:
                    writer.close()


def record_stream_id(rec: bytes) -> str:
    """``NET.STA.LOC.CHA`` from a miniSEED record's fixed header."""
    return ".".join(rec[a:b].decode("ascii", "replace").strip()
                    for a, b in ((18, 20), (8, 13), (13, 15), (15, 18)))


#: the highest sampling rate a record may claim: seismometers and infrasound sensors
#: record at up to a few hundred Hz; a corrupt rate factor claimed a GHz
MAX_SAMPLING_RATE_HZ = 10_000.0


def record_to_packet(rec: bytes, seq: int, stations: dict[str, StationInfo],
                     source: str) -> ObservationPacket:
    """One 512-byte miniSEED record as an observation packet (raises ValueError)."""
    from obspy import read

    try:
        st = read(io.BytesIO(rec), format="MSEED")
    except Exception as exc:  # obspy raises many types for a bad record
        raise ValueError(f"record #{seq}: not miniSEED ({exc})") from exc
    if len(st) != 1:
        raise ValueError(f"record #{seq}: {len(st)} traces in one record")
    tr = st[0]
    if tr.stats.npts == 0:  # a header that says samples and a data offset of 0, say
        raise ValueError(f"record #{seq} ({tr.id}): no samples could be read from it")
    if not 0 < tr.stats.sampling_rate <= MAX_SAMPLING_RATE_HZ:
        raise ValueError(f"record #{seq} ({tr.id}): sampling rate {tr.stats.sampling_rate!r} "
                         f"Hz is not that of a sensor (0 < rate <= {MAX_SAMPLING_RATE_HZ:g})")
    info = stations.get(tr.id)
    return ObservationPacket(
        station_id=tr.id, kind="seismic", channel=tr.stats.channel,
        start=tr.stats.starttime.timestamp, sample_interval=tr.stats.delta,
        values=np.asarray(tr.data, dtype=np.float64), units="counts", source=source,
        seq=seq, lat=info.lat if info else math.nan, lon=info.lon if info else math.nan,
        elevation_m=info.elevation_m if info else math.nan)


def stations_from_inventory(path: str) -> dict[str, StationInfo]:
    """``NET.STA.LOC.CHA`` -> coordinates, from an FDSN StationXML file."""
    from obspy import read_inventory

    out = {}
    for net in read_inventory(path):
        for sta in net:
            for cha in sta:
                sid = f"{net.code}.{sta.code}.{cha.location_code}.{cha.code}"
                out[sid] = StationInfo(sid, "seismic", cha.latitude, cha.longitude,
                                       cha.elevation or 0.0, "counts")
    return out


@dataclass
class Ingest:
    """SeedLink -> Kafka. ``metrics`` per ``NET.STA.LOC.CHA``; ``bad`` records dead-lettered.

    With ``state_file`` the last sequence number Kafka acknowledged for each station is
    saved (every ``save_every`` records and at the end) and read back on start, so a
    restarted ingest resumes where the last one stopped; records sent again after a crash
    are skipped downstream (the detectors drop packets they have seen).
    """

    client: SeedLinkClient
    stations: dict[str, StationInfo] = field(default_factory=dict)
    metrics: dict[str, StreamMetrics] = field(default_factory=dict)
    bad: int = 0
    clock: Callable[[], float] = time.time
    prev_seq: dict[str, int] = field(default_factory=dict)  # "NET.STA" -> last accounted
    state_file: Path | None = None
    save_every: int = 50
    acked: dict[str, int] = field(default_factory=dict)  # "NET.STA" -> last in Kafka
    #: a record ending further than this after the clock is a timing fault, dead-lettered:
    #: its time would carry the watermarks (and the station's detectors) years ahead
    max_ahead_s: float = 600.0

    def __post_init__(self) -> None:
        f = self.state_file
        if f is not None and (f.exists() and not f.is_file() or not _writable_dir(f.parent)):
            # found out at the first save before, as a traceback, after records had gone out
            raise SeedLinkError(f"{f}: the state file must be a file in a folder this "
                                "process can write")
        if f is not None and f.is_file():
            try:
                saved = json.loads(f.read_text())
                self.acked = {str(k): int(v) for k, v in saved["last_seq"].items()}
            except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
                # SeedLinkError: the command says it in one line (a ValueError was a traceback)
                raise SeedLinkError(f"{self.state_file}: not a SeedLink state file "
                                    f"({exc})") from exc
            self.client.last_seq.update(self.acked)

    def save_state(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"server": f"{self.client.host}:{self.client.port}",
                                   "last_seq": self.acked}, sort_keys=True))
        tmp.replace(self.state_file)

    def packet(self, seq: int, rec: bytes) -> ObservationPacket | None:
        """Decode and account one record; None for a duplicate (raises ValueError)."""
        sid = record_stream_id(rec)
        if seq < 0:
            self.metrics.setdefault(sid, StreamMetrics()).duplicates += 1
            return None
        station = sid.rsplit(".", 2)[0]
        prev = self.prev_seq.get(station)
        self.prev_seq[station] = seq
        pkt = record_to_packet(rec, seq, self.stations,
                               f"seedlink://{self.client.host}:{self.client.port}")
        now = self.clock()
        if pkt.end > now + self.max_ahead_s:
            raise ValueError(f"{pkt.station_id}: record #{seq} ends at {iso(pkt.end)}, "
                             f"{pkt.end - now:.0f} s after the ingest's clock ({iso(now)}); "
                             f"more than {self.max_ahead_s:.0f} s is a timing fault")
        m = self.metrics.setdefault(pkt.station_id, StreamMetrics())
        ahead = seq_after(seq, prev) if prev is not None else 0
        if ahead > 1:
            m.seq_gaps += ahead - 1
        if m.records and not math.isnan(m.last_end):
            expected = m.last_end + m.dt
            if pkt.start - expected > 0.5 * pkt.sample_interval:
                m.time_gaps += 1
                m.gap_seconds += pkt.start - expected
        m.records += 1
        m.samples += len(pkt.values)
        m.dt = pkt.sample_interval
        m.last_end = pkt.end
        m.latency_s = now - pkt.end
        return pkt

    async def run(self, producer: Any, topic: str, deadletter: str,
                  limit: int | None = None, in_flight: int = 500,
                  watermark_lag_s: float | None = None, watermark_every_s: float = 10.0
                  ) -> int:
        """Produce packets until ``limit`` records (or forever); the number produced.

        Sends are pipelined (up to ``in_flight`` unacknowledged); a station's sequence
        number counts as acknowledged, for the state file, once Kafka has acknowledged its
        record and every record sent before it.

        With ``watermark_lag_s``, a ``watermark`` control message goes to every partition
        of ``topic`` each time the newest record's end, less the lag, has moved on by
        ``watermark_every_s``: the workers' association takes the detections before it in
        event-time order (a station whose records come later than the lag behind the
        newest is late there, and its detections are associated late).

        When no record has come for ``watermark_lag_s`` of the clock (the feed stopped, or
        the link to the server is down), the marks follow the clock instead, at its time
        less the lag, every ``watermark_every_s``: the detections already made reach the
        association then, rather than when the feed resumes. Records that come after such
        a mark has passed them (a server's backlog after a reconnection) are late."""
        sent = 0
        pending: deque[tuple[str, int, asyncio.Future[Any]]] = deque()
        partitions = (sorted(await producer.partitions_for(topic))
                      if watermark_lag_s is not None else [])
        newest = last_mark = -math.inf
        last_seen = self.clock()
        marking = asyncio.Lock()

        def settle() -> None:
            while pending and pending[0][2].done():
                station, seq, fut = pending[0]
                fut.result()  # a failed send raises here, and stays first: nothing after
                pending.popleft()  # it counts as acknowledged
                if station:  # (not a watermark)
                    self.acked[station] = seq

        async def send(station: str, seq: int, value: bytes, out: str, key: bytes | None,
                       partition: int | None = None) -> None:
            fut = await producer.send(out, value, key=key, partition=partition)
            pending.append((station, seq, fut))
            settle()
            while len(pending) >= in_flight:
                await asyncio.wait([pending[0][2]])
                settle()

        async def advance(t: float) -> None:
            nonlocal last_mark
            async with marking:  # one mark at a time: each goes to every partition in turn
                if t < last_mark + watermark_every_s:
                    return
                last_mark = t
                mark = control("watermark", time=t, partitions=len(partitions))
                for p in partitions:  # after every record sent before it, on each partition
                    await send("", -1, mark, topic, b"control", partition=p)

        async def watermark(end: float) -> None:
            nonlocal newest
            newest = max(newest, end)
            if watermark_lag_s is not None:
                await advance(newest - watermark_lag_s)

        async def idle_marks(lag: float) -> None:
            while True:
                await asyncio.sleep(watermark_every_s)
                now = self.clock()
                if now - last_seen >= lag:
                    await advance(now - lag)

        idle = (asyncio.ensure_future(idle_marks(watermark_lag_s))
                if watermark_lag_s is not None else None)
        try:
            # closed however the loop ends (a limit, a failed send): the connection with it
            async with contextlib.aclosing(self.client.packets()) as records:
                async for seq, rec in records:
                    if idle is not None and idle.done():
                        idle.result()  # the clock's marks stopped: their send failed, raise it
                    last_seen = self.clock()
                    station = record_stream_id(rec).rsplit(".", 2)[0]
                    try:
                        pkt = self.packet(seq, rec)
                    except ValueError as exc:
                        self.bad += 1
                        log.warning("dead-letter SeedLink record #%s: %s", seq, exc)
                        await send(station, seq, json.dumps({
                            "schema": "tocsin.deadletter/1", "reason": str(exc),
                            "source": f"seedlink://{self.client.host}:{self.client.port}#{seq}",
                            "key": "", "value": rec.hex()}).encode(), deadletter, None)
                        continue
                    if pkt is not None:
                        await send(station, seq, encode(pkt), topic, pkt.station_id.encode())
                        sent += 1
                        await watermark(pkt.end)
                        if sent % self.save_every == 0:
                            self.save_state()
                    if limit is not None and sent >= limit:
                        break
            for _station, _seq, fut in list(pending):
                await asyncio.wait([fut])
            settle()
        finally:
            if idle is not None:
                idle.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await idle
            with contextlib.suppress(Exception):
                settle()
            self.save_state()
        return sent


def summary(metrics: dict[str, StreamMetrics]) -> dict[str, dict[str, Any]]:
    return {sid: m.as_dict() for sid, m in sorted(metrics.items())}


async def run_ingest(bootstrap: str, topic: str, deadletter: str, client: SeedLinkClient,
                     stations: dict[str, StationInfo], limit: int | None = None,
                     report_every: float = 60.0, state_file: Path | None = None,
                     watermark_lag_s: float | None = None) -> Ingest:
    """An :class:`Ingest` with its own idempotent producer; logs metrics periodically."""
    from aiokafka import AIOKafkaProducer

    ingest = Ingest(client, stations, state_file=state_file)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=True, linger_ms=5)
    await producer.start()

    async def report() -> None:
        while True:
            await asyncio.sleep(report_every)
            log.info("seedlink metrics %s", json.dumps(summary(ingest.metrics)))

    reporter = asyncio.ensure_future(report())
    try:
        await ingest.run(producer, topic, deadletter, limit,
                         watermark_lag_s=watermark_lag_s)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await producer.stop()
    return ingest
