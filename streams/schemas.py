"""Versioned message schemas: observation packets, detections, incidents, alerts.

Every message is a JSON object whose ``schema`` field names its type and version
(``tocsin.observation/2``). ``to_dict``/``from_dict`` round-trip exactly; ``from_dict``
validates and raises :class:`SchemaError` naming the field, the bad value and what was
allowed. ``decode`` turns raw Kafka bytes into the right message type.

Times are ISO 8601 UTC strings on the wire (``2022-01-15T04:14:45.000Z``) and POSIX
seconds (float) in memory. An observation packet's samples travel as base64 of
little-endian float64 (NaN = missing; version 1, a JSON list with ``null``, still decodes).
The formats are documented in docs/schemas.md.
"""

from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import orjson
import pybase64

from detectors.base import SENSOR_KINDS, Detection, FloatArray


class SchemaError(ValueError):
    """A message does not match its schema; the text names the field and the value."""


# --------------------------------------------------------------------------- time helpers


def iso(t: float) -> str:
    """POSIX seconds -> ISO 8601 UTC with millisecond precision and a Z."""
    if not math.isfinite(t):
        raise SchemaError(f"time {t!r} is not a finite number of seconds")
    try:
        text = datetime.fromtimestamp(round(t, 3), tz=UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError, OSError) as exc:  # beyond years 1-9999
        raise SchemaError(f"time {t!r} is not within the years 1-9999 ({exc})") from None
    return text[:-6] + "Z"  # "+00:00" -> "Z"


def parse_time(value: Any, field_name: str = "time") -> float:
    """ISO 8601 (UTC, 'Z' or offset) -> POSIX seconds."""
    if not isinstance(value, str):
        raise SchemaError(f"{field_name}: expected an ISO 8601 string, got {value!r}")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SchemaError(f"{field_name}: {value!r} is not an ISO 8601 time") from exc
    if dt.tzinfo is None:
        raise SchemaError(f"{field_name}: {value!r} has no time zone; times must be UTC")
    t = dt.timestamp()
    if not EPOCH_MIN <= t <= EPOCH_MAX:  # ("0001-01-01T00:00+01:00" is in year 0 UTC)
        raise SchemaError(f"{field_name}: {value!r} is not a time within 1900-2200")
    return t


# the event times a message may carry: 1900-01-01 to 2200-01-01 UTC (a time outside makes
# no sense for these feeds, and datetime arithmetic on it fails downstream)
EPOCH_MIN, EPOCH_MAX = -2208988800.0, 7258118400.0


#: a packet ending further than this after a worker's clock is a timing fault: taken, it
#: made the station's detectors refuse every correct packet after it ("in the gap"); the
#: live dashboard leaves such packets out too
MAX_AHEAD_S = 86400.0


def epoch(value: Any, name: str, schema: str = "time") -> float:
    """``value`` as an event time in Unix seconds; SchemaError naming the field unless it
    is a number within 1900-2200."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{schema}: {name} = {value!r} is not a number of seconds")
    t = float(value)
    if not EPOCH_MIN <= t <= EPOCH_MAX:
        raise SchemaError(f"{schema}: {name} = {value!r} is not a time within 1900-2200")
    return t


def _require(d: dict[str, Any], name: str, types: type | tuple[type, ...], schema: str) -> Any:
    if name not in d:
        raise SchemaError(f"{schema}: missing field {name!r}")
    value = d[name]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        raise SchemaError(f"{schema}: field {name!r} = {value!r} is not of type {types}")
    return value


#: the longest station id and incident id (the stores' columns)
STATION_ID_MAX = INCIDENT_ID_MAX = 100


def _identifier_ok(text: str, also: str = "") -> bool:
    """Whether ``text`` may name a message (CAP 1.2 3.2.1: no space, comma or restricted
    character, < and &; no '"' or '/' either: it goes into URLs and XML attributes), nor
    any character of ``also``."""
    return bool(text) and text.isprintable() and not any(c in ' ,<&"/' + also for c in text)


def station_id_problem(sid: str) -> str | None:
    """Why ``sid`` cannot name a station, or None when it can.

    Ids key the state stores, travel comma-joined in packets and end up as text in CAP XML
    and the dashboard: a comma, or a control or other non-printable character (XML 1.0
    has no \\x0b, and lxml refuses it, so the alert could not be built), is refused
    where the id comes in.
    """
    if not sid:
        return "is empty"
    if len(sid) > STATION_ID_MAX:  # PostgreSQL refused it (a 100-character column)
        return f"has {len(sid)} characters, more than {STATION_ID_MAX}"
    if "," in sid:
        return "has ','"
    bad = next((c for c in sid if not c.isprintable()), None)
    if bad is not None:
        return f"has the non-printable character {bad!r}"
    return None


def _station_id(d: dict[str, Any], schema: str) -> str:
    sid: str = _require(d, "station_id", str, schema)
    problem = station_id_problem(sid)
    if problem:
        raise SchemaError(f"{schema}: station_id {sid!r} {problem}")
    return sid


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _number(d: dict[str, Any], name: str, schema: str) -> float:
    value = _require(d, name, (int, float), schema)
    return float(value)


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def _opt_number(d: dict[str, Any], name: str, schema: str = "message") -> float:
    """A number, or NaN for null or absent; SchemaError naming the field otherwise (a
    string or a boolean was taken for a number, or failed without the field's name)."""
    value = d.get(name)
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{schema}: field {name!r} = {value!r} is not a number or null")
    return float(value)


def _opt_position(d: dict[str, Any], schema: str) -> tuple[float, float]:
    """``lat`` and ``lon``: numbers (lat within -90..90, lon within -180..360) or both null
    (NaN). A lat of 95 or a lon of null went into a CAP circle as '95.0000,...' or
    '-21.1400,nan', which the XSD (a circle is a string) let out to the agencies."""
    lat, lon = _opt_number(d, "lat", schema), _opt_number(d, "lon", schema)
    if math.isnan(lat) != math.isnan(lon):
        raise SchemaError(f"{schema}: lat {d.get('lat')!r} and lon {d.get('lon')!r}: a "
                          "position has both or neither")
    if not math.isnan(lat) and not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 360.0):
        raise SchemaError(f"{schema}: lat {lat!r}, lon {lon!r} is not a position (lat "
                          "within -90..90, lon within -180..360)")
    return lat, lon


