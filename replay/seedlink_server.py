"""A SeedLink 3.1 server on loopback that serves miniSEED records (tests and ops drills).

It speaks the protocol on the wire as a real SeedLink server does for a multi-station
client: ``HELLO``; per station ``STATION sta net``, ``SELECT LLCCC[.T]`` (``?``
wildcards), ``DATA [seq [time]]`` or ``FETCH [seq [time]]``; then ``END``, after which it
streams packets of an 8-byte header (``SL`` and the 6-hex-digit sequence number) and one
512-byte miniSEED record. Sequence numbers count the records of each station from 1, so a
client that reconnects with ``DATA <last + 1>`` resumes without gap or duplicate. After
``FETCH`` it sends what it has, then ``END``, and closes; after ``DATA`` it keeps the
connection open and sends records as they are appended (``append``). ``BYE`` closes.

The records are the input miniSEED re-packed into 512-byte Steim-2 records (SeedLink 3
carries 512-byte records), in start-time order per station.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streams.seedlink import record_stream_id

HEADER = b"SeedLink v3.1 (tocsin replay server) :: SLPROTO:3.1 CAP EXTREPLY NSWILDCARD"


def records_512(paths: Iterable[Path]) -> list[bytes]:
    """The traces of miniSEED files as 512-byte Steim-2 records, in start-time order."""
    import numpy as np
    from obspy import Stream, read

    st = Stream()
    for p in paths:
        st += read(str(p))
    st.merge(method=-1)
    out: list[tuple[float, str, bytes]] = []
    for tr in st.split():  # masked gaps become separate traces
        tr.data = np.asarray(tr.data, dtype=np.int32)
        buf = io.BytesIO()
        tr.write(buf, format="MSEED", reclen=512, encoding="STEIM2")
        raw = buf.getvalue()
        for i in range(0, len(raw), 512):
            out.append((tr.stats.starttime.timestamp + 0.0, tr.id, raw[i:i + 512]))
    out.sort(key=lambda x: (x[1], x[0]))
    return [r for _, _, r in out]


def record_ids(rec: bytes) -> tuple[str, str, str, str]:
    """(network, station, location, channel) from a miniSEED fixed header."""
    net, sta, loc, cha = record_stream_id(rec).split(".")
    return net, sta, loc, cha


@dataclass
class _Request:
    station: str
    network: str
    selectors: list[str] = field(default_factory=list)
    start_seq: int = 1

    def wants(self, rec: bytes) -> bool:
        net, sta, loc, cha = record_ids(rec)
        if not (fnmatch.fnmatchcase(sta, self.station) and fnmatch.fnmatchcase(net, self.network)):
            return False
        if not self.selectors:
            return True
        code = f"{loc:>2}{cha}".replace(" ", "?")
        for sel in self.selectors:
            pattern = sel.split(".")[0]
            pattern = pattern if len(pattern) == 5 else f"??{pattern}"  # "LHZ" = "??LHZ"
            if fnmatch.fnmatchcase(code, pattern.replace(" ", "?")):
                return True
        return False


class SeedLinkServer:
    """``async with SeedLinkServer(records) as srv: ... srv.port ...``"""

    def __init__(self, records: Iterable[bytes] = (), host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.host, self.port = host, port
        self.by_station: dict[tuple[str, str], list[bytes]] = {}
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.commands: list[str] = []
        self.append(records)

    def append(self, records: Iterable[bytes]) -> None:
        """New records (a live feed): connected DATA clients receive them."""
        for rec in records:
            if len(rec) != 512:
                raise ValueError(f"SeedLink 3 carries 512-byte records, got {len(rec)} bytes")
            net, sta, _, _ = record_ids(rec)
            self.by_station.setdefault((net, sta), []).append(rec)
        self._changed.set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> SeedLinkServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def drop_connections(self) -> None:
        """Cut every client connection (as a network failure does)."""
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._session(reader, writer)
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._tasks.discard(task)

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        requests: list[_Request] = []
        current: _Request | None = None
        fetch = False
        try:
            while True:
                line = await reader.readuntil(b"\r")
                cmd = line.strip().decode("ascii", "replace")
                if not cmd:
                    continue
                self.commands.append(cmd)
                words = cmd.split()
                verb = words[0].upper()
                if verb == "HELLO":
                    writer.write(HEADER + b"\r\ntocsin\r\n")
                elif verb == "STATION" and len(words) >= 2:
                    current = _Request(words[1], words[2] if len(words) > 2 else "*")
                    requests.append(current)
                    writer.write(b"OK\r\n")
                elif verb == "SELECT" and current is not None:
                    if len(words) > 1:
                        current.selectors.append(words[1])
                    writer.write(b"OK\r\n")
                elif verb in ("DATA", "FETCH") and current is not None:
                    fetch = verb == "FETCH"
                    if len(words) > 1:
                        try:
                            current.start_seq = int(words[1], 16)
                        except ValueError:
                            writer.write(b"ERROR\r\n")
                            continue
                    writer.write(b"OK\r\n")
                elif verb == "END":
                    await self._stream(reader, writer, requests, fetch)
                    return
                elif verb == "BYE":
                    return
                else:
                    writer.write(b"ERROR\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      requests: list[_Request], fetch: bool) -> None:
        sent: dict[tuple[str, str], int] = {}  # records of each station already considered
        # what the client sends while streaming (keep-alive INFO) is read and ignored; an
        # empty read means it has gone
        incoming = asyncio.ensure_future(reader.read(256))
        try:
            while True:
                changed = self._changed
                for key, recs in self.by_station.items():
                    for i in range(sent.get(key, 0), len(recs)):
                        seq, rec = i + 1, recs[i]
                        if any(seq >= req.start_seq and req.wants(rec) for req in requests):
                            writer.write(b"SL%06X" % (seq & 0xFFFFFF) + rec)
                    sent[key] = len(recs)
                    await writer.drain()
                if fetch:
                    writer.write(b"END")
                    await writer.drain()
                    return
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait({waiter, incoming}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if incoming.done():
                    if not incoming.result():
                        return
                    incoming = asyncio.ensure_future(reader.read(256))
        finally:
            incoming.cancel()
