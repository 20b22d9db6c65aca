"""Associate detections from many stations and sensor kinds into incidents.

The incidents are a pure function of the *set* of detections seen so far: detections are
taken in order of the event time they were declared (``declared``, then ``key``), and each
one that changes an incident issues a new revision stamped with that event time. So a
replay at any speed, over any number of partitions and workers, ends with the same
revisions; when a detection arrives late (after others declared later), the revisions from
its declaration onward are recomputed and re-issued under the same (incident_id, revision)
keys as corrections.

Rules (documented in docs/design/association.md):

* Pressure pulses (``lamb_pulse``) join an existing pressure-front incident when their
  onset fits its moveout (|residual| <= ``join_tolerance_s``); otherwise the unassigned
  pulses are offered to the front locator and, once it finds ``min_stations`` consistent
  ones, they become a new ``volcanic_eruption`` incident. Each revision carries the source
  solution and the Lamb-wave ETA of every tide gauge and DART in the registry (a watch).
* Sea-level detections confirm a watch when their onset falls between
  ``eta - watch_lead_s`` and the ocean-tsunami arrival (distance / ``tsunami_speed_min``)
  plus ``watch_tail_s``; otherwise they gather into a ``tsunami`` incident (one per
  ``cluster_window_s``) located, until more is known, at the first station.
* Plume detections join the eruption whose source is within ``plume_radius_km``, or open a
  ``volcanic_eruption`` incident located at the plume.
* Seismic picks are located into seismic events (:mod:`detectors.seismic`); an event whose
  epicentre is within ``seismic_radius_km`` of an eruption's source and whose origin time
  is within ``seismic_window_s`` of the eruption's joins it (evidence ``seismic``): an
  eruption's seismic signal and its pressure front are one incident. A seismic event alone
  opens no incident (earthquake alerting is not tocsin's policy yet).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from detectors.base import Detection, StationInfo
from detectors.front import FrontSolution, locate_front
from detectors.geo import great_circle_km
from detectors.seismic import RETRACTED, SeismicEvent, SeismicParams, associate_seismic
from streams.schemas import Forecast, IncidentRevision

PRESSURE_DETECTORS = ("lamb_pulse",)
SEA_LEVEL_KINDS = ("tide_gauge", "bottom_pressure")
FORECAST_KINDS = ("tide_gauge", "bottom_pressure")


@dataclass(frozen=True)
class AssociationParams:
    min_stations: int = 4
    join_tolerance_s: float = 600.0
    pick_window_s: float = 6 * 3600.0
    watch_lead_s: float = 1800.0
    watch_tail_s: float = 3 * 3600.0
    tsunami_speed_min: float = 150.0
    cluster_window_s: float = 24 * 3600.0
    plume_radius_km: float = 300.0
    plume_window_s: float = 6 * 3600.0
    plume_prior_km: float = 30.0  # sigma of the plume position as a prior on the source
    seismic_radius_km: float = 150.0
    seismic_window_s: float = 1800.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Incident:
    incident_id: str
    type: str
    created: float
    picks: list[Detection] = field(default_factory=list)
    sea_level: list[Detection] = field(default_factory=list)
    plumes: list[Detection] = field(default_factory=list)
    solution: FrontSolution | None = None
    seismic: SeismicEvent | None = None
    lat: float = math.nan
    lon: float = math.nan
    origin_time: float = math.nan
    speed: float = math.nan


def _incident_id(kind: str, first: Detection) -> str:
    stamp = datetime.fromtimestamp(first.onset, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha1(first.key.encode()).hexdigest()[:6]
    return f"{kind}-{stamp}-{digest}"


class Associator:
    """Incremental front end of :func:`associate`: ``add`` returns new or corrected revisions."""

    def __init__(self, registry: Iterable[StationInfo],
                 params: AssociationParams | None = None,
                 seismic: SeismicParams | None = None) -> None:
        self.registry = sorted(
            (s for s in registry if s.kind in FORECAST_KINDS), key=lambda s: s.station_id
        )
        self.params = params or AssociationParams()
        self.seismic = seismic or SeismicParams()
        self._dets: list[tuple[float, str, Detection]] = []
        self._keys: set[str] = set()
        self._published: dict[str, IncidentRevision] = {}
        self._cache: dict[tuple[str, ...], FrontSolution | None] = {}
        self._forecasts: dict[tuple[float, ...], tuple[Forecast, ...]] = {}
        self._seismic_cache: dict[tuple[str, ...], list[SeismicEvent]] = {}
        self._seismic: dict[str, SeismicEvent] = {}
        # event id -> (what the association made of it, the last revision handed out)
        self._seismic_sent: dict[str, tuple[tuple[Any, ...], SeismicEvent]] = {}
        self._latest = -math.inf  # the newest detection's declaration time

    def add(self, det: Detection) -> list[IncidentRevision]:
        """New, corrected and retracted revisions after ``det`` (fed in declared order,
        only new revisions come out; a late detection may correct or retract earlier ones).
        """
        if det.key in self._keys:
            return []  # a redelivered detection changes nothing
        self._keys.add(det.key)
        self._latest = max(self._latest, det.declared)
        bisect.insort(self._dets, (det.declared, det.key, det))
        self._seismic.clear()
        current = {r.key: r for r in associate((d for _, _, d in self._dets), self.registry,
                                               self.params, cache=self._cache,
                                               forecast_cache=self._forecasts,
                                               seismic_cache=self._seismic_cache,
                                               seismic_out=self._seismic,
                                               seismic=self.seismic)}
        changed = []
        for key, old in list(self._published.items()):
            if key not in current:
                # formed from an incomplete set: withdrawn under the same key
                del self._published[key]
                changed.append(replace(old, status=RETRACTED, detections=(), forecasts=()))
        for key, rev in current.items():
            prev = self._published.get(key)
            if prev is None or not prev.same_as(rev):
                self._published[key] = rev
                changed.append(rev)
        return changed

    def revisions(self) -> list[IncidentRevision]:
        return sorted(self._published.values(), key=lambda r: (r.issued, r.key))

    def take_seismic(self) -> list[SeismicEvent]:
        """Seismic event revisions not handed out yet (the latest of each event), and a
        ``retracted`` revision for each event handed out that the association no longer
        has (a pick that came late re-formed it under another id). Revision numbers
        handed out for an event only grow."""
        new = []
        for eid, (made, last) in list(self._seismic_sent.items()):
            if eid not in self._seismic and last.status != RETRACTED:
                gone = replace(last, revision=last.revision + 1, status=RETRACTED,
                               issued=max(last.issued, self._latest), magnitude=None,
                               picks=())
                self._seismic_sent[eid] = (made, gone)
                new.append(gone)
        for eid, e in self._seismic.items():
            made = (e.revision, e.issued, tuple(d.key for d in e.picks))
            sent = self._seismic_sent.get(eid)
            if sent is not None and sent[0] == made and sent[1].status != RETRACTED:
                continue
            if sent is not None and e.revision <= sent[1].revision:
                # back after a retraction, or made again from other picks
                e = replace(e, revision=sent[1].revision + 1)
            self._seismic_sent[eid] = (made, e)
            new.append(e)
        return sorted(new, key=lambda e: (e.issued, e.event_id))


def associate(dets: Iterable[Detection], registry: list[StationInfo],
              params: AssociationParams | None = None, *,
              cache: dict[tuple[str, ...], FrontSolution | None] | None = None,
              seismic_cache: dict[tuple[str, ...], list[SeismicEvent]] | None = None,
              seismic_out: dict[str, SeismicEvent] | None = None,
              seismic: SeismicParams | None = None,
              forecast_cache: dict[tuple[float, ...], tuple[Forecast, ...]] | None = None,
              ) -> list[IncidentRevision]:
    """All incident revisions for a set of detections (taken in declaration order);
    ``seismic_out`` receives the latest revision of every seismic event, located (and with
    ``seismic.gains``, sized) with ``seismic``."""
    seismic = seismic or SeismicParams()
    p = params or AssociationParams()
    cache = {} if cache is None else cache
    seismic_cache = {} if seismic_cache is None else seismic_cache
    forecast_cache = {} if forecast_cache is None else forecast_cache
    ordered = sorted(dets, key=lambda d: (d.declared, d.key))
    incidents: list[_Incident] = []
    unassigned: list[Detection] = []
    revisions: list[IncidentRevision] = []
    last: dict[str, IncidentRevision] = {}

    def locate(picks: list[Detection],
               prior: tuple[float, float, float] | None = None) -> FrontSolution | None:
        key = (*sorted(d.key for d in picks), repr(prior))
        if key not in cache:
            cache[key] = locate_front(picks, min_stations=p.min_stations, source_prior=prior)
        return cache[key]

    seismic_picks: list[Detection] = []
    events: dict[str, SeismicEvent] = {}  # the latest revision of each seismic event
    for det in ordered:
        touched: list[_Incident] = []
        if det.detector in PRESSURE_DETECTORS:
            inc = _add_pressure(det, incidents, unassigned, p, locate)
            if inc is not None:
                _attach_seismic(inc, events.values(), p)
                touched.append(inc)
        elif det.kind in SEA_LEVEL_KINDS:
            touched.extend(i for i in [_add_sea_level(det, incidents, registry, p)] if i)
        elif det.kind == "plume":
            inc = _add_plume(det, incidents, p)
            if inc is not None:
                _attach_seismic(inc, events.values(), p)
                touched.append(inc)
        elif det.kind == "seismic":
            seismic_picks.append(det)
            skey = tuple(d.key for d in seismic_picks)
            if skey not in seismic_cache:
                seismic_cache[skey] = associate_seismic(seismic_picks, seismic)
            latest = {e.event_id: e for e in seismic_cache[skey]}
            new = [e for k, e in latest.items()
                   if k not in events or events[k].revision != e.revision]
            events = latest
            for ev in new:
                for inc in incidents:
                    if _attach_seismic(inc, [ev], p) and inc not in touched:
                        touched.append(inc)
        for inc in touched:
            rev = _revision(inc, det.declared, registry, last.get(inc.incident_id), p,
                            forecast_cache)
            if rev is not None:
                last[inc.incident_id] = rev
                revisions.append(rev)
    if seismic_out is not None:
        seismic_out.update(events)
    return revisions


def _attach_seismic(inc: _Incident, events: Iterable[SeismicEvent],
                    p: AssociationParams) -> bool:
    """Attach the newest revision of a matching seismic event to an eruption incident."""
    if inc.type != "volcanic_eruption" or math.isnan(inc.lat):
        return False
    ref = inc.origin_time if not math.isnan(inc.origin_time) else inc.created
    for ev in events:
        o = ev.origin
        if inc.seismic is not None and inc.seismic.event_id != ev.event_id:
            continue
        if (float(great_circle_km(inc.lat, inc.lon, o.lat, o.lon)) <= p.seismic_radius_km
                and abs(o.time - ref) <= p.seismic_window_s):
            inc.seismic = ev
            return True
    return False


def _add_pressure(det: Detection, incidents: list[_Incident], unassigned: list[Detection],
                  p: AssociationParams, locate: Any) -> _Incident | None:
    for inc in incidents:
        sol = inc.solution
        if sol is None or any(d.station_id == det.station_id for d in inc.picks):
            continue
        dist = float(great_circle_km(sol.lat, sol.lon, det.lat, det.lon))
        predicted = sol.origin_time + dist * 1000.0 / sol.speed_m_s
        if abs(det.onset - predicted) <= p.join_tolerance_s:
            new = locate([*inc.picks, det], _plume_prior(inc, p))
            inc.picks.append(det)
            if new is not None:
                _set_solution(inc, new)
            return inc
    unassigned.append(det)
    recent = [d for d in unassigned if det.onset - d.onset <= p.pick_window_s]
    # one pick per station: the earliest
    by_station: dict[str, Detection] = {}
    for d in sorted(recent, key=lambda d: (d.onset, d.key)):
        by_station.setdefault(d.station_id, d)
    if len(by_station) < p.min_stations:
        return None
    picks = list(by_station.values())
    # a plume already flagged (geostationary, minutes after an eruption) where the front
    # could have started: its position is a prior on the source
    first_onset = min(d.onset for d in picks)
    plume_inc = next((o for o in incidents if o.solution is None and o.plumes
                      and abs(o.created - first_onset) <= p.plume_window_s), None)
    sol = None
    if plume_inc is not None:
        sol = locate(picks, _plume_prior(plume_inc, p))
        if sol is not None and not _near(plume_inc, sol, p):
            sol = None
    if sol is None:
        sol = locate(picks)
    if sol is None or sol.n_used < p.min_stations:
        return None
    used = set(sol.used)
    members = [d for d in picks if d.station_id in used]
    for d in members:
        unassigned.remove(d)
    # a plume-only incident at this source (the plume flag came first) becomes this one
    for other in incidents:
        if other.solution is None and other.plumes and _near(other, sol, p):
            other.picks = members
            _set_solution(other, sol)
            return other
    first = min(members, key=lambda d: (d.onset, d.key))
    inc = _Incident(_incident_id("eruption", first), "volcanic_eruption", det.declared,
                    picks=members)
    _set_solution(inc, sol)
    incidents.append(inc)
    return inc


def _plume_prior(inc: _Incident, p: AssociationParams) -> tuple[float, float, float] | None:
    if not inc.plumes:
        return None
    first = min(inc.plumes, key=lambda d: (d.onset, d.key))
    if not (math.isfinite(first.lat) and math.isfinite(first.lon)):
        return None
    return (first.lat, first.lon, p.plume_prior_km)


def _near(plume_inc: _Incident, sol: FrontSolution, p: AssociationParams) -> bool:
    dist = float(great_circle_km(plume_inc.lat, plume_inc.lon, sol.lat, sol.lon))
    return dist <= p.plume_radius_km and abs(plume_inc.created - sol.origin_time) <= (
        p.plume_window_s
    )


def _set_solution(inc: _Incident, sol: FrontSolution) -> None:
    inc.solution = sol
    inc.lat, inc.lon, inc.origin_time, inc.speed = (
        sol.lat, sol.lon, sol.origin_time, sol.speed_m_s
    )


def _add_sea_level(det: Detection, incidents: list[_Incident], registry: list[StationInfo],
                   p: AssociationParams) -> _Incident | None:
    for inc in incidents:
        if inc.solution is None or math.isnan(det.lat):
            continue
        dist_m = float(great_circle_km(inc.lat, inc.lon, det.lat, det.lon)) * 1000.0
        eta = inc.origin_time + dist_m / inc.speed
        latest = inc.origin_time + dist_m / p.tsunami_speed_min + p.watch_tail_s
        if eta - p.watch_lead_s <= det.onset <= latest:
            if all(d.station_id != det.station_id for d in inc.sea_level):
                inc.sea_level.append(det)
                return inc
            return None
    for inc in incidents:
        if inc.type == "tsunami" and det.onset - inc.created <= p.cluster_window_s:
            if all(d.station_id != det.station_id for d in inc.sea_level):
                inc.sea_level.append(det)
                return inc
            return None
    inc = _Incident(_incident_id("tsunami", det), "tsunami", det.onset, sea_level=[det],
                    lat=det.lat, lon=det.lon)
    incidents.append(inc)
    return inc


def _add_plume(det: Detection, incidents: list[_Incident], p: AssociationParams
               ) -> _Incident | None:
    for inc in incidents:
        if inc.type != "volcanic_eruption" or math.isnan(inc.lat):
            continue
        dist = float(great_circle_km(inc.lat, inc.lon, det.lat, det.lon))
        ref = inc.origin_time if not math.isnan(inc.origin_time) else inc.created
        if dist <= p.plume_radius_km and abs(det.onset - ref) <= p.plume_window_s:
            inc.plumes.append(det)
            return inc
    inc = _Incident(_incident_id("eruption", det), "volcanic_eruption", det.onset,
                    plumes=[det], lat=det.lat, lon=det.lon)
    incidents.append(inc)
    return inc


def forecasts(lat: float, lon: float, origin_time: float, speed: float,
              registry: list[StationInfo]) -> tuple[Forecast, ...]:
    if not registry:
        return ()
    lats = np.array([s.lat for s in registry])
    lons = np.array([s.lon for s in registry])
    dist = np.asarray(great_circle_km(lat, lon, lats, lons), dtype=float)
    etas = origin_time + dist * 1000.0 / speed
    out = [Forecast(s.station_id, s.kind, float(e), float(d), s.lat, s.lon)
           for s, e, d in zip(registry, etas, dist, strict=True)]
    return tuple(sorted(out, key=lambda f: (f.eta, f.station_id)))


def _revision(inc: _Incident, issued: float, registry: list[StationInfo],
              previous: IncidentRevision | None, p: AssociationParams,
              forecast_cache: dict[tuple[float, ...], tuple[Forecast, ...]],
              ) -> IncidentRevision | None:
    sol = inc.solution
    evidence = []
    if sol is not None:
        evidence.append("pressure_front")
    if inc.plumes:
        evidence.append("plume")
    if inc.sea_level:
        evidence.append("sea_level")
    if inc.seismic is not None:
        evidence.append("seismic")
    fc: tuple[Forecast, ...] = ()
    if sol is not None:
        # one tuple per solution (the same one each time the set of detections is gone
        # through again): revisions then compare their forecasts by identity first
        where = (sol.lat, sol.lon, sol.origin_time, sol.speed_m_s)
        cached = forecast_cache.get(where)
        if cached is None:
            cached = forecast_cache[where] = forecasts(*where, registry)
        fc = cached
        status = "confirmed" if inc.sea_level else "watch"
    elif inc.type == "tsunami":
        status = "observed"
    else:
        status = "detected"
    seismic_picks = list(inc.seismic.picks) if inc.seismic is not None else []
    dets = sorted(d.key for d in [*inc.picks, *inc.sea_level, *inc.plumes, *seismic_picks])
    extra: dict[str, Any] = {}
    if inc.seismic is not None:
        ev = inc.seismic.as_dict()
        extra["seismic"] = {k: ev[k] for k in ("event_id", "revision", "lat", "lon",
                                               "depth_km", "origin_time", "rms_s", "herr_km",
                                               "stations")}
    if inc.plumes:
        top = max(inc.plumes, key=lambda d: (d.amplitude, d.key))
        extra["plume_height_km"] = round(top.amplitude, 3)
    if sol is not None:
        extra["params"] = p.as_dict()
    observed = {d.station_id: (round(d.lat, 4), round(d.lon, 4)) for d in inc.sea_level
                if math.isfinite(d.lat) and math.isfinite(d.lon)}
    if observed:  # where the sea level was seen to move (the alert's areas)
        extra["observed_at"] = [[sid, *observed[sid]] for sid in sorted(observed)]
    rev = IncidentRevision(
        incident_id=inc.incident_id,
        type=inc.type,
        revision=1 if previous is None else previous.revision + 1,
        issued=issued,
        status=status,
        origin_time=inc.origin_time,
        lat=inc.lat,
        lon=inc.lon,
        speed_m_s=inc.speed,
        detections=tuple(dets),
        stations_used=tuple(sorted(sol.used)) if sol is not None else tuple(
            sorted({d.station_id for d in inc.sea_level})),
        rejected=tuple(sorted(sol.rejected)) if sol is not None else (),
        rms_s=sol.rms_s if sol is not None else math.nan,
        forecasts=fc,
        confirmed=tuple(sorted(d.station_id for d in inc.sea_level)),
        evidence=tuple(evidence),
        extra=extra,
    )
    if previous is not None and _same_content(previous, rev):
        return None
    return rev


def _same_content(a: IncidentRevision, b: IncidentRevision) -> bool:
    # the wire forms but for the revision number and the issued time
    return a.same_as(b, issue=False)
