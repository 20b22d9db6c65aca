"""The thin per-station wrapper around the detector kernels (like ``Trace.trigger``).

:class:`StationPipeline` owns the detectors of one station, checks every packet against
the stream it follows (station id, kind, order) and skips packets it has already seen, so a
redelivered packet after a crash changes nothing. :class:`DetectorBank` holds one pipeline
per station and creates them on first sight.

What was fed is the stretch from the first sample to ``last_end`` less the gaps the station
skipped (a packet starting more than a sample interval after ``last_end``), of which the
last :data:`MAX_GAPS` are kept. A packet that reaches back to or before ``last_end`` is a
re-send when every one of its samples lies where samples were fed, at the interval they were
fed at: it is skipped (its new tail, if any, is fed). A packet with a sample where nothing
was fed (in a remembered gap, at another sample interval, before the first sample fed, or
before the oldest gap remembered, where it cannot be told) came after later samples: the
detectors have moved on and cannot take it, so it raises :class:`PacketError` (the stream
worker dead-letters it) rather than being dropped. Grid frames likewise: a frame at or
before the last one is a re-send if it is at the instant of one of the last
:data:`MAX_GAPS` frames fed, else it raises.
"""

from __future__ import annotations

import importlib
import math
from collections import deque
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
from streams.schemas import iso

# kind -> detector classes ("module:Class"); imported lazily so a kind without detectors
# costs nothing.
DEFAULT_DETECTORS: dict[str, tuple[str, ...]] = {
    "barometer": ("detectors.pressure:LambPulseDetector",),
    "tide_gauge": ("detectors.sealevel:TsunamiDetector",),
    "bottom_pressure": ("detectors.sealevel:TsunamiDetector",),
    "seismic": ("detectors.picker:StaLtaPicker",),
    "plume": ("detectors.plume:PlumeDetector",),
}


#: the gaps a station remembers; a packet reaching back before the oldest is not taken
MAX_GAPS = 256
#: seconds: two times closer than this are the same instant
_TOL = 1e-6
#: a sample of a re-sent packet this close after the last one fed (in sample intervals)
#: is that sample: a time near 1.6e9 s is good to 2.4e-7 s, which at 100 Hz is 2.4e-5 of
#: a sample (with 1e-6, (last - t0) / dt came out at 485.99999 instead of 486, the kept
#: tail began at the last sample fed and the re-send was refused)
_GRID_TOL = 1e-3


def _seen_upto(last: float, t0: float, dt: float) -> int:
    """The index of a packet's last sample at or before ``last`` (within ``_TOL``; the
    samples of a packet starting at ``t0`` lie on its grid of interval ``dt``; -1 if none
    is): the sample after it starts after ``last + _TOL``, as a new packet must."""
    return int(math.floor((last + _TOL - t0) / dt + _GRID_TOL))


