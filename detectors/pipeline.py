"""The thin per-station wrapper around the detector kernels (like ``Trace.trigger``).

:class:`StationPipeline` owns the detectors of one station, checks every packet against
the stream it follows (station id, kind, order) and skips packets it has already seen, so a
redelivered packet after a crash changes nothing. :class:`DetectorBank` holds one pipeline
per station and creates them on first sight.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any

from detectors.base import Detection, FloatArray, PacketError, StationInfo, StreamDetector

# kind -> detector classes ("module:Class"); imported lazily so a kind without detectors
# costs nothing.
DEFAULT_DETECTORS: dict[str, tuple[str, ...]] = {
    "barometer": ("detectors.pressure:LambPulseDetector",),
    "tide_gauge": ("detectors.sealevel:TsunamiDetector",),
    "bottom_pressure": ("detectors.sealevel:TsunamiDetector",),
    "seismic": ("detectors.picker:StaLtaPicker",),
    "plume": ("detectors.plume:PlumeDetector",),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class StationPipeline:
    station: StationInfo
    detectors: list[StreamDetector]
    last_end: float = -math.inf
    last_dt: float = math.nan
    packets: int = 0
    samples: int = 0
    duplicates: int = 0

    def feed(self, station_id: str, kind: str, t0: float, dt: float,
             values: FloatArray) -> list[Detection]:
        if station_id != self.station.station_id or kind != self.station.kind:
            raise PacketError(
                f"packet for {station_id!r} ({kind}) fed to the pipeline of "
                f"{self.station.station_id!r} ({self.station.kind})"
            )
        n = len(values)
        if n == 0:
            return []
        end = t0 + (n - 1) * dt
        if end <= self.last_end + 1e-6:
            # wholly seen already: a redelivery
            self.duplicates += 1
            return []
        if t0 <= self.last_end + 1e-6:
            # overlaps what was seen: keep only the new tail
            skip = int(math.floor((self.last_end - t0) / dt + 1e-6)) + 1
            t0, values = t0 + skip * dt, values[skip:]
            n = len(values)
        out: list[Detection] = []
        for det in self.detectors:
            out.extend(det.feed(t0, dt, values))
        self.last_end = t0 + (n - 1) * dt
        self.last_dt = dt
        self.packets += 1
        self.samples += n
        out.sort(key=lambda d: (d.declared, d.key))
        return out

    def feed_frame(self, station_id: str, t: float, lat: FloatArray, lon: FloatArray,
                   values: FloatArray) -> list[Detection]:
        """A gridded frame (plume products): only for detectors that take frames."""
        if station_id != self.station.station_id:
            raise PacketError(f"frame for {station_id!r} fed to the pipeline of "
                              f"{self.station.station_id!r}")
        if t <= self.last_end + 1e-6:
            self.duplicates += 1
            return []
        out: list[Detection] = []
        for det in self.detectors:
            feed = getattr(det, "feed_frame", None)
            if feed is None:
                raise PacketError(f"{self.station.station_id}: detector {det.name} takes "
                                  "time series, not grid frames")
            out.extend(feed(t, lat, lon, values))
        self.last_end = t
        self.packets += 1
        self.samples += len(values)
        return out


@dataclass
class DetectorBank:
    """One :class:`StationPipeline` per station, created on first packet.

    ``params`` maps a detector name to its keyword arguments, and ``"name@station_id"`` to
    the arguments of one stream (``{"sta_lta@II.MSVF.10.LHZ": {"on": 8.0}}``).
    """

    detectors: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_DETECTORS))
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, StationPipeline] = field(default_factory=dict)

    def pipeline(self, station: StationInfo) -> StationPipeline:
        p = self.pipelines.get(station.station_id)
        if p is None:
            dets = []
            for path in self.detectors.get(station.kind, ()):
                cls = _load(path)
                # "name@station_id" overrides "name" for one stream
                params = {**self.params.get(cls.name, {}),
                          **self.params.get(f"{cls.name}@{station.station_id}", {})}
                dets.append(cls(station, **params))
            p = self.pipelines[station.station_id] = StationPipeline(station, dets)
        return p

    def feed(self, station: StationInfo, t0: float, dt: float,
             values: FloatArray) -> list[Detection]:
        return self.pipeline(station).feed(station.station_id, station.kind, t0, dt, values)

    def feed_frame(self, station: StationInfo, t: float, lat: FloatArray, lon: FloatArray,
                   values: FloatArray) -> list[Detection]:
        return self.pipeline(station).feed_frame(station.station_id, t, lat, lon, values)
