"""Seismic picks into located events: association, grid-search location, magnitude.

Like :mod:`detectors.association`, the events are a pure function of the *set* of picks
seen so far, taken in the event-time order in which they were declared, so a replay at any
speed gives the same revisions.

* **Travel times**: first-arriving P (any P-type phase: ``p``, ``P``, ``Pn``, ``Pdiff``)
  in iasp91 from ``obspy.taup``, tabulated once per process on a distance x depth grid and
  interpolated bilinearly.
* **Association**: a pick joins an event when its onset is within ``join_tolerance_s`` of
  the time predicted by the event's solution, or when the event relocates with it within the
  standard error below (a first solution from few stations can be far off); in either case
  only if the event can be located with it (the search grid within the table's 40 degrees of
  every station). Otherwise it waits among the unassigned picks. When ``min_stations``
  unassigned picks from different stations fall within ``max_span_s`` of each other and
  locate with a standard error under ``max_rms_s`` (the RMS residual corrected for the k
  unknowns fitted, ``rms * sqrt(n / (n - k))``), a horizontal uncertainty under
  ``max_herr_km`` and an azimuthal gap under ``max_gap_deg`` (picks from clustered stations,
  all on one side of the solution, wait for more), they become a new event. The worst pick
  is dropped while they do not fit, as long as every pick dropped leaves one more degree of
  freedom to check the rest: a chance subset of unrelated picks must not fit.
* **Location**: grid search over latitude, longitude and depth (coarse, then fine around
  the best node; with fewer than ``free_depth_picks`` picks the depth is fixed at
  ``default_depth_km``, or four picks would always fit four unknowns exactly); the origin
  time is the mean of ``onset - travel time`` at each node; the horizontal uncertainty is
  the largest distance from the best node to a node whose misfit is within Δχ² = 2.3
  (68 % for two parameters) with the pick error taken as ``max(rms, pick_sigma_s)``. The
  grid is square in the azimuthal equidistant frame of the first station (then of the
  coarse solution), so it covers as many kilometres east-west as north-south at any
  latitude and crosses the poles and the antimeridian; the reported longitude is in
  [-180, 180).
* **Magnitude**: a surface-wave style estimate per station from the picked wave's
  band-passed peak ``A`` (counts) and the station gain ``G`` (counts per metre of
  displacement in the pick band), at the band-centre period ``T``:
  ``M = log10(A / G * 1e6 / T) + 1.66 log10(Δ°) + 3.3`` (the IASPEI Ms_20 form); the
  event magnitude is the median of the stations, its uncertainty their standard deviation
  (``sigma_m``, 0.3 when only one station has a gain). Without gains there is no magnitude.
  The form is calibrated for teleseismic Rayleigh waves; at regional distances it is a
  rough size, stated as such (``magnitude_type = "Ms_picker"``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from detectors.base import Detection, FloatArray
from detectors.geo import around, great_circle_km, wrap_lon

KM_PER_DEG = 111.19492664455873

DISTANCES_DEG = np.arange(0.0, 40.01, 0.5)
DEPTHS_KM = np.array([0.0, 10.0, 20.0, 35.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0])


@dataclass(frozen=True)
class TravelTimes:
    """First-P travel time table (seconds) over ``distances`` (deg) x ``depths`` (km)."""

    distances: FloatArray
    depths: FloatArray
    seconds: FloatArray  # shape (len(depths), len(distances))

    def to_arrays(self) -> dict[str, FloatArray]:
        return {"distances": self.distances, "depths": self.depths, "seconds": self.seconds}

    @classmethod
    def from_arrays(cls, arrays: Any) -> TravelTimes:
        t = cls(np.asarray(arrays["distances"]), np.asarray(arrays["depths"]),
                np.asarray(arrays["seconds"]))
        if t.seconds.shape != (len(t.depths), len(t.distances)):
            raise ValueError(f"travel-time table of shape {t.seconds.shape} does not match "
                             f"{len(t.depths)} depths x {len(t.distances)} distances")
        return t

    def __call__(self, dist_deg: FloatArray, depth_km: float) -> FloatArray:
        if not self.depths[0] <= depth_km <= self.depths[-1]:
            raise ValueError(f"depth {depth_km} km outside the table "
                             f"({self.depths[0]}-{self.depths[-1]} km)")
        if np.any(dist_deg > self.distances[-1]):
            raise ValueError(f"distance {float(np.max(dist_deg)):.1f} deg beyond the table "
                             f"({self.distances[-1]} deg)")
        j = int(np.clip(np.searchsorted(self.depths, depth_km) - 1, 0, len(self.depths) - 2))
        w = (depth_km - self.depths[j]) / (self.depths[j + 1] - self.depths[j])
        a = np.interp(dist_deg, self.distances, self.seconds[j])
        b = np.interp(dist_deg, self.distances, self.seconds[j + 1])
        return np.asarray((1.0 - w) * a + w * b)


_TABLE: TravelTimes | None = None


def iasp91_p() -> TravelTimes:
    """The iasp91 first-P table: the one given to :func:`use_table`, else computed once per
    process with ``obspy.taup`` (about 10 s: callers with a cache load it with
    :meth:`TravelTimes.from_arrays` and hand it over)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = compute_iasp91_p()
    return _TABLE


