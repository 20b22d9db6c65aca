"""Replay packages: a documented folder format for historic and synthetic events.

A package is a folder with

* ``event.toml``: an ``[event]`` table (``id``, ``title``, ``start``, ``end`` as ISO 8601
  UTC, the replay window), an optional ``[truth]`` table used only by evaluation and an
  optional ``[seismic]`` table: ``inventory`` (a file of the package that ObsPy's
  ``read_inventory`` reads: FDSN StationXML, or RESP) gives the seismic channels' responses
  (their gains for magnitudes) and the coordinates of seismic stations whose ``lat`` and
  ``lon`` are left empty in stations.csv; ``[seismic.gains]`` (station id = counts per metre
  of displacement in the picker's band) overrides the inventory's gains;
* ``stations.csv`` with the header ``station_id,kind,lat,lon,elevation_m,units,file,format``;
  ``file`` is relative to the package and ``format`` is ``csv`` (``time,value`` rows),
  ``mseed`` (miniSEED read by ObsPy), ``ndbc_dart`` (NOAA NDBC DART text, bottom pressure
  only) or ``grid_index`` (plume grids only, :mod:`replay.grids`); ``units`` must be one of
  the kind's (:data:`UNITS`): the detectors' thresholds assume them.

:func:`load_package` validates everything and raises :class:`PackageError` naming the
file, the line and the bad value. :meth:`ReplayPackage.packets` cuts each station's record
into observation packets of constant sample interval (a change of interval or a gap
starts a new packet) within the replay window; a station with no sample (or frame) in the
window is a :class:`PackageError` then, when its file is read.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detectors.base import SENSOR_KINDS, DetectorError, FloatArray, StationInfo
from streams.schemas import (
    GridFrame,
    ObservationPacket,
    SchemaError,
    iso,
    parse_time,
    station_id_problem,
)

STATIONS_HEADER = ["station_id", "kind", "lat", "lon", "elevation_m", "units", "file", "format"]
FORMATS = ("csv", "mseed", "ndbc_dart", "grid_index")
DEFAULT_UNITS = {"barometer": "hPa", "tide_gauge": "m", "bottom_pressure": "m",
                 "seismic": "counts", "plume": "m"}
#: the units each kind may give (the detectors' fixed thresholds assume them): hPa, or its
#: equal mbar, or the raw counts of a microbarometer channel (no amplitude floor, see
#: ``detectors/pressure.py``); metres of sea level or of water; seismic counts (the gains
#: are counts per metre); plume-top heights in metres
UNITS = {"barometer": ("hPa", "mbar", "counts"), "tide_gauge": ("m",),
         "bottom_pressure": ("m",), "seismic": ("counts",), "plume": ("m",)}
#: the formats each kind may come in
KIND_FORMATS = {"barometer": ("csv", "mseed"), "tide_gauge": ("csv", "mseed"),
                "bottom_pressure": ("csv", "mseed", "ndbc_dart"), "seismic": ("csv", "mseed"),
                "plume": ("grid_index",)}


class PackageError(ValueError):
    """A replay package is malformed; the message names the file, line and value."""


@dataclass(frozen=True)
class StationEntry:
    info: StationInfo
    file: Path
    format: str
    line: int


@dataclass(frozen=True)
class Series:
    """A station's record: sorted unique sample times (POSIX s) and values (NaN allowed)."""

    times: FloatArray
    values: FloatArray