def _count(d: dict[str, Any], name: str, schema: str, least: int = 0) -> int:
    """An integer >= ``least`` (0 when absent); SchemaError naming the field otherwise
    ("7", 7.9 and true were taken for 7, 7 and 1)."""
    value = d.get(name, least)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SchemaError(f"{schema}: field {name!r} = {value!r} is not an integer >= "
                          f"{least}")
    return value


#: the largest revision a message may carry: the stores' revision columns are 32-bit
#: (PostgreSQL refused more; SQLite's driver raised OverflowError from 2**63, and the alert
#: agent crashed on the record, again after each restart)
REVISION_MAX = 2**31 - 1


def _revision(d: dict[str, Any], schema: str) -> int:
    value = _require(d, "revision", int, schema)
    if not 1 <= value <= REVISION_MAX:
        raise SchemaError(f"{schema}: revision {value!r} is not a positive integer of at "
                          f"most {REVISION_MAX}")
    return int(value)


def _list(d: dict[str, Any], name: str, schema: str) -> list[Any]:
    """A JSON list (empty when null or absent); SchemaError naming the field otherwise."""
    value = d.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SchemaError(f"{schema}: field {name!r} = {value!r} is not a list")
    return value


def _strings(d: dict[str, Any], name: str, schema: str) -> tuple[str, ...]:
    """A list of strings (empty when null or absent); SchemaError naming the field
    otherwise (a string was taken for the list of its characters)."""
    value = d.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError(f"{schema}: field {name!r} = {value!r} is not a list of strings")
    return tuple(value)