def _iso(t: float) -> str:
    """For messages: :func:`streams.schemas.iso`, and a time it cannot write (not finite,
    beyond year 9999: milliseconds taken for seconds) as the number. Its ValueError escaped
    ``DetectorBank.feed_many``, and the other stations of the call got no results."""
    try:
        return iso(t)
    except (ValueError, OverflowError, OSError):
        return repr(t)


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
    #: the first time known to be fed: the first sample, or the end of the newest gap
    #: forgotten (what lies before it cannot be told fed or not)
    known_from: float = math.inf
    #: the stretches skipped between packets, oldest first: (last sample before, first
    #: sample after); at most MAX_GAPS
    gaps: deque[tuple[float, float]] = field(default_factory=deque, repr=False)
    #: a grid station's (``feed_frame``): the instants of the last MAX_GAPS frames fed
    frames: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_GAPS),
                                 repr=False)
    #: gaps forgotten (the oldest, once MAX_GAPS were kept)
    forgotten: int = 0
    #: the stretches fed at one sample interval, oldest first, at most MAX_GAPS: [first
    #: sample, last sample, interval] (a packet reaching back at another interval is no
    #: re-send: its samples were never fed)
    rates: deque[list[float]] = field(default_factory=deque, repr=False)
    _batchable: list[tuple[StreamDetector, Any]] | None = field(default=None, repr=False)
    #: (detector, its class's ``feed_many``) when that is the station's only detector: the
    #: fast path of ``DetectorBank.feed_many`` (set by ``batchable``)
    _one: tuple[StreamDetector, Any] | None = field(default=None, repr=False)

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
        if not math.isfinite(t0):  # an inf start was taken, and the next packet overflowed
            raise PacketError(f"{self.station.station_id}: packet start {t0!r} is not finite")
        if t0 > self.last_end + _TOL:
            return t0, values
        # reaches back to what was fed: a re-send, unless a sample lies where none was fed
        if not (dt > 0 and math.isfinite(dt)):
            raise PacketError(f"{self.station.station_id}: sample interval {dt!r} must be > 0")
        end = t0 + (n - 1) * dt
        self.check_seen(t0, dt, n, end)
        self.check_rate(t0, dt, end)
        if end <= self.last_end + _TOL:
            # wholly seen already: a redelivery
            self.duplicates += 1
            return None
        # overlaps what was seen: keep only the new tail
        skip = _seen_upto(self.last_end, t0, dt) + 1
        return t0 + skip * dt, values[skip:]

    def check_seen(self, t0: float, dt: float, n: int, end: float) -> None:
        """Raise :class:`PacketError` if a sample of the packet at or before ``last_end``
        lies where nothing was fed."""
        last = self.last_end
        head = min(n - 1, _seen_upto(last, t0, dt))  # its last sample <= last
        where = ""
        if t0 < self.known_from - _TOL:
            where = (f"before {_iso(self.known_from)}, the first sample it was fed"
                     if not self.forgotten else
                     f"before {_iso(self.known_from)}, the oldest stretch it remembers")
        else:
            head_end = t0 + head * dt
            for g0, g1 in reversed(self.gaps):
                if g1 <= t0 + _TOL:
                    break
                if g0 >= head_end - _TOL:
                    continue
                # the packet's first sample after g0
                k = max(0, int(math.floor((g0 + _TOL - t0) / dt)) + 1)
                if k <= head and t0 + k * dt < g1 - _TOL:
                    where = f"in the gap {_iso(g0)}..{_iso(g1)} it skipped"
                    break
        if where:
            raise PacketError(
                f"{self.station.station_id}: packet {_iso(t0)}..{_iso(end)} has samples "
                f"{where}, but the station has reached {_iso(last)}: it came after later "
                "samples and the detectors cannot take it"
            )

    def check_rate(self, t0: float, dt: float, end: float) -> None:
        """Raise :class:`PacketError` if the packet reaches back over a stretch fed at
        another sample interval: 1-min DART data after the 15-min data of the same hours,
        or a 0.5-s re-send of a 1-s stretch, was counted as a re-send and dropped, though
        none of its samples had been fed."""
        for first, last, fed_dt in reversed(self.rates):
            if last < t0 - _TOL:
                break
            if first > min(end, self.last_end) + _TOL or abs(dt - fed_dt) <= 1e-9 * fed_dt:
                continue
            raise PacketError(
                f"{self.station.station_id}: packet {_iso(t0)}..{_iso(end)} at a sample "
                f"interval of {dt:g} s reaches back over {_iso(first)}..{_iso(last)}, fed at "
                f"{fed_dt:g} s: its samples were never fed, and the station has reached "
                f"{_iso(self.last_end)}: the detectors cannot take it")

    def batchable(self) -> list[tuple[StreamDetector, Any]]:
        """Each detector with its class's ``feed_many`` (None when it has none)."""
        if self._batchable is None:
            self._batchable = [(d, getattr(type(d), "feed_many", None)) for d in self.detectors]
            if len(self._batchable) == 1 and self._batchable[0][1] is not None:
                self._one = self._batchable[0]
        return self._batchable

    def advance(self, t0: float, dt: float, n: int) -> None:
        """Record a packet the detectors took (its samples start after ``last_end``)."""
        after = t0 - self.last_end
        # more than a sample interval (the smaller of the two) after the last sample: the
        # first packet, or a stretch skipped (a NaN last_dt compares false)
        skipped = after > dt + _TOL or after > self.last_dt + _TOL
        if skipped:
            self._skipped(t0)
        end = t0 + (n - 1) * dt
        rates = self.rates
        if skipped or not rates or abs(dt - rates[-1][2]) > 1e-9 * dt:
            rates.append([t0, end, dt])
            if len(rates) > MAX_GAPS:
                rates.popleft()
        else:
            rates[-1][1] = end
        self.last_end = end
        self.last_dt = dt
        self.packets += 1
        self.samples += n

    def _skipped(self, t0: float) -> None:
        last = self.last_end
        if last == -math.inf:
            self.known_from = t0
            return
        gaps = self.gaps  # a stretch skipped: remember it
        if len(gaps) >= MAX_GAPS:
            self.known_from = gaps.popleft()[1]
            self.forgotten += 1
        gaps.append((last, t0))

    def feed_frame(self, station_id: str, t: float, lat: FloatArray, lon: FloatArray,
                   values: FloatArray) -> list[Detection]:
        """A gridded frame (plume products): only for detectors that take frames."""
        if station_id != self.station.station_id:
            raise PacketError(f"frame for {station_id!r} fed to the pipeline of "
                              f"{self.station.station_id!r}")
        if not t > self.last_end + _TOL:
            # a re-sent frame, or one that came after later frames: not taken
            times = self.frames
            if any(abs(t - f) <= _TOL for f in times):
                self.duplicates += 1
                return []
            raise PacketError(
                f"{self.station.station_id}: frame at {_iso(t)} is not one of the "
                f"{len(times)} frames it remembers being fed, but the station has reached "
                f"{_iso(self.last_end)}: it came after later frames and the detector cannot "
                "take it"
            )
        out: list[Detection] = []
        for det in self.detectors:
            feed = getattr(det, "feed_frame", None)
            if feed is None:
                raise PacketError(f"{self.station.station_id}: detector {det.name} takes "
                                  "time series, not grid frames")
            out.extend(feed(t, lat, lon, values))
        self.frames.append(t)
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
            p = self.pipelines[station.station_id] = StationPipeline(
                station, self._detectors(station))
        return p

    def _detectors(self, station: StationInfo) -> list[StreamDetector]:
        dets = []
        for path in self.detectors.get(station.kind, ()):
            cls = _load(path)
            # "name@station_id" overrides "name" for one stream
            params = {**self.params.get(cls.name, {}),
                      **self.params.get(f"{cls.name}@{station.station_id}", {})}
            dets.append(cls(station, **params))
        return dets

    def horizon_s(self, station: StationInfo) -> float:
        """The longest ``horizon_s`` of the station's detectors (0 for a kind without any;
        inf if one does not say): how much of its record before a takeover rebuilds them."""
        return max((getattr(d, "horizon_s", math.inf) for d in self._detectors(station)),
                   default=0.0)

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
                # the usual packet: a known station (the same StationInfo), new samples, one
                # detector that takes many packets at once
                pipe = pipelines.get(station.station_id)
                if (pipe is not None and pipe._one is not None and pipe.station is station
                        and len(values) and t0 > pipe.last_end + _TOL):
                    det, many = pipe._one
                    entry = batched.get(many)
                    if entry is None:
                        entry = batched[many] = ([], [])
                    entry[0].append(i)
                    entry[1].append((det, t0, dt, values))
                    todo.append((i, pipe, t0, dt, len(values)))
                    continue
                try:
                    if pipe is None:
                        pipe = self.pipeline(station)
                    ps = pipe.station
                    if not (station.station_id == ps.station_id and station.kind == ps.kind
                            and len(values)
                            and t0 > pipe.last_end + _TOL):
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
                    if not res:
                        continue  # no detections (an error is never falsy)
                    dets = out[i]
                    if isinstance(res, DetectorError):
                        if not isinstance(dets, DetectorError):
                            out[i] = res
                    elif res and not isinstance(dets, DetectorError):
                        out[i] = [*dets, *res]
            for i, pipe, t0, dt, n in todo:
                dets = out[i]
                if not isinstance(dets, DetectorError):
                    pipe.advance(t0, dt, n)
                    if len(dets) > 1:
                        out[i] = sorted(dets, key=lambda d: (d.declared, d.key))
        return out