@dataclass
class ReplayPackage:
    root: Path
    event_id: str
    title: str
    start: float
    end: float
    stations: list[StationEntry]
    truth: dict[str, Any] = field(default_factory=dict)
    raw_event: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)  # from [seismic] inventory

    def station_infos(self) -> list[StationInfo]:
        return [s.info for s in self.stations]

    @property
    def seismic_gains(self) -> dict[str, float]:
        """Counts per metre of displacement: the inventory's responses, then [seismic.gains]."""
        out = {sid: ch.gain_m for sid, ch in self.channels.items() if math.isfinite(ch.gain_m)}
        out.update(_gains(self.root / "event.toml", self.raw_event.get("seismic") or {}))
        return out

    def series(self, entry: StationEntry) -> Series:
        if entry.format == "grid_index":
            raise PackageError(f"{entry.file}: a grid index has frames, not a time series")
        readers = {"csv": read_csv_series, "mseed": read_mseed_series,
                   "ndbc_dart": read_ndbc_series}
        s = readers[entry.format](entry.file)
        keep = (s.times >= self.start) & (s.times <= self.end)
        if not np.isfinite(s.values[keep]).any():
            had = np.isfinite(s.values)
            span = (f"its samples run from {iso(float(s.times[had][0]))} to "
                    f"{iso(float(s.times[had][-1]))}" if had.any() else "it has none")
            raise PackageError(
                f"{self.root / 'stations.csv'}:{entry.line}: {entry.info.station_id}: "
                f"{entry.file} has no sample in the replay window {iso(self.start)} .. "
                f"{iso(self.end)} ({span})")
        return Series(s.times[keep], s.values[keep])

    def packets(self, entry: StationEntry,
                packet_seconds: float) -> list[ObservationPacket | GridFrame]:
        if entry.format == "grid_index":
            from replay.grids import GridError, read_frames

            try:
                frames = read_frames(entry.file, self.root, entry.info, self.start, self.end)
            except GridError as exc:
                raise PackageError(str(exc)) from exc
            if not frames:
                raise PackageError(
                    f"{self.root / 'stations.csv'}:{entry.line}: {entry.info.station_id}: "
                    f"{entry.file} has no frame in the replay window {iso(self.start)} .. "
                    f"{iso(self.end)}")
            return list(frames)
        s = self.series(entry)
        source = f"replay:{self.event_id}"
        return list(series_to_packets(entry.info, s, packet_seconds, source=source))


# --------------------------------------------------------------------------- loading


def load_package(path: str | Path) -> ReplayPackage:
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"{root}: not a folder (a replay package is a folder)")
    event_file = root / "event.toml"
    if not event_file.is_file():
        raise PackageError(f"{event_file}: missing (every package has an event.toml)")
    try:
        doc = tomllib.loads(utf8_text(event_file))
    except tomllib.TOMLDecodeError as exc:
        raise PackageError(f"{event_file}: not valid TOML: {exc}") from exc
    event = doc.get("event")
    if not isinstance(event, dict):
        raise PackageError(f"{event_file}: no [event] table")
    for key in ("id", "title", "start", "end"):
        if key not in event:
            raise PackageError(f"{event_file}: [event] has no {key!r}")
    for key in ("id", "title"):  # (a table became the title "{'a': 1}")
        if not isinstance(event[key], str):
            raise PackageError(f"{event_file}: [event] {key} = {event[key]!r} is not a "
                               "string")
    try:
        start = parse_time(str(event["start"]), "start")
        end = parse_time(str(event["end"]), "end")
    except SchemaError as exc:
        raise PackageError(f"{event_file}: [event] {exc}") from exc
    if end <= start:
        raise PackageError(f"{event_file}: [event] end {event['end']} is not after start "
                           f"{event['start']}")
    event_id = str(event["id"])
    if not _EVENT_ID.fullmatch(event_id):
        raise PackageError(f"{event_file}: [event] id {event_id!r} is not 1-100 of "
                           "[A-Za-z0-9._-] (it names the replay's Kafka topics)")
    for table in ("truth", "seismic"):
        if not isinstance(doc.get(table, {}), dict):
            raise PackageError(f"{event_file}: {table} = {doc[table]!r} is not a table "
                               f"([{table}])")
    seismic = doc.get("seismic") or {}
    if not isinstance(seismic.get("gains", {}), dict):
        raise PackageError(f"{event_file}: [seismic] gains = {seismic['gains']!r} is not a "
                           "table ([seismic.gains])")
    _gains(event_file, seismic)  # checked now: it was when a worker first asked for them
    inventory = _load_inventory(root, seismic, start)
    stations = _load_stations(root / "stations.csv", root, inventory)
    truth = doc.get("truth") or {}
    return ReplayPackage(root, event_id, str(event["title"]), start, end, stations,
                         dict(truth), doc, inventory)