def use_table(table: TravelTimes) -> None:
    global _TABLE
    _TABLE = table


def compute_iasp91_p() -> TravelTimes:
    from obspy.taup import TauPyModel

    model = TauPyModel("iasp91")
    table = np.empty((len(DEPTHS_KM), len(DISTANCES_DEG)))
    for i, h in enumerate(DEPTHS_KM):
        for k, d in enumerate(DISTANCES_DEG):
            arr = model.get_travel_times(source_depth_in_km=float(h),
                                         distance_in_degree=float(d), phase_list=["ttp"])
            table[i, k] = min(a.time for a in arr) if arr else math.nan
    if not np.isfinite(table).all():
        raise RuntimeError("iasp91: no P arrival at some table node")
    return TravelTimes(DISTANCES_DEG, DEPTHS_KM, table)


@dataclass(frozen=True)
class SeismicParams:
    min_stations: int = 4
    max_span_s: float = 240.0       # picks of one event at regional distances
    join_tolerance_s: float = 10.0
    max_rms_s: float = 2.5
    free_depth_picks: int = 6     # fewer picks: depth fixed at ``default_depth_km``
    default_depth_km: float = 33.0
    max_herr_km: float = 100.0     # a new event needs a solution this well constrained
    max_gap_deg: float = 270.0     # ... and stations on more than one side of it
    pick_sigma_s: float = 1.0
    search_radius_deg: float = 12.0
    gains: dict[str, float] = field(default_factory=dict)  # station -> counts per m

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "gains"}


@dataclass(frozen=True)
class Origin:
    lat: float
    lon: float
    depth_km: float
    time: float
    rms_s: float
    herr_km: float
    residuals: dict[str, float]  # pick key -> observed - predicted (s)
    distances_deg: dict[str, float]
    gap_deg: float = 360.0       # largest azimuth range without a station


@dataclass(frozen=True)
class Magnitude:
    value: float
    sigma: float
    station_count: int
    station_values: dict[str, float]
    type: str = "Ms_picker"


LOCATED = "located"
RETRACTED = "retracted"


@dataclass(frozen=True)
class SeismicEvent:
    """One revision of a located seismic event; a ``retracted`` revision withdraws it (its
    picks went to another event: a late pick changed the association), with no picks and
    the last origin published."""

    event_id: str
    revision: int
    issued: float  # event time of the pick that made this revision
    origin: Origin
    magnitude: Magnitude | None
    picks: tuple[Detection, ...]
    status: str = LOCATED

    @property
    def key(self) -> str:
        return f"{self.event_id}#{self.revision}"

    def as_dict(self) -> dict[str, Any]:
        o, m = self.origin, self.magnitude
        return {
            "event_id": self.event_id, "revision": self.revision, "issued": self.issued,
            "status": self.status,
            "lat": round(o.lat, 4), "lon": round(o.lon, 4), "depth_km": round(o.depth_km, 1),
            "origin_time": round(o.time, 3), "rms_s": round(o.rms_s, 3),
            "herr_km": round(o.herr_km, 1), "gap_deg": round(o.gap_deg, 1),
            "magnitude": None if m is None else round(m.value, 2),
            "magnitude_sigma": None if m is None else round(m.sigma, 2),
            "magnitude_type": None if m is None else m.type,
            "stations": sorted({d.station_id for d in self.picks}),
            "arrivals": [{
                "pick": d.key, "station_id": d.station_id, "onset": round(d.onset, 3),
                "amplitude": round(float(d.amplitude), 3),
                "residual_s": round(o.residuals[d.key], 3),
                "distance_deg": round(o.distances_deg[d.key], 4),
                "station_magnitude": None if m is None or d.station_id not in m.station_values
                else round(m.station_values[d.station_id], 2),
            } for d in self.picks],
        }


