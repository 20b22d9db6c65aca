"""The thin per-station wrapper around the detector kernels (like ``Trace.trigger``).

:class:`StationPipeline` owns the detectors of one station, checks every packet against
the stream it follows (station id, kind, order) and skips packets it has already seen, so a
redelivered packet after a crash changes nothing. :class:`DetectorBank` holds one pipeline
per station and creates them on first sight.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from detectors.base import (
    Detection,
    DetectorError,
    DetectorFault,
    FloatArray,
    PacketError,
    StationInfo,
    StreamDetector,
    feed_guarded,
)

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
    _batchable: list[tuple[StreamDetector, Any]] | None = field(default=None, repr=False)

    def feed(self, station_id: str, kind: str, t0: float, dt: float,
             values: FloatArray) -> list[Detection]:
        fresh = self.fresh(station_id, kind, t0, dt, values)
        if fresh is None:
            return []
        t0, values = fresh
        out: list[Detection] = []
        for det in self.detectors:
            out.extend(_feed(det, self.station, t0, dt, values))
        self.advance(t0, dt, len(values))
        out.sort(key=lambda d: (d.declared, d.key))
        return out

    def fresh(self, station_id: str, kind: str, t0: float, dt: float,
              values: FloatArray) -> tuple[float, FloatArray] | None:
        """The part of a packet not seen yet (start, values), or None if there is none."""
        if station_id != self.station.station_id or kind != self.station.kind:
            raise PacketError(
                f"packet for {station_id!r} ({kind}) fed to the pipeline of "
                f"{self.station.station_id!r} ({self.station.kind})"
            )
        n = len(values)
        if n == 0:
            return None
        end = t0 + (n - 1) * dt
        if end <= self.last_end + 1e-6:
            # wholly seen already: a redelivery
            self.duplicates += 1
            return None
        if t0 <= self.last_end + 1e-6:
            # overlaps what was seen: keep only the new tail
            skip = int(math.floor((self.last_end - t0) / dt + 1e-6)) + 1
            t0, values = t0 + skip * dt, values[skip:]
        return t0, values

    def batchable(self) -> list[tuple[StreamDetector, Any]]:
        """Each detector with its class's ``feed_many`` (None when it has none)."""
        if self._batchable is None:
            self._batchable = [(d, getattr(type(d), "feed_many", None)) for d in self.detectors]
        return self._batchable

    def advance(self, t0: float, dt: float, n: int) -> None:
        """Record a packet the detectors took."""
        self.last_end = t0 + (n - 1) * dt
        self.last_dt = dt
        self.packets += 1
        self.samples += n

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


def _feed(det: StreamDetector, station: StationInfo, t0: float, dt: float,
          values: FloatArray) -> list[Detection]:
    """``det.feed``, with any error that is not a DetectorError made a DetectorFault."""
    found = feed_guarded(det, station.station_id, t0, dt, values)
    if isinstance(found, DetectorError):
        raise found
    return found