def _gains(event_file: Path, seismic: dict[str, Any]) -> dict[str, float]:
    """``[seismic.gains]``: station id -> counts per metre, each a finite positive number
    (TOML's ``inf`` and ``true`` were taken for gains)."""
    out = {}
    for sid, g in (seismic.get("gains") or {}).items():
        if isinstance(g, bool) or not isinstance(g, int | float) or not 0 < g < math.inf:
            raise PackageError(f"{event_file}: [seismic.gains] {sid} = {g!r} is not a "
                               "finite positive number")
        out[str(sid)] = float(g)
    return out


#: an event id names the replay's topics (``streams.topics``: Kafka's characters)
_EVENT_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


def csv_rows(path: Path) -> Iterator[list[str]]:
    """The rows of the CSV file ``path`` (UTF-8), one a line, with what csv cannot read (a
    field longer than its 128-KiB limit, a NUL) a PackageError naming the file and line.
    A quoted field holding a line break is one too: no value of a package has one, and the
    callers number rows as lines (after such a field an error named the line before)."""
    reader = csv.reader(io.StringIO(utf8_text(path), newline=""))
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise PackageError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
        if reader.line_num != line:
            raise PackageError(f"{path}:{line}: a quoted field runs over "
                               f"{reader.line_num - line + 1} lines (no value has a line "
                               "break)")
        yield row


def number(text: str) -> float:
    """``float(text)`` for a number as a package writes it: ASCII, no ``_`` (Python's float
    read ``1_0`` as 10, and Arabic-Indic digits as the ASCII ones). ValueError if not."""
    if not text.isascii() or "_" in text:
        raise ValueError(f"could not convert string to float: {text!r}")
    return float(text)


def integer(text: str) -> int:
    """``int(text)`` with :func:`number`'s rules."""
    if not text.isascii() or "_" in text:
        raise ValueError(f"invalid literal for int(): {text!r}")
    return int(text)