def _grid_misfit(lat: FloatArray, lon: FloatArray, depth: float, picks: list[Detection],
                 tt: TravelTimes) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(rms, origin time, distances) at every node for one depth."""
    slat = np.array([d.lat for d in picks])
    slon = np.array([d.lon for d in picks])
    t = np.array([d.onset for d in picks])
    dist = great_circle_km(lat[:, None], lon[:, None], slat[None, :], slon[None, :]) / KM_PER_DEG
    pred = tt(dist, depth)
    ot = np.mean(t[None, :] - pred, axis=1)
    res = t[None, :] - pred - ot[:, None]
    return np.sqrt(np.mean(res * res, axis=1)), ot, dist


def locate(picks: list[Detection], tt: TravelTimes | None = None,
           radius_deg: float = 12.0, pick_sigma_s: float = 1.0,
           fixed_depth_km: float | None = None) -> Origin:
    """Grid-search hypocentre of picks from distinct stations (see the module docstring)."""
    if len({d.station_id for d in picks}) != len(picks) or len(picks) < 3:
        raise ValueError(f"locate needs >= 3 picks from distinct stations, got "
                         f"{[d.station_id for d in picks]}")
    tt = tt or iasp91_p()
    first = min(picks, key=lambda d: d.onset)

    def grid(lat0: float, lon0: float, half: float, step: float) -> tuple[FloatArray, FloatArray]:
        # a box of lat/lon degrees shrank east-west with latitude (at 65 N, +-12 degrees of
        # longitude are +-560 km) and stopped at the pole
        n = int(round(half / step))
        off = np.arange(-n, n + 1) * step
        y, x = np.meshgrid(off, off, indexing="ij")
        return around(lat0, lon0, x.ravel(), y.ravel())

    def search(la: FloatArray, lo: FloatArray, depths: Iterable[float]
               ) -> tuple[float, float, float, float, FloatArray, float]:
        best: tuple[float, float, float, float, FloatArray, float] | None = None
        for h in depths:
            rms, ot, _ = _grid_misfit(la, lo, h, picks, tt)
            i = int(np.argmin(rms))
            if best is None or rms[i] < best[0]:
                best = (float(rms[i]), float(la[i]), float(lo[i]), float(h), rms, float(ot[i]))
        assert best is not None
        return best

    la, lo = grid(first.lat, first.lon, radius_deg, 0.25)
    coarse = tt.depths[tt.depths <= 200] if fixed_depth_km is None else [fixed_depth_km]
    rms, lat, lon, depth, rms_coarse, _ = search(la, lo, coarse)
    la_c, lo_c = la, lo
    la, lo = grid(lat, lon, 0.5, 0.02)
    depths = (np.arange(max(0.0, depth - 40.0), min(tt.depths[-1], depth + 40.0) + 0.1, 5.0)
              if fixed_depth_km is None else [fixed_depth_km])
    rms, lat, lon, depth, rms_grid, ot = search(la, lo, depths)
    sigma = max(rms, pick_sigma_s)
    n = len(picks)
    # the 68 % region (Δχ² <= 2.3), on the fine grid and, for a region wider than it, on
    # the coarse grid (at the coarse search's best depth)
    herr = 0.0
    for g_la, g_lo, g_rms in ((la, lo, rms_grid), (la_c, lo_c, rms_coarse)):
        inside = n * (g_rms ** 2 - rms ** 2) / sigma ** 2 <= 2.3
        if inside.any():
            herr = max(herr, float(np.max(great_circle_km(lat, lon, g_la[inside],
                                                          g_lo[inside]))))
    dist = great_circle_km(lat, lon, np.array([d.lat for d in picks]),
                           np.array([d.lon for d in picks])) / KM_PER_DEG
    pred = tt(dist, depth)
    res = {d.key: float(d.onset - ot - p) for d, p in zip(picks, pred, strict=True)}
    return Origin(lat=lat, lon=wrap_lon(lon), depth_km=depth, time=ot,
                  rms_s=rms, herr_km=max(herr, 1.0), residuals=res,
                  distances_deg={d.key: float(x) for d, x in zip(picks, dist, strict=True)},
                  gap_deg=azimuthal_gap(lat, lon, [(d.lat, d.lon) for d in picks]))


def azimuthal_gap(lat: float, lon: float, stations: list[tuple[float, float]]) -> float:
    """Largest azimuth range (degrees) seen from (lat, lon) with no station in it."""
    p1 = math.radians(lat)
    az = []
    for sla, slo in stations:
        p2, dl = math.radians(sla), math.radians(slo - lon)
        y = math.sin(dl) * math.cos(p2)
        x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
        az.append(math.degrees(math.atan2(y, x)) % 360.0)
    az.sort()
    gaps = [b - a for a, b in zip(az, az[1:], strict=False)] + [360.0 - az[-1] + az[0]]
    return max(gaps)


def magnitude(origin: Origin, picks: list[Detection], gains: dict[str, float]
              ) -> Magnitude | None:
    values: dict[str, float] = {}
    for d in picks:
        g = gains.get(d.station_id)
        dist = origin.distances_deg[d.key]
        if not g or not d.amplitude or dist <= 0:
            continue
        fmin, fmax = d.extra.get("band_hz") or (0.05, 0.2)
        period = 1.0 / math.sqrt(fmin * fmax)
        a_um = abs(d.amplitude) / g * 1e6
        values[d.station_id] = math.log10(a_um / period) + 1.66 * math.log10(dist) + 3.3
    if not values:
        return None
    v = np.array(list(values.values()))
    sigma = float(np.std(v, ddof=1)) if len(v) > 1 else 0.3
    return Magnitude(float(np.median(v)), sigma, len(v), values)


def _event_id(first: Detection) -> str:
    stamp = datetime.fromtimestamp(first.onset, UTC).strftime("%Y%m%dT%H%M%S")
    return f"seismic-{stamp}-{hashlib.sha1(first.key.encode()).hexdigest()[:6]}"


@dataclass
class _Event:
    event_id: str
    picks: list[Detection]
    origin: Origin
    revision: int = 0
    first_onset: float = math.inf  # the earliest pick's onset: no pick later than
    # first_onset + max_span_s joins


# the longest first-P travel time of the table (40 deg: about 460 s), with room to spare: an
# origin time is never more than this before the picks it was located from
MAX_P_TRAVEL_S = 900.0


class SeismicAssociation:
    """The state of :func:`associate_seismic`, taking picks one at a time in declaration
    order (``add``); ``copy`` is a checkpoint to go on from, ``retire`` drops what no later
    pick can join."""

    def __init__(self, params: SeismicParams | None = None,
                 tt: TravelTimes | None = None) -> None:
        self.p = params or SeismicParams()
        self._tt = tt
        self.events: list[_Event] = []
        self.pending: list[Detection] = []
        self._stations: set[str] = set()  # until min_stations: no table is needed yet

    def copy(self) -> SeismicAssociation:
        new = SeismicAssociation(self.p, self._tt)
        new.events = [replace(ev, picks=list(ev.picks)) for ev in self.events]
        new.pending = list(self.pending)
        new._stations = set(self._stations)
        return new

    def retire(self, floor: float) -> None:
        """Drop the events and pending picks that no pick with an onset at or after
        ``floor`` can join (their onsets are more than ``max_span_s`` before it)."""
        span = self.p.max_span_s
        self.events = [ev for ev in self.events if ev.first_onset + span >= floor]
        self.pending = [d for d in self.pending if d.onset + span >= floor]

    def add(self, det: Detection) -> SeismicEvent | None:
        """The revision ``det`` makes (it joined or formed an event), else None."""
        p = self.p
        if len(self._stations) < p.min_stations:
            self._stations.add(det.station_id)
            if len(self._stations) < p.min_stations:
                self.pending.append(det)  # fewer stations than an event needs: it waits
                return None
        tt = self._tt = self._tt or iasp91_p()
        joined = None
        for ev in self.events:
            if (det.onset - ev.first_onset > p.max_span_s
                    or any(d.station_id == det.station_id for d in ev.picks)):
                continue
            o = ev.origin
            dist = great_circle_km(o.lat, o.lon, det.lat, det.lon) / KM_PER_DEG
            if dist > tt.distances[-1]:
                continue
            predicted = o.time + float(tt(np.array([dist]), o.depth_km)[0])
            try:
                trial = _locate([*ev.picks, det], p, tt)
            except ValueError:
                continue  # the stations are too far apart for the table: not this event
            # a young solution can be far off: the pick joins if the event relocates with it
            if (abs(det.onset - predicted) <= p.join_tolerance_s
                    or _fits(trial, len(ev.picks) + 1, p)):
                joined, origin = ev, trial
                break
        if joined is not None:
            joined.picks.append(det)
            joined.first_onset = min(joined.first_onset, det.onset)
            joined.origin = origin
            return self._emit(joined, det.declared)
        self.pending.append(det)
        found = _form_event(self.pending, p, tt)
        if found is None:
            return None
        used, origin = found
        first = min(used, key=lambda d: d.onset)
        ev = _Event(_event_id(first), used, origin, first_onset=first.onset)
        self.events.append(ev)
        self.pending = [d for d in self.pending if d not in used]
        return self._emit(ev, det.declared)

    def _emit(self, ev: _Event, issued: float) -> SeismicEvent:
        ev.revision += 1
        mag = magnitude(ev.origin, ev.picks, self.p.gains)
        return SeismicEvent(ev.event_id, ev.revision, issued, ev.origin, mag,
                            tuple(sorted(ev.picks, key=lambda d: d.onset)))


def associate_seismic(dets: Iterable[Detection], params: SeismicParams | None = None,
                      tt: TravelTimes | None = None) -> list[SeismicEvent]:
    """Every revision of every seismic event, from the picks in ``dets``."""
    state = SeismicAssociation(params, tt)
    out = []
    for det in sorted((d for d in dets if d.kind == "seismic"),
                      key=lambda d: (d.declared, d.key)):
        ev = state.add(det)
        if ev is not None:
            out.append(ev)
    return out


def _fits(o: Origin, n: int, p: SeismicParams) -> bool:
    """Standard error of the picks, corrected for the unknowns fitted, within max_rms_s."""
    k = 3 if n < p.free_depth_picks else 4
    return n > k and o.rms_s * math.sqrt(n / (n - k)) <= p.max_rms_s


def _locate(picks: list[Detection], p: SeismicParams, tt: TravelTimes) -> Origin:
    fixed = p.default_depth_km if len(picks) < p.free_depth_picks else None
    return locate(picks, tt, p.search_radius_deg, p.pick_sigma_s, fixed)


def _form_event(pending: list[Detection], p: SeismicParams, tt: TravelTimes
                ) -> tuple[list[Detection], Origin] | None:
    """The newest pick's cluster, if ``min_stations`` of it locate consistently."""
    newest = pending[-1]
    near = [d for d in pending if abs(d.onset - newest.onset) <= p.max_span_s]
    # one pick per station: the earliest
    by_station: dict[str, Detection] = {}
    for d in sorted(near, key=lambda d: d.onset):
        by_station.setdefault(d.station_id, d)
    cand = list(by_station.values())
    if newest not in cand:
        return None
    dropped = 0
    while len(cand) >= p.min_stations:
        try:
            origin = _locate(cand, p, tt)
        except ValueError:
            return None
        if _fits(origin, len(cand), p):
            # well fitting but poorly constrained (stations in a line or clustered): wait
            ok = origin.herr_km <= p.max_herr_km and origin.gap_deg <= p.max_gap_deg
            return (cand, origin) if ok else None
        worst = max(cand, key=lambda d: abs(origin.residuals[d.key]))
        k = 3 if len(cand) - 1 < p.free_depth_picks else 4
        if worst is newest or len(cand) - 1 - k < dropped + 2:
            return None  # each pick dropped must leave a degree of freedom to check it
        dropped += 1
        cand.remove(worst)
    return None