@dataclass
class DetectorBank:
    """One :class:`StationPipeline` per station, created on first packet.

    ``params`` maps a detector name to its keyword arguments, and ``"name@station_id"`` to
    the arguments of one stream (``{"sta_lta@II.MSVF.10.LHZ": {"on": 8.0}}``).
    """

    detectors: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_DETECTORS))
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, StationPipeline] = field(default_factory=dict)
    #: the array state ``feed_many`` keeps for detectors that advance channels together
    groups: dict[Any, dict[Any, Any]] = field(default_factory=dict)

    def preload(self, kinds: Iterable[str]) -> None:
        """Import the detector classes of ``kinds`` now (a worker does it before it joins its
        group), not on the first packet of each kind."""
        for kind in set(kinds):
            for path in self.detectors.get(kind, ()):
                _load(path)

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

    def forget(self, station_id: str) -> None:
        """Drop the station's pipeline: its next packet starts it afresh. Its detectors
        leave the groups of ``feed_many`` first (their rows are freed)."""
        pipe = self.pipelines.pop(station_id, None)
        for det in pipe.detectors if pipe is not None else ():
            leave = getattr(det, "leave_group", None)
            if leave is not None:
                leave()

    def feed(self, station: StationInfo, t0: float, dt: float,
             values: FloatArray) -> list[Detection]:
        return self.pipeline(station).feed(station.station_id, station.kind, t0, dt, values)

    def feed_frame(self, station: StationInfo, t: float, lat: FloatArray, lon: FloatArray,
                   values: FloatArray) -> list[Detection]:
        return self.pipeline(station).feed_frame(station.station_id, t, lat, lon, values)

    def feed_many(self, packets: Sequence[tuple[StationInfo, float, float, FloatArray]]
                  ) -> list[Sequence[Detection] | DetectorError]:
        """Many packets (any stations; a station's packets in order), with the result of
        ``feed`` for each: its detections, or the error it raised (the other packets
        still go through). Detectors that have a ``feed_many`` (the STA/LTA picker) take
        their channels' packets in one call; the detections are those of feeding the
        packets one by one."""
        out: list[Sequence[Detection] | DetectorError] = [()] * len(packets)
        # the k-th packet of every station goes in round k
        sids = list(map(attrgetter("station_id"), map(itemgetter(0), packets)))
        rounds: list[list[int]] = [list(range(len(packets)))]
        if len(set(sids)) != len(sids):
            rounds = [[]]
            seen: dict[str, int] = {}
            for i, sid in enumerate(sids):
                k = seen.get(sid, 0)
                seen[sid] = k + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(i)
        pipelines = self.pipelines
        for items in rounds:
            batched: dict[Any, tuple[list[int], list[tuple[Any, float, float, FloatArray]]]]
            batched = {}
            todo: list[tuple[int, StationPipeline, float, float, int]] = []
            for i in items:
                station, t0, dt, values = packets[i]
                try:
                    pipe = pipelines.get(station.station_id)
                    if pipe is None:
                        pipe = self.pipeline(station)
                    ps = pipe.station
                    if not (station.station_id == ps.station_id and station.kind == ps.kind
                            and len(values)
                            and t0 > pipe.last_end + 1e-6):
                        fresh = pipe.fresh(station.station_id, station.kind, t0, dt, values)
                        if fresh is None:
                            continue
                        t0, values = fresh
                    dets_many = pipe.batchable()
                    if len(dets_many) > 1:
                        # several detectors: one by one, in order, stopping at the first
                        # that raises (as ``feed``)
                        dets_many = [(d, None) for d, _ in dets_many]
                    for det, many in dets_many:
                        if many is None:
                            found = _feed(det, station, t0, dt, values)
                            if found:
                                prev = out[i]
                                assert not isinstance(prev, DetectorError)
                                out[i] = [*prev, *found]
                        else:
                            entry = batched.get(many)
                            if entry is None:
                                entry = batched[many] = ([], [])
                            entry[0].append(i)
                            entry[1].append((det, t0, dt, values))
                except DetectorError as e:
                    out[i] = e
                    continue
                todo.append((i, pipe, t0, dt, len(values)))
            for many, (idx, calls) in batched.items():
                try:
                    results = many(calls, self.groups.setdefault(many, {}))
                except DetectorError:
                    raise
                except Exception as exc:  # a bug: every packet of the call is set aside
                    fault = DetectorFault(f"{type(calls[0][0]).__name__}.feed_many failed on "
                                          f"{len(calls)} packets: {type(exc).__name__}: {exc}")
                    fault.__cause__ = exc
                    results = [fault] * len(calls)
                for i, res in zip(idx, results, strict=True):
                    dets = out[i]
                    if isinstance(res, DetectorError):
                        if not isinstance(dets, DetectorError):
                            out[i] = res
                    elif res and not isinstance(dets, DetectorError):
                        out[i] = [*dets, *res]
            for i, pipe, t0, dt, n in todo:
                dets = out[i]
                if not isinstance(dets, DetectorError):
                    pipe.last_end = t0 + (n - 1) * dt
                    pipe.last_dt = dt
                    pipe.packets += 1
                    pipe.samples += n
                    if len(dets) > 1:
                        out[i] = sorted(dets, key=lambda d: (d.declared, d.key))
        return out