def utf8_text(path: Path) -> str:
    """The file's text (UTF-8, without the byte-order mark a Windows editor or a
    spreadsheet's CSV export puts first: TOML read it as a key and the error named the
    first line's text, a CSV header did not match); PackageError naming it if it is not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{path}: not UTF-8 text ({exc})") from exc


@dataclass(frozen=True)
class Channel:
    """A seismic channel of an inventory at one time."""

    lat: float
    lon: float
    elevation_m: float
    gain_m: float  # counts per metre of displacement at the picker's band centre (or NaN)


def read_channels(path: Path, at: float, where: str) -> dict[str, Channel]:
    """``NET.STA.LOC.CHA`` -> coordinates and gain of the channels in operation at ``at``,
    from a file ObsPy's ``read_inventory`` reads (FDSN StationXML or RESP). The gain is the
    displacement response at the centre of the picker's band for the channel's rate
    (evalresp). ``where`` names the file in errors."""
    from obspy import UTCDateTime, read_inventory

    from detectors.picker import PickerParams

    if not path.is_file():
        raise PackageError(f"{where}: no such file")
    try:
        # an open file: given a name, ObsPy takes it for a glob pattern (``inv*.xml`` read
        # a link out of the package that the check of the name had not seen)
        with path.open("rb") as fh:
            inv = read_inventory(fh)
    except Exception as exc:  # obspy raises many types for a bad file
        raise PackageError(f"{where}: not readable as StationXML or RESP: {exc}") from exc
    out: dict[str, Channel] = {}
    t = UTCDateTime(at)
    for net in inv:
        for sta in net:
            for cha in sta:
                if cha.start_date is not None and cha.start_date > t:
                    continue
                if cha.end_date is not None and cha.end_date < t:
                    continue
                sid = f"{net.code}.{sta.code}.{cha.location_code}.{cha.code}"
                gain = math.nan
                if cha.response is not None and cha.response.response_stages:
                    p = PickerParams.for_rate(float(cha.sample_rate or 1.0))
                    f = math.sqrt(p.freqmin * p.freqmax)
                    try:
                        h = cha.response.get_evalresp_response_for_frequencies([f], output="DISP")
                        gain = float(abs(h[0]))
                    except Exception as exc:
                        raise PackageError(f"{where}: {sid}: response not usable: {exc}") from exc
                lat = cha.latitude if cha.latitude is not None else sta.latitude
                lon = cha.longitude if cha.longitude is not None else sta.longitude
                elev = cha.elevation if cha.elevation is not None else sta.elevation
                out[sid] = Channel(math.nan if lat is None else float(lat),
                                   math.nan if lon is None else float(lon),
                                   float(elev or 0.0), gain)
    return out


def _load_inventory(root: Path, seismic: dict[str, Any], start: float) -> dict[str, Channel]:
    """``NET.STA.LOC.CHA`` -> coordinates and gain, from ``[seismic] inventory``."""
    name = seismic.get("inventory")
    if name is None:
        return {}
    where = f"{root / 'event.toml'}: [seismic] inventory {name!r}"
    path = _inside(root, str(name), f"{root / 'event.toml'}: [seismic] inventory")
    if not path.is_file():
        raise PackageError(f"{where}: no such file in {root}")
    return read_channels(path, start, where)


def _load_stations(path: Path, root: Path,
                   inventory: dict[str, Channel] | None = None) -> list[StationEntry]:
    if not path.is_file():
        raise PackageError(f"{path}: missing (every package has a stations.csv)")
    reader = csv_rows(path)
    header = next(reader, None)
    if header != STATIONS_HEADER:
        raise PackageError(f"{path}:1: header {header} is not {STATIONS_HEADER}")
    entries: list[StationEntry] = []
    seen: set[str] = set()
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        entries.append(_station_row(path, lineno, row, root, seen, inventory or {}))
    if not entries:
        raise PackageError(f"{path}: no stations")
    return entries


def _station_row(path: Path, lineno: int, row: list[str], root: Path,
                 seen: set[str], inventory: dict[str, Channel]) -> StationEntry:
    where = f"{path}:{lineno}"
    if len(row) != len(STATIONS_HEADER):
        raise PackageError(f"{where}: {len(row)} columns, expected {len(STATIONS_HEADER)}")
    sid, kind, lat_s, lon_s, elev_s, units, file_s, fmt = (c.strip() for c in row)
    problem = station_id_problem(sid)
    if problem:
        raise PackageError(f"{where}: station_id {sid!r} {problem} (packets refuse it)")
    if sid in seen:
        raise PackageError(f"{where}: station_id {sid!r} appears twice")
    seen.add(sid)
    if kind not in SENSOR_KINDS:
        raise PackageError(f"{where}: kind {kind!r} is not one of {SENSOR_KINDS}")
    if fmt not in FORMATS:
        raise PackageError(f"{where}: format {fmt!r} is not one of {FORMATS}")
    if fmt not in KIND_FORMATS[kind]:
        raise PackageError(f"{where}: {sid} ({kind}): format {fmt!r} is not one of "
                           f"{KIND_FORMATS[kind]} (the formats a {kind} station comes in)")
    units = units or DEFAULT_UNITS[kind]
    if units not in UNITS[kind]:
        raise PackageError(f"{where}: {sid} ({kind}): units {units!r} are not one of "
                           f"{UNITS[kind]} (the units its detectors assume)")
    if kind == "seismic" and not lat_s and not lon_s:
        ch = inventory.get(sid)
        if ch is None or math.isnan(ch.lat) or math.isnan(ch.lon):
            raise PackageError(f"{where}: {sid} has no lat/lon and the [seismic] inventory "
                               "gives none")
        lat_s, lon_s, elev_s = repr(ch.lat), repr(ch.lon), elev_s or repr(ch.elevation_m)
    nums = []
    for name, text in (("lat", lat_s), ("lon", lon_s), ("elevation_m", elev_s or "0")):
        try:
            value = number(text)
        except ValueError:
            raise PackageError(f"{where}: {name} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise PackageError(f"{where}: {name} {text!r} is not finite")
        nums.append(value)
    try:
        info = StationInfo(sid, kind, nums[0], nums[1], nums[2], units)
    except DetectorError as exc:
        raise PackageError(f"{where}: {exc}") from exc
    file = _inside(root, file_s, f"{where}: file")
    if not file.is_file():
        raise PackageError(f"{where}: file {file_s!r} does not exist in {root}")
    return StationEntry(info, file, fmt, lineno)


def _inside(root: Path, name: str, where: str) -> Path:
    """``root / name``, which must stay inside the package: a package is data from
    elsewhere, and ``../`` or an absolute path let it read any file of the user's."""
    if "\0" in name:
        raise PackageError(f"{where} {name!r} has a NUL character (no file is named so)")
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root.resolve()):
        raise PackageError(f"{where} {name!r} is outside the package {root} (files are "
                           "given relative to it)")
    return path