def short(value: Any, width: int = 80) -> str:
    """``repr(value)``, cut to ``width`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


#: how deep the objects of a message (a detection's params and extra, a revision's extra)
#: may nest. orjson reads 1024 levels but writes 254: a message nested deeper decoded and
#: then could not be sent on or dead-lettered (TypeError in the agent: a crash)
MAX_DEPTH = 32


def _depth_ok(value: Any, left: int) -> bool:
    if isinstance(value, dict):
        return left > 0 and all(_depth_ok(v, left - 1) for v in value.values())
    if isinstance(value, list):
        return left > 0 and all(_depth_ok(v, left - 1) for v in value)
    return True


def _object(d: dict[str, Any], name: str, schema: str) -> dict[str, Any]:
    """A JSON object (empty when null or absent) nested at most :data:`MAX_DEPTH` levels;
    SchemaError naming the field otherwise."""
    value = d.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SchemaError(f"{schema}: field {name!r} = {short(value)} is not an object")
    if not _depth_ok(value, MAX_DEPTH):
        raise SchemaError(f"{schema}: field {name!r} nests deeper than {MAX_DEPTH} levels")
    return dict(value)


def _text(d: dict[str, Any], name: str, schema: str) -> str:
    """An optional string ("" when null or absent); SchemaError naming the field if it is
    something else."""
    value = d.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SchemaError(f"{schema}: field {name!r} = {value!r} is not a string")
    return value


def _numbers(raw: list[Any], name: str, schema: str) -> FloatArray:
    """A JSON list of numbers and nulls (NaN) as float64; SchemaError naming the field and
    the first bad element otherwise ("1.5" and true were taken for numbers)."""
    for i, v in enumerate(raw):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise SchemaError(f"{schema}: {name}[{i}] = {v!r} is not a number or null")
    return np.array([np.nan if v is None else v for v in raw], dtype=np.float64)


def _issued(d: dict[str, Any], name: str, schema: str) -> float:
    """A time given as ``<name>_s`` (exact seconds) or, when that is null or absent, as
    ``<name>`` (ISO 8601)."""
    exact = d.get(f"{name}_s")
    if exact is not None:
        return epoch(exact, f"{name}_s", schema)
    return parse_time(_require(d, name, str, schema), name)


def _opt_issued(d: dict[str, Any], name: str, schema: str) -> float:
    """:func:`_issued` for a time that may be unknown: NaN when neither ``<name>_s`` nor
    ``<name>`` is given (or both are null)."""
    if d.get(f"{name}_s") is None and d.get(name) is None:
        return float("nan")
    return _issued(d, name, schema)


def _check_schema(d: Any, expected: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise SchemaError(f"expected a JSON object for {expected}, got {type(d).__name__}")
    got = d.get("schema")
    if got != expected:
        raise SchemaError(f"schema {got!r} is not {expected!r}")
    return d


# --------------------------------------------------------------------------- observation


@dataclass(frozen=True)
class ObservationPacket:
    """A packet of consecutive samples from one station channel.

    ``values[i]`` was sampled at ``start + i * sample_interval``. NaN marks a missing
    sample. ``seq`` numbers the packets of one stream so consumers can spot gaps and
    duplicates.
    """

    SCHEMA: ClassVar[str] = "tocsin.observation/2"
    SCHEMA_V1: ClassVar[str] = "tocsin.observation/1"  # values as a JSON list; decoded

    station_id: str
    kind: str
    channel: str
    start: float
    sample_interval: float
    values: FloatArray
    units: str
    source: str = ""
    seq: int = 0
    quality: tuple[str, ...] = ()
    lat: float = float("nan")
    lon: float = float("nan")
    elevation_m: float = float("nan")

    def __post_init__(self) -> None:
        problem = station_id_problem(self.station_id)
        if problem:
            raise SchemaError(f"observation: station_id {self.station_id!r} {problem}")
        if self.kind not in SENSOR_KINDS:
            raise SchemaError(
                f"observation {self.station_id}: kind {self.kind!r} not in {SENSOR_KINDS}"
            )
        if not (self.sample_interval > 0 and math.isfinite(self.sample_interval)):
            raise SchemaError(
                f"observation {self.station_id}: sample_interval {self.sample_interval!r} "
                "must be a positive number of seconds"
            )
        if not math.isfinite(self.start):
            raise SchemaError(f"observation {self.station_id}: start {self.start!r} not finite")
        if self.values.ndim != 1 or self.values.dtype != np.float64:
            raise SchemaError(
                f"observation {self.station_id}: values must be a 1-D float64 array, "
                f"got {self.values.dtype} with shape {self.values.shape}"
            )
        # (with no samples the end is before the start)
        if not (self.start >= EPOCH_MIN and self.end <= EPOCH_MAX):
            raise SchemaError(
                f"observation {self.station_id}: {len(self.values)} samples every "
                f"{self.sample_interval!r} s from {self.start!r} do not end within 1900-2200 "
                "(sample_interval_s or start is wrong)"
            )

    @property
    def end(self) -> float:
        """Time of the last sample."""
        return self.start + (len(self.values) - 1) * self.sample_interval

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "station_id": self.station_id,
            "kind": self.kind,
            "channel": self.channel,
            "start": iso(self.start),
            "start_s": self.start,
            "sample_interval_s": self.sample_interval,
            "dtype": "<f8",
            "values_b64": pybase64.b64encode_as_string(
                self.values.astype("<f8", copy=False).tobytes()),
            "units": self.units,
            "quality": list(self.quality),
            "source": self.source,
            "seq": self.seq,
            "lat": None if math.isnan(self.lat) else self.lat,
            "lon": None if math.isnan(self.lon) else self.lon,
            "elevation_m": None if math.isnan(self.elevation_m) else self.elevation_m,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObservationPacket:
        if isinstance(d, dict) and d.get("schema") == cls.SCHEMA_V1:
            values = _numbers(_require(d, "values", list, cls.SCHEMA_V1), "values",
                              cls.SCHEMA_V1)
        else:
            d = _check_schema(d, cls.SCHEMA)
            values = _f64_values(d, cls.SCHEMA)
        # start_s carries the exact float; start (ISO, ms) is for people and other tools.
        start = d.get("start_s")
        start_t = (epoch(start, "start_s", cls.SCHEMA) if isinstance(start, int | float)
                   else parse_time(_require(d, "start", str, cls.SCHEMA), "start"))
        return cls(
            station_id=_require(d, "station_id", str, cls.SCHEMA),
            kind=_require(d, "kind", str, cls.SCHEMA),
            channel=_require(d, "channel", str, cls.SCHEMA),
            start=start_t,
            sample_interval=_number(d, "sample_interval_s", cls.SCHEMA),
            values=values,
            units=_require(d, "units", str, cls.SCHEMA),
            source=_text(d, "source", cls.SCHEMA),
            seq=_count(d, "seq", cls.SCHEMA),
            quality=_strings(d, "quality", cls.SCHEMA),
            lat=_opt_number(d, "lat", cls.SCHEMA),
            lon=_opt_number(d, "lon", cls.SCHEMA),
            elevation_m=_opt_number(d, "elevation_m", cls.SCHEMA),
        )


def _f64_values(d: dict[str, Any], schema: str) -> FloatArray:
    dtype = d.get("dtype")
    if dtype != "<f8":
        raise SchemaError(f"{schema}: dtype {dtype!r} is not '<f8' (little-endian float64)")
    text = _require(d, "values_b64", str, schema)
    try:
        buf = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SchemaError(f"{schema}: values_b64 is not base64 ({exc}): {text[:40]!r}") from exc
    if len(buf) % 8:
        raise SchemaError(f"{schema}: values_b64 holds {len(buf)} bytes, not a whole number "
                          "of float64 samples")
    return np.frombuffer(buf, dtype="<f8").astype(np.float64)


# --------------------------------------------------------------------------- grid frame


@dataclass(frozen=True)
class GridFrame:
    """One frame of a gridded product (e.g. plume-top height), sent as its valid pixels.

    Only pixels with a value travel (``lat``, ``lon``, ``values`` of equal length, float32 on
    the wire); ``shape`` is the full grid's shape so the share of valid pixels is known.
    """

    SCHEMA: ClassVar[str] = "tocsin.gridframe/1"

    station_id: str
    kind: str
    time: float
    lat: FloatArray
    lon: FloatArray
    values: FloatArray
    units: str
    shape: tuple[int, int]
    source: str = ""
    seq: int = 0
    product_lat: float = float("nan")
    product_lon: float = float("nan")

    def __post_init__(self) -> None:
        problem = station_id_problem(self.station_id)
        if problem:
            raise SchemaError(f"grid frame: station_id {self.station_id!r} {problem}")
        if self.kind not in SENSOR_KINDS:
            raise SchemaError(f"grid frame {self.station_id}: kind {self.kind!r} not in "
                              f"{SENSOR_KINDS}")
        if not (len(self.lat) == len(self.lon) == len(self.values)):
            raise SchemaError(f"grid frame {self.station_id}: lat, lon and values differ in "
                              f"length ({len(self.lat)}, {len(self.lon)}, {len(self.values)})")
        if not math.isfinite(self.time):
            raise SchemaError(f"grid frame {self.station_id}: time {self.time!r} not finite")
        # the wire carries float32: round here so an in-process run sees what a streamed
        # one sees (tocsin detect == tocsin replay, to the last bit)
        for name in ("lat", "lon", "values"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            with np.errstate(over="ignore"):
                wire = arr.astype(np.float32).astype(np.float64)
            grown = np.flatnonzero(np.isinf(wire) & np.isfinite(arr))
            if len(grown):
                # an infinite pixel was taken as missing: a value lost without a word
                i = int(grown[0])
                raise SchemaError(f"grid frame {self.station_id}: {name}[{i}] = {float(arr[i])!r} "
                                  "is beyond float32, what the wire carries")
            object.__setattr__(self, name, wire)

    @property
    def end(self) -> float:
        return self.time

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA, "station_id": self.station_id, "kind": self.kind,
            "time": iso(self.time), "time_s": self.time,
            "lat": self.lat.astype(np.float32), "lon": self.lon.astype(np.float32),
            "values": self.values.astype(np.float32), "units": self.units,
            "shape": list(self.shape), "source": self.source, "seq": self.seq,
            "product_lat": None if math.isnan(self.product_lat) else self.product_lat,
            "product_lon": None if math.isnan(self.product_lon) else self.product_lon,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GridFrame:
        d = _check_schema(d, cls.SCHEMA)
        arrays = []
        for name in ("lat", "lon", "values"):
            arrays.append(_numbers(_require(d, name, list, cls.SCHEMA), name, cls.SCHEMA))
        shape = _require(d, "shape", list, cls.SCHEMA)
        if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool)
                                      and n >= 0 for n in shape):
            raise SchemaError(f"{cls.SCHEMA}: shape {shape!r} is not [rows, cols]")
        t = d.get("time_s")
        return cls(
            station_id=_require(d, "station_id", str, cls.SCHEMA),
            kind=_require(d, "kind", str, cls.SCHEMA),
            time=epoch(t, "time_s", cls.SCHEMA) if isinstance(t, int | float) else parse_time(
                d.get("time"), "time"),
            lat=arrays[0], lon=arrays[1], values=arrays[2],
            units=_require(d, "units", str, cls.SCHEMA),
            shape=(int(shape[0]), int(shape[1])), source=_text(d, "source", cls.SCHEMA),
            seq=_count(d, "seq", cls.SCHEMA),
            product_lat=_opt_number(d, "product_lat", cls.SCHEMA),
            product_lon=_opt_number(d, "product_lon", cls.SCHEMA),
        )


# --------------------------------------------------------------------------- detection


def detection_to_dict(det: Detection) -> dict[str, Any]:
    return {
        "schema": "tocsin.detection/1",
        "key": det.key,
        "station_id": det.station_id,
        "kind": det.kind,
        "detector": det.detector,
        "detector_version": det.detector_version,
        "onset": iso(det.onset),
        "peak_time": iso(det.peak_time),
        "amplitude": det.amplitude,
        "units": det.units,
        "declared": iso(det.declared),
        "lat": None if math.isnan(det.lat) else det.lat,
        "lon": None if math.isnan(det.lon) else det.lon,
        "params": det.params,
        "extra": det.extra,
        # exact floats, so a detection decoded from Kafka equals the one in memory
        "t": [det.onset, det.peak_time, det.declared],
    }


def detection_from_dict(d: dict[str, Any]) -> Detection:
    schema = "tocsin.detection/1"
    d = _check_schema(d, schema)
    exact = d.get("t")
    if isinstance(exact, list) and len(exact) == 3:
        onset, peak, declared = (epoch(x, "t", schema) for x in exact)
    else:
        onset = parse_time(_require(d, "onset", str, schema), "onset")
        peak = parse_time(_require(d, "peak_time", str, schema), "peak_time")
        declared = parse_time(_require(d, "declared", str, schema), "declared")
    kind = _require(d, "kind", str, schema)
    if kind not in SENSOR_KINDS:
        raise SchemaError(f"{schema}: kind {kind!r} not in {SENSOR_KINDS}")
    # placed on the globe: an incident made at lat 95 was kept by the associator and never
    # alerted (the alert stage refused each of its revisions)
    lat, lon = _opt_position(d, schema)
    return Detection(
        station_id=_station_id(d, schema),
        kind=kind,
        detector=_require(d, "detector", str, schema),
        detector_version=_require(d, "detector_version", str, schema),
        onset=onset,
        peak_time=peak,
        amplitude=_number(d, "amplitude", schema),
        units=_require(d, "units", str, schema),
        declared=declared,
        lat=lat,
        lon=lon,
        params=_object(d, "params", schema),
        extra=_object(d, "extra", schema),
    )


# --------------------------------------------------------------------------- incident


@dataclass(frozen=True)
class Forecast:
    station_id: str
    kind: str
    eta: float
    distance_km: float
    lat: float = float("nan")
    lon: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "station_id": self.station_id,
            "kind": self.kind,
            "eta": iso(self.eta),
            "eta_s": self.eta,
            "distance_km": round(self.distance_km, 3),
        }
        if math.isfinite(self.lat) and math.isfinite(self.lon):
            d["lat"] = self.lat
            d["lon"] = self.lon
        return d

    def _wire(self) -> tuple[Any, ...]:
        """Equal for two forecasts exactly when their ``to_dict`` are (without making them:
        ``iso`` is most of a revision's ``to_dict``)."""
        where = (self.lat, self.lon) if math.isfinite(self.lat) and math.isfinite(
            self.lon) else None
        return (self.station_id, self.kind, _nan_none(self.eta),
                round(self.distance_km, 3), where)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Forecast:
        schema = "forecast"
        if not isinstance(d, dict):
            raise SchemaError(f"{schema}: {d!r} is not an object")
        eta = d.get("eta_s")
        lat, lon = _opt_position(d, schema)
        return cls(
            station_id=_station_id(d, schema),
            kind=_text(d, "kind", schema),
            eta=epoch(eta, "eta_s", schema) if eta is not None else parse_time(
                _require(d, "eta", str, schema), "eta"),
            distance_km=_opt_number(d, "distance_km", schema),
            lat=lat,
            lon=lon,
        )


@dataclass(frozen=True)
class IncidentRevision:
    """One revision of an incident: the solution as known at event time ``issued``.

    An incident is identified by ``incident_id``; revisions are numbered from 1. The pair
    (incident_id, revision) is the idempotency key: a later message with the same pair
    replaces the earlier one (a correction when a late detection arrived).
    """

    SCHEMA: ClassVar[str] = "tocsin.incident/1"
    TYPES: ClassVar[tuple[str, ...]] = ("volcanic_eruption", "tsunami")
    STATUSES: ClassVar[tuple[str, ...]] = ("detected", "watch", "confirmed", "observed",
                                           "retracted")

    incident_id: str
    type: str
    revision: int
    issued: float
    status: str
    origin_time: float
    lat: float
    lon: float
    speed_m_s: float
    detections: tuple[str, ...]
    stations_used: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    rms_s: float = float("nan")
    forecasts: tuple[Forecast, ...] = ()
    confirmed: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.incident_id}#{self.revision}"

    def same_as(self, other: IncidentRevision, *, issue: bool = True) -> bool:
        """Whether the two ``to_dict`` are equal (NaN is None there), without making them;
        ``issue=False`` leaves the revision number and the issued time out."""
        if self._wire(issue) != other._wire(issue):
            return False
        fa, fb = self.forecasts, other.forecasts
        return fa is fb or [f._wire() for f in fa] == [f._wire() for f in fb]

    def _wire(self, issue: bool) -> tuple[Any, ...]:
        n = _nan_none
        return ((self.revision, n(self.issued)) if issue else (), self.incident_id,
                self.type, self.status, n(self.origin_time), n(self.lat), n(self.lon),
                n(self.speed_m_s), self.detections, self.stations_used, self.rejected,
                n(self.rms_s), self.confirmed, self.evidence, self.extra)

    def to_dict(self) -> dict[str, Any]:
        def opt(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "schema": self.SCHEMA,
            "key": self.key,
            "incident_id": self.incident_id,
            "type": self.type,
            "revision": self.revision,
            "issued": iso(self.issued),
            "issued_s": self.issued,
            "status": self.status,
            "origin_time": None if math.isnan(self.origin_time) else iso(self.origin_time),
            "origin_time_s": opt(self.origin_time),
            "lat": opt(self.lat),
            "lon": opt(self.lon),
            "speed_m_s": opt(self.speed_m_s),
            "detections": list(self.detections),
            "stations_used": list(self.stations_used),
            "rejected": list(self.rejected),
            "rms_s": opt(self.rms_s),
            "forecasts": [f.to_dict() for f in self.forecasts],
            "confirmed": list(self.confirmed),
            "evidence": list(self.evidence),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IncidentRevision:
        d = _check_schema(d, cls.SCHEMA)
        lat, lon = _opt_position(d, cls.SCHEMA)
        # as documented: a withdrawal spelt "Retracted" was taken as standing and an Actual
        # Update went out; an empty id made the alert 'tocsin..r1.alert'
        incident_id = _require(d, "incident_id", str, cls.SCHEMA)
        if len(incident_id) > INCIDENT_ID_MAX or not _identifier_ok(incident_id, "#"):
            raise SchemaError(f"{cls.SCHEMA}: incident_id {short(incident_id)} is empty, "
                              f"longer than {INCIDENT_ID_MAX} characters or has a space, a "
                              "control character or one of ,<&\"/#")
        kind = _require(d, "type", str, cls.SCHEMA)
        if kind not in cls.TYPES:
            raise SchemaError(f"{cls.SCHEMA}: type {short(kind)} is not one of {cls.TYPES}")
        status = _require(d, "status", str, cls.SCHEMA)
        if status not in cls.STATUSES:
            raise SchemaError(f"{cls.SCHEMA}: status {short(status)} is not one of "
                              f"{cls.STATUSES}")
        return cls(
            incident_id=incident_id,
            type=kind,
            revision=_revision(d, cls.SCHEMA),
            issued=_issued(d, "issued", cls.SCHEMA),
            status=status,
            origin_time=_opt_issued(d, "origin_time", cls.SCHEMA),
            lat=lat,
            lon=lon,
            speed_m_s=_opt_number(d, "speed_m_s", cls.SCHEMA),
            detections=_strings(d, "detections", cls.SCHEMA),
            stations_used=_strings(d, "stations_used", cls.SCHEMA),
            rejected=_strings(d, "rejected", cls.SCHEMA),
            rms_s=_opt_number(d, "rms_s", cls.SCHEMA),
            forecasts=tuple(Forecast.from_dict(f) for f in _list(d, "forecasts", cls.SCHEMA)),
            confirmed=_strings(d, "confirmed", cls.SCHEMA),
            evidence=_strings(d, "evidence", cls.SCHEMA),
            extra=_object(d, "extra", cls.SCHEMA),
        )


# --------------------------------------------------------------------------- alert


#: the characters XML 1.0 does not allow in a document
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _check_cap_xml(identifier: str, cap_xml: str) -> None:
    """SchemaError unless ``cap_xml`` is a well-formed XML document with no DOCTYPE (the
    Atom feed carries it inside an entry, and the outbox parses it for its areas: a broken
    one from the topic broke both)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        doc = etree.fromstring(cap_xml.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise SchemaError(f"alert {identifier}: cap_xml is not well-formed XML: {exc}") from None
    if doc.getroottree().docinfo.doctype:
        raise SchemaError(f"alert {identifier}: cap_xml has a DOCTYPE "
                          f"({doc.getroottree().docinfo.doctype[:80]!r}); CAP has none")


@dataclass(frozen=True)
class AlertMessage:
    """A CAP 1.2 alert about an incident revision, as it travels on the alerts topic."""

    SCHEMA: ClassVar[str] = "tocsin.alert/1"

    identifier: str
    msg_type: str
    sent: float
    incident_id: str
    revision: int
    event: str
    severity: str
    urgency: str
    certainty: str
    headline: str
    references: tuple[str, ...] = ()
    cap_xml: str = ""

    MSG_TYPES: ClassVar[tuple[str, ...]] = ("Alert", "Update", "Cancel", "Ack", "Error")

    def __post_init__(self) -> None:
        # CAP 1.2 3.2.1: no spaces, commas or restricted characters (< and &); it names the
        # message's URL on the dashboard and its Atom link
        if not _identifier_ok(self.identifier):
            raise SchemaError(f"alert: identifier {self.identifier!r} is empty or has a "
                              "space, a comma, one of <&\"/ or a non-printable character")
        if self.msg_type not in self.MSG_TYPES:
            raise SchemaError(f"alert {self.identifier}: msgType {self.msg_type!r} not in "
                              f"{self.MSG_TYPES}")
        # its texts go into XML (the Atom feed, the dashboard's CAP links): a character XML
        # does not allow, in one headline from the topic, made the feed unreadable for
        # every reader until the alert aged out
        for name in ("incident_id", "event", "severity", "urgency", "certainty", "headline",
                     "cap_xml", *(("references",) if self.references else ())):
            text = getattr(self, name)
            for t in (text if isinstance(text, tuple) else (text,)):
                bad = _NOT_XML.search(t)
                if bad:
                    raise SchemaError(f"alert {self.identifier}: {name} has the character "
                                      f"{bad.group()!r} (at {bad.start()}), which XML does not "
                                      "allow")
        if self.cap_xml:
            _check_cap_xml(self.identifier, self.cap_xml)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "identifier": self.identifier,
            "msgType": self.msg_type,
            "sent": iso(self.sent),
            "sent_s": self.sent,
            "incident_id": self.incident_id,
            "revision": self.revision,
            "event": self.event,
            "severity": self.severity,
            "urgency": self.urgency,
            "certainty": self.certainty,
            "headline": self.headline,
            "references": list(self.references),
            "cap_xml": self.cap_xml,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertMessage:
        d = _check_schema(d, cls.SCHEMA)
        return cls(
            identifier=_require(d, "identifier", str, cls.SCHEMA),
            msg_type=_require(d, "msgType", str, cls.SCHEMA),
            sent=_issued(d, "sent", cls.SCHEMA),
            incident_id=_require(d, "incident_id", str, cls.SCHEMA),
            revision=_revision(d, cls.SCHEMA),
            event=_text(d, "event", cls.SCHEMA),
            severity=_text(d, "severity", cls.SCHEMA),
            urgency=_text(d, "urgency", cls.SCHEMA),
            certainty=_text(d, "certainty", cls.SCHEMA),
            headline=_text(d, "headline", cls.SCHEMA),
            references=_strings(d, "references", cls.SCHEMA),
            cap_xml=_text(d, "cap_xml", cls.SCHEMA),
        )


# --------------------------------------------------------------------------- wire


@dataclass(frozen=True)
class SeismicEventMessage:
    """One revision of a located seismic event (``detectors.seismic.SeismicEvent.as_dict``
    plus the schema): origin, uncertainty, stations and arrivals; times in POSIX seconds."""

    SCHEMA: ClassVar[str] = "tocsin.seismic_event/1"

    body: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.body['event_id']}#{self.body['revision']}"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, **self.body}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeismicEventMessage:
        d = _check_schema(d, cls.SCHEMA)
        # the dashboard, the console and the report read these fields as they stand: a
        # revision true, a herr_km "x", stations 5 or a time of 1e20 decoded, and then
        # /api/state answered 500 until the event aged out
        schema = cls.SCHEMA
        event_id = _require(d, "event_id", str, schema)
        if not event_id or not event_id.isprintable():
            raise SchemaError(f"{schema}: event_id {event_id!r} is empty or not printable")
        _revision(d, schema)
        if d.get("status") not in (None, "located", "retracted"):
            raise SchemaError(f"{schema}: status {short(d['status'])} is not 'located' or "
                              "'retracted'")
        lat = _number(d, "lat", schema)
        if not -90.0 <= lat <= 90.0:
            raise SchemaError(f"{schema}: lat {lat!r} is not within -90..90")
        for name in ("lon", "depth_km"):
            _number(d, name, schema)
        for name in ("origin_time", "issued"):
            epoch(_require(d, name, (int, float), schema), name, schema)
        optional = ("herr_km", "rms_s", "gap_deg", "magnitude", "magnitude_sigma")
        for name in optional:
            _opt_number(d, name, schema)
        if d.get("stations") is None:
            raise SchemaError(f"{schema}: missing field 'stations'")
        _strings(d, "stations", schema)
        arrivals = _require(d, "arrivals", list, schema)
        if not all(isinstance(a, dict) for a in arrivals):
            raise SchemaError(f"{schema}: arrivals {short(arrivals)} is not a list of objects")
        # an optional number left out is null: the dashboard read b["herr_km"] of one that
        # had none, and /api/state answered 500 for a week
        return cls({**dict.fromkeys(optional), **{k: v for k, v in d.items() if k != "schema"}})


Message = (ObservationPacket | GridFrame | Detection | IncidentRevision | AlertMessage
           | SeismicEventMessage)


def to_dict(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Detection):
        return detection_to_dict(msg)
    return msg.to_dict()


def encode(msg: Message) -> bytes:
    """Message -> JSON bytes (numpy arrays serialised natively, NaN -> null)."""
    return orjson.dumps(to_dict(msg), option=orjson.OPT_SERIALIZE_NUMPY)


_DECODERS: dict[str, Any] = {
    ObservationPacket.SCHEMA: ObservationPacket.from_dict,
    ObservationPacket.SCHEMA_V1: ObservationPacket.from_dict,
    GridFrame.SCHEMA: GridFrame.from_dict,
    "tocsin.detection/1": detection_from_dict,
    IncidentRevision.SCHEMA: IncidentRevision.from_dict,
    AlertMessage.SCHEMA: AlertMessage.from_dict,
    SeismicEventMessage.SCHEMA: SeismicEventMessage.from_dict,
}


def decode(raw: bytes | str, expected: str | None = None) -> Message:
    """JSON bytes -> message; SchemaError for anything that is not a valid message."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        preview = raw[:60] if isinstance(raw, bytes | str) else raw
        raise SchemaError(f"not JSON ({exc}): {preview!r}") from exc
    if not isinstance(d, dict):
        raise SchemaError(f"expected a JSON object, got {type(d).__name__}")
    schema = d.get("schema")
    if not isinstance(schema, str):
        raise SchemaError(f"schema {short(schema)} is not a string naming a message type; "
                          f"known: {sorted(_DECODERS)}")
    if expected is not None and schema != expected:
        raise SchemaError(f"schema {schema!r} is not {expected!r}")
    decoder = _DECODERS.get(schema)
    if decoder is None:
        raise SchemaError(f"unknown schema {schema!r}; known: {sorted(_DECODERS)}")
    try:
        msg: Message = decoder(d)
    except SchemaError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed field is the message's fault
        raise SchemaError(f"{schema}: {type(exc).__name__}: {exc}") from exc
    return msg
