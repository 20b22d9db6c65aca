"""Types shared by every detector.

Times are event times in POSIX seconds (float64, UTC); a packet is a start time, a sample
interval and a ``values`` array in which NaN marks a missing sample. Detectors never look
at the wall clock.

Exception tree::

    DetectorError (ValueError)
     ├── PacketError        a packet that does not fit the stream (station, rate, order)
     └── DetectorFault      a detector failed on a packet (a bug or a numerical failure);
                            the station wrapper raises it in place of the original error
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

SENSOR_KINDS = ("barometer", "tide_gauge", "bottom_pressure", "seismic", "plume")


class DetectorError(ValueError):
    """Base class of every error raised by a detector."""


class PacketError(DetectorError):
    """A packet does not fit the stream the detector is following."""


class DetectorFault(DetectorError):
    """A detector failed on a packet with an error that is not a :class:`DetectorError`
    (chained as its cause): the packet can be set aside and the stream go on."""


@dataclass(frozen=True)
class StationInfo:
    """What a detector wrapper knows of a station (from a replay package or registry)."""

    station_id: str
    kind: str
    lat: float
    lon: float
    elevation_m: float = 0.0
    units: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SENSOR_KINDS:
            raise DetectorError(
                f"station {self.station_id!r}: kind {self.kind!r} is not one of {SENSOR_KINDS}"
            )
        if not -90.0 <= self.lat <= 90.0:
            raise DetectorError(f"station {self.station_id!r}: lat {self.lat} outside [-90, 90]")
        if not -180.0 <= self.lon <= 360.0:
            raise DetectorError(f"station {self.station_id!r}: lon {self.lon} outside [-180, 360]")


@dataclass(frozen=True)
class Detection:
    """One detected signal at one station.

    ``declared`` is the event time of the last sample the detector had seen when it
    declared the detection: downstream association uses it as the time the information
    became available, so replays at any speed produce the same revisions.
    """

    station_id: str
    kind: str
    detector: str
    detector_version: str
    onset: float
    peak_time: float
    amplitude: float
    units: str
    declared: float
    lat: float = float("nan")
    lon: float = float("nan")
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Idempotency key: the same detection always has the same key."""
        return f"{self.detector}:{self.station_id}:{self.onset:.3f}"


class StreamDetector(Protocol):
    """A per-station incremental detector.

    ``feed`` takes one packet (start time, sample interval, values with NaN gaps) and
    returns the detections declared while processing it, in declaration order.
    """

    name: str
    version: str
    #: seconds of record before the newest sample that determine the state: a fresh
    #: detector fed only the last ``horizon_s`` ends in the state of one fed from the start
    #: and declares what it declares from then on, unless events closer together than
    #: their refractory time chain back beyond it (each held the next one back). A stream
    #: worker that takes a station over rebuilds its detectors from that much of the record
    #: (``streams.takeover``).
    @property
    def horizon_s(self) -> float: ...

    def feed(self, t0: float, dt: float, values: FloatArray) -> list[Detection]: ...

    def params(self) -> dict[str, Any]: ...


def feed_guarded(det: StreamDetector, station_id: str, t0: float, dt: float,
                 values: FloatArray) -> list[Detection] | DetectorError:
    """``det.feed``'s detections, or the error it raised: a DetectorError as it is, any
    other error made a DetectorFault naming station, detector and cause (the packet can be
    set aside and the stream go on)."""
    try:
        return det.feed(t0, dt, values)
    except DetectorError as exc:
        return exc
    except Exception as exc:
        fault = DetectorFault(f"{station_id}: detector {det.name} failed on the packet at "
                              f"{t0}: {type(exc).__name__}: {exc}")
        fault.__cause__ = exc
        return fault