# --------------------------------------------------------------------------- readers


def _finish(times: FloatArray, values: FloatArray, path: Path,
            lines: list[int] | None = None) -> Series:
    """The samples in time order. Of samples sharing an instant (within 1 us) the last
    finite one is kept; finite ones that disagree are a PackageError naming them (which of
    two readings of one instant is right, the loader cannot know)."""
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order].astype(np.float64)
    if len(times) > 1:
        new = np.ones(len(times), dtype=bool)  # the first sample of its instant
        new[1:] = np.diff(times) > 1e-6
        if not new.all():
            starts = np.flatnonzero(new)
            ends = np.append(starts[1:], len(times))
            for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
                group = values[a:b]
                fin = np.flatnonzero(np.isfinite(group))
                other = fin[group[fin] != group[fin[0]]] if fin.size > 1 else fin[:0]
                if other.size:
                    i, j = a + fin[0], a + other[0]
                    where = (f"lines {lines[order[i]]} and {lines[order[j]]}" if lines
                             else f"samples {order[i]} and {order[j]}")
                    raise PackageError(
                        f"{path}: {where} give {iso(float(times[i]))} two values, "
                        f"{float(values[i])!r} and {float(values[j])!r}; one sample per "
                        "instant")
                if fin.size:
                    values[b - 1] = group[fin[-1]]
            keep = np.append(new[1:], True)  # the last of each instant (now its finite value)
            times, values = times[keep], values[keep]
    return Series(times.astype(np.float64), values)


def read_csv_series(path: Path) -> Series:
    """``time,value`` CSV (ISO 8601 UTC), two columns. An empty value (or ``nan``) means
    missing; an infinite value (``inf``, or ``1e400``, beyond float64) is an error."""
    times: list[float] = []
    values: list[float] = []
    lines: list[int] = []
    reader = csv_rows(path)
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["time", "value"]:
        raise PackageError(f"{path}:1: header {header} is not ['time', 'value']")
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 2:
            raise PackageError(f"{path}:{lineno}: {len(row)} columns, expected 2 "
                               f"(time,value): {row}")
        try:
            t = parse_time(row[0].strip(), "time")
        except SchemaError as exc:
            raise PackageError(f"{path}:{lineno}: {exc}") from None
        text = row[1].strip()
        try:
            v = number(text) if text else math.nan
        except ValueError:
            raise PackageError(f"{path}:{lineno}: value {text!r} is not a number") from None
        if math.isinf(v):
            raise PackageError(f"{path}:{lineno}: value {text!r} is not finite (a "
                               "missing sample is an empty value)")
        times.append(t)
        values.append(v)
        lines.append(lineno)
    return _finish(np.array(times), np.array(values), path, lines)


#: the highest sampling rate a record may have: samples closer than 1 us are one instant
MAX_RATE_HZ = 1e5


def read_mseed_series(path: Path) -> Series:
    import obspy  # heavy import, only when a package uses miniSEED

    # an open file, read as miniSEED: given a name, ObsPy takes it for a glob pattern
    # (``a*.mseed`` read a sibling, or a link out of the package, that the check of the
    # name had not seen) and reads whatever format it finds (a SAC file passed as mseed)
    try:
        with path.open("rb") as fh:
            stream = obspy.read(fh, format="MSEED")
    except Exception as exc:  # obspy raises many types for a bad file
        raise PackageError(f"{path}: not readable as miniSEED: {exc}") from exc
    if not stream:
        raise PackageError(f"{path}: no traces")
    ids = {tr.id for tr in stream}
    if len(ids) > 1:
        raise PackageError(f"{path}: several channels {sorted(ids)}; one per file")
    rates = {tr.stats.sampling_rate for tr in stream}
    if len(rates) > 1:
        raise PackageError(f"{path}: the sampling rate changes ({sorted(rates)} Hz); one "
                           "rate per file")
    (rate,) = rates
    if not 0 < rate <= MAX_RATE_HZ:
        raise PackageError(f"{path}: sampling rate {rate!r} Hz is not above 0 and at most "
                           f"{MAX_RATE_HZ:g} Hz")
    for tr in stream:
        # records of one channel in integers and in floats (a datalogger's encoding changed)
        # do not merge ("Data type differs"): all are float64 samples here anyway
        tr.data = np.ma.asarray(tr.data, dtype=np.float64) if np.ma.isMaskedArray(
            tr.data) else np.asarray(tr.data, dtype=np.float64)
    stream.sort(["starttime"])
    try:
        stream.merge(method=-1)
    except Exception as exc:  # ObsPy's merge refuses traces it cannot join
        raise PackageError(f"{path}: traces of {stream[0].id} do not merge: {exc}") from exc
    times, values = [], []
    prev_end = -math.inf
    for tr in stream:
        # what merge could not join: a trace off the first one's sample grid, or one
        # overlapping the one before with other samples (it had interleaved them)
        t0 = tr.stats.starttime.timestamp
        if t0 <= prev_end + 1e-6 * tr.stats.delta:
            raise PackageError(f"{path}: traces overlap at {tr.stats.starttime} with other "
                               "samples (or off the sample grid); one series per file")
        prev_end = tr.stats.endtime.timestamp
        n = tr.stats.npts
        t0 = tr.stats.starttime.timestamp
        times.append(t0 + np.arange(n) * tr.stats.delta)
        data = np.ma.filled(np.ma.asarray(tr.data, dtype=np.float64), np.nan)
        bad = np.flatnonzero(np.isinf(data))
        if bad.size:  # (a CSV refuses them too; a float trace can hold them)
            raise PackageError(f"{path}: trace {tr.id} sample {bad[0]} (at "
                               f"{tr.stats.starttime + bad[0] * tr.stats.delta}) is "
                               f"{float(data[bad[0]])!r}, not finite ({bad.size} such samples)")
        values.append(data)
    return _finish(np.concatenate(times), np.concatenate(values), path)


#: the deepest water a DART can stand in (the Challenger Deep is 10,935 m)
MAX_DEPTH_M = 11000.0


def read_ndbc_series(path: Path) -> Series:
    """NOAA NDBC DART text: ``#YY MM DD hh mm ss T HEIGHT`` (a 4-digit year, UTC); T = 1
    (15-min), 2 (1-min), 3 (15-s); 9999 = missing; any row order.

    Where a 15-s (T=3) sample shares an instant with a 1-min (T=2) or 15-min (T=1) one, the
    1-min or 15-min one is kept.
    """
    rows: list[tuple[float, int, int, float]] = []
    for lineno, line in enumerate(utf8_text(path).splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 8:
            raise PackageError(f"{path}:{lineno}: expected 8 columns, got {len(parts)}: {line!r}")
        try:
            y, mo, d, h, mi, s, typ = (integer(p) for p in parts[:7])
            height = number(parts[7])
        except ValueError:
            raise PackageError(f"{path}:{lineno}: not an NDBC DART row: {line!r}") from None
        if y < 1900:
            raise PackageError(f"{path}:{lineno}: year {y} is not a 4-digit year (NDBC DART "
                               f"rows start YYYY MM DD): {line!r}")
        try:
            t = datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()
        except (ValueError, OverflowError) as exc:  # OverflowError: beyond a C int
            raise PackageError(f"{path}:{lineno}: {y:04d}-{mo:02d}-{d:02d} "
                               f"{h:02d}:{mi:02d}:{s:02d} is not a date and time ({exc}): "
                               f"{line!r}") from None
        if typ not in (1, 2, 3):
            raise PackageError(f"{path}:{lineno}: measurement type {typ} is not 1, 2 or 3")
        if height == 9999.0:  # NDBC's missing value
            continue
        if not 0 < height <= MAX_DEPTH_M:  # (also nan and inf)
            raise PackageError(f"{path}:{lineno}: height {parts[7]!r} is not a water depth "
                               f"(above 0, at most {MAX_DEPTH_M:g} m; a missing one is 9999): "
                               f"{line!r}")
        rows.append((t, typ, lineno, height))
    if not rows:
        raise PackageError(f"{path}: no valid rows")
    rows.sort()
    # sorted by (time, type, line): for equal times keep the first (15-min, then 1-min,
    # then 15-s); two rows of one type at one instant must agree (which is right, the
    # loader cannot know: the first was kept without a word)
    for a, b in itertools.pairwise(rows):
        if b[0] - a[0] <= 1e-6 and a[1] == b[1] and a[3] != b[3]:
            raise PackageError(f"{path}: lines {a[2]} and {b[2]} give {iso(a[0])} two "
                               f"heights of type {a[1]}, {a[3]!r} and {b[3]!r}; one sample "
                               "per instant")
    times = np.array([r[0] for r in rows])
    values = np.array([r[3] for r in rows])
    keep = np.ones(len(times), dtype=bool)
    keep[1:] = np.diff(times) > 1e-6
    return Series(times[keep], values[keep])


# --------------------------------------------------------------------------- packets


def series_to_packets(info: StationInfo, s: Series, packet_seconds: float,
                      source: str = "") -> Iterator[ObservationPacket]:
    """Cut a record into packets of constant interval, at most ``packet_seconds`` long.

    Missing rows inside a run of constant interval become NaN samples when the hole is
    short (up to 2 samples); a longer hole, or a change of interval, starts a new packet.
    Packet boundaries are aligned to multiples of ``packet_seconds`` in event time, so the
    same record always gives the same packets.
    """
    t, v = s.times, s.values
    n = len(t)
    if n == 0:
        return
    seq = 0
    i = 0
    before: float | None = None  # the interval of the run before
    while i < n:
        j, run_dt = _run(t, i)
        dt = _interval(t, i, j, run_dt) if run_dt is not None else _lone_interval(t, i, before)
        before = dt
        grid_idx = np.rint((t[i:j] - t[i]) / dt).astype(np.int64)
        full = np.full(int(grid_idx[-1]) + 1, np.nan)
        full[grid_idx] = v[i:j]
        t0 = float(t[i])
        # aligned cut points: multiples of packet_seconds (of per * dt if dt does not
        # divide it)
        per = max(1, int(round(packet_seconds / dt)))
        slot = packet_seconds if abs(per * dt - packet_seconds) < 1e-6 else per * dt
        first_slot = math.floor(t0 / slot + 1e-9)
        offset = int(round(((first_slot + 1) * slot - t0) / dt))
        offset = max(1, min(offset, len(full)))
        start_idx = 0
        cut = offset
        while start_idx < len(full):
            chunk = full[start_idx:cut]
            if len(chunk):
                yield ObservationPacket(
                    station_id=info.station_id, kind=info.kind, channel=info.kind,
                    start=t0 + start_idx * dt, sample_interval=dt,
                    values=np.ascontiguousarray(chunk, dtype=np.float64), units=info.units,
                    source=source, seq=seq, lat=info.lat, lon=info.lon,
                    elevation_m=info.elevation_m,
                )
                seq += 1
            start_idx = cut
            cut += per
        i = j


def _interval(t: FloatArray, i: int, j: int, dt: float) -> float:
    """The sample interval of the run t[i:j], first guessed as ``dt`` from one step: from
    the whole run's span (one step of times near 1.6e9 s is only good to 2.4e-7 s: 20 Hz
    read as 0.04999995 s, which drifted the packets' times by 18 ms a day), then snapped to
    a whole sampling rate below 1 s (20 Hz: 0.05 s) or to whole microseconds above."""
    steps = round(float(t[j - 1] - t[i]) / dt) if j - 1 > i else 0
    if steps > 0:
        dt = float(t[j - 1] - t[i]) / steps
    if dt < 1.0:
        rate = round(1.0 / dt)
        if rate > 0 and abs(1.0 / dt - rate) <= 1e-6 * rate:
            return 1.0 / rate
        return dt
    whole = round(dt, 6)
    return whole if abs(dt - whole) < 1e-6 else dt


def _run(t: FloatArray, i: int) -> tuple[int, float | None]:
    """The run t[i:j] on one grid of interval dt (holes of up to 2 samples become NaN);
    dt is None for a lone sample (see ``_lone_interval``).

    The interval is the shorter of the first two steps (the first may be a hole), unless
    most steps of the run it gives skip samples: then one of them was off the record's grid
    (a stray sample 0.5 s into a 1-Hz record made the whole record 2 Hz with every other
    sample NaN, and the picker never warmed up), the interval is the commonest step and the
    stray sample a run of its own."""
    n = len(t)
    if i >= n - 1:
        return n, None
    dt = float(t[i + 1] - t[i])
    if i + 2 < n:
        dt = min(dt, float(t[i + 2] - t[i + 1]))
    j = _run_end(t, i, dt)
    multiples = np.rint(np.diff(t[i:j]) / dt)
    if np.count_nonzero(multiples == 1) * 2 < len(multiples):
        dt *= float(np.bincount(multiples.astype(np.int64)).argmax())
        j = _run_end(t, i, dt)
    return j, (dt if j - i > 1 else None)


def _run_end(t: FloatArray, i: int, dt: float) -> int:
    """The end j of the run t[i:j] whose steps are 1-3 intervals ``dt`` (within 1e-3)."""
    n = len(t)
    # the first step that is not, looked for in growing chunks
    j = i + 1
    size = 256
    while j < n:
        k = (t[j:j + size] - t[j - 1:j - 1 + size][:n - j]) / dt
        r = np.round(k)  # half to even, as round()
        off = np.flatnonzero((np.abs(k - r) > 1e-3) | (r < 1) | (r > 3))
        if len(off):
            return j + int(off[0])
        j += len(k)
        size *= 4
    return j


def _lone_interval(t: FloatArray, i: int, before: float | None) -> float:
    """The sample interval of a lone sample t[i]: that of the run before it, else of the
    first run after it, else 60 s (a step to the next sample is a gap, not an interval: a
    last sample 20 s after a 1-Hz record became a 20-s packet, which the picker refused)."""
    if before is not None:
        return before
    j = i + 1
    while j < len(t):
        j, dt = _run(t, j)
        if dt is not None:
            return dt
    return 60.0
