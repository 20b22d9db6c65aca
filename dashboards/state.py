"""What the duty dashboard shows, kept up to date from the stream.

:class:`LiveState` is fed every message the collector reads (observation packets,
detections, incident revisions, alerts) and answers the dashboard's questions: the state of
each station at the current event time, the incidents with their revisions and alerts, a
station's recent time series with its detections, and feed health. Event time is the
latest sample time seen; a station's ``behind_s`` is how far its last sample is behind it
(the feed-health measure that works the same live and in a replay).

Station states:

* ``detecting`` - a detection with onset in the last ``detecting_s`` of event time;
* ``gap`` - the last packet had missing samples (NaN) at its end;
* ``late`` - no data for ``late_factor`` packet lengths of event time;
* ``ok`` - otherwise; ``waiting`` before the first packet.

The view runs as long as its feed does (months, live): it keeps ``keep_s`` of event time
(7 days by default). Detections declared longer ago, incidents whose latest revision is
older, their alerts and old seismic events leave it, checked once an hour of event time
(the store and the CAP files keep them; ``/api/alerts/{id}.xml`` then reads the store).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detectors.base import Detection, DetectorError, StationInfo
from responders.alerting import is_number
from responders.stage import in_order
from streams.schemas import MAX_AHEAD_S, AlertMessage, IncidentRevision, ObservationPacket, iso

SERIES_BIN_S = 60.0
SERIES_KEEP_S = 12 * 3600.0
#: event-time seconds between two prunings of what is older than ``keep_s``
PRUNE_EVERY_S = 3600.0
#: live: how far past the wall clock the view's event time may go
AHEAD_S = 600.0
#: stations without coordinates: how many the view remembers, and names in a snapshot
UNPLACED_MAX, UNPLACED_SHOWN = 10_000, 20


@dataclass
class _Station:
    info: StationInfo
    last_end: float = -math.inf
    last_packet_len: float = 600.0
    packets: int = 0
    samples: int = 0
    missing: int = 0
    gap_at_end: bool = False
    #: (bin start, sum, count) of the 1-min bins, in time order
    series: deque[tuple[float, float, int]] = field(default_factory=deque)
    detections: list[Detection] = field(default_factory=list)


class LiveState:
    """Thread-safe live view of one run (see the module docstring)."""

    def __init__(self, *, detecting_s: float = 3 * 3600.0, late_factor: float = 3.0,
                 keep_s: float = 7 * 86400.0, clock: Callable[[], float] | None = None,
                 ) -> None:
        if not keep_s > detecting_s:
            raise ValueError(f"keep_s={keep_s} must exceed detecting_s={detecting_s}")
        self.detecting_s = detecting_s
        self.late_factor = late_factor
        self.keep_s = keep_s
        #: live: the wall clock, so that a feed that stops shows as late (in a replay the
        #: time is the event time reached)
        self.clock = clock
        self._pruned = -math.inf  # event time of the last pruning
        self._lock = threading.Lock()
        self._stations: dict[str, _Station] = {}
        self._revisions: dict[str, dict[int, IncidentRevision]] = {}
        self._alerts: dict[str, AlertMessage] = {}
        self._detections: dict[str, Detection] = {}
        self._seismic: dict[str, dict[str, Any]] = {}  # event id -> latest revision body
        self.event_time = -math.inf
        self.version = 0
        self.started = time.time()
        self.title = ""
        self.lag: dict[str, Any] | None = None
        #: stations the view could not place: unknown, and their packets have no coordinates
        self.unplaced: set[str] = set()
        #: whether the view's source (Kafka) answers: {"ok", "detail", "since"}, or None
        self.source: dict[str, Any] | None = None

    def on_source(self, ok: bool, detail: str) -> None:
        """The source of the view answers (``ok``) or not, since now if that changed: a view
        whose source went away must not look live."""
        with self._lock:
            if self.source is not None and self.source["ok"] == ok:
                return
            self.source = {"ok": ok, "detail": detail, "since": time.time()}
            self.version += 1

    def on_lag(self, lag: dict[str, Any]) -> None:
        """The workers' consumer lag (from :func:`streams.lag.monitor_lag`)."""
        with self._lock:
            self.lag = dict(lag)
            self.version += 1

    # ------------------------------------------------------------------ input
    def add_station(self, info: StationInfo) -> None:
        with self._lock:
            self._stations.setdefault(info.station_id, _Station(info))
            self.unplaced.discard(info.station_id)
            self.version += 1

    def on_packet(self, pkt: ObservationPacket) -> None:
        with self._lock:
            st = self._stations.get(pkt.station_id) or self._place(
                pkt.station_id, pkt.kind, pkt.lat, pkt.lon, pkt.units)
            if st is None:
                return
            vals = np.asarray(pkt.values, dtype=float)
            t = pkt.start + pkt.sample_interval * np.arange(len(vals))
            # what the view has not seen: a redelivered packet (Kafka delivers at least
            # once) or the head of an overlapping one went into the series and the counts
            # again, back in time (the detectors take a station's samples in order too)
            if (self.clock is not None and len(t)
                    and t[-1] > self.clock() + MAX_AHEAD_S):
                # live: a packet the workers refuse as a timing fault (a station's clock a
                # day or more ahead): taken, it would hide every correct packet after it
                return
            new = t > st.last_end + 1e-6
            vals, t = vals[new], t[new]
            n = len(vals)
            if n == 0:
                return
            end = float(t[-1])
            st.packets += 1
            st.samples += n
            st.missing += int(np.count_nonzero(~np.isfinite(vals)))
            st.gap_at_end = not math.isfinite(float(vals[-1]))
            st.last_end = end
            st.last_packet_len = len(pkt.values) * pkt.sample_interval
            idx = np.floor(t / SERIES_BIN_S)
            ok = np.isfinite(vals)
            for b in np.unique(idx[ok]):
                sel = ok & (idx == b)
                at, total, count = float(b * SERIES_BIN_S), float(vals[sel].sum()), int(sel.sum())
                if st.series and st.series[-1][0] == at:  # a minute split between packets
                    _, total0, count0 = st.series.pop()
                    total, count = total + total0, count + count0
                st.series.append((at, total, count))
            while st.series and st.series[0][0] < end - SERIES_KEEP_S:
                st.series.popleft()
            self._advance(end)

    def on_detection(self, det: Detection) -> None:
        with self._lock:
            self._detections[det.key] = det
            # before the station's first packet (a dashboard reads the topics side by
            # side): placed from the detection
            st = self._stations.get(det.station_id) or self._place(
                det.station_id, det.kind, det.lat, det.lon, det.units)
            if st is not None:
                st.detections = [d for d in st.detections if d.key != det.key] + [det]
            self._advance(det.declared)

    def on_revision(self, rev: IncidentRevision) -> None:
        with self._lock:
            revs = self._revisions.setdefault(rev.incident_id, {})
            if rev.status == "retracted":
                revs.pop(rev.revision, None)
                if not revs:
                    self._revisions.pop(rev.incident_id, None)
            else:
                revs[rev.revision] = rev
            self._advance(rev.issued)

    def on_seismic(self, body: dict[str, Any]) -> None:
        """A seismic event revision (the body of a ``tocsin.seismic_event/1`` message)."""
        with self._lock:
            prev = self._seismic.get(body["event_id"])
            if prev is None or body["revision"] >= prev["revision"]:
                self._seismic[body["event_id"]] = dict(body)
            self._advance(float(body["issued"]))

    def on_alert(self, msg: AlertMessage) -> None:
        with self._lock:
            self._alerts[msg.identifier] = msg
            self.version += 1

    def _place(self, station_id: str, kind: str, lat: float, lon: float, units: str,
               ) -> _Station | None:
        """A station the view did not know, placed where a packet or a detection says (under
        the lock); None, and named unplaced, without coordinates."""
        try:
            info = StationInfo(station_id, kind, lat, lon, 0.0, units)
        except DetectorError:
            if len(self.unplaced) < UNPLACED_MAX:
                self.unplaced.add(station_id)
            return None
        self.unplaced.discard(station_id)
        st = self._stations[station_id] = _Station(info)
        return st

    def _advance(self, t: float) -> None:
        """Event time reached ``t`` (under the lock): a new version, and once an hour of
        event time what is older than ``keep_s`` goes. Live, no further than
        ``AHEAD_S`` past the clock: one packet stamped in 2150 (a station's clock) made
        every station late and pruned everything."""
        if self.clock is not None:
            t = min(t, self.clock() + AHEAD_S)
        self.event_time = max(self.event_time, t)
        self.version += 1
        if self.event_time - self._pruned >= PRUNE_EVERY_S:
            self._pruned = self.event_time
            self._prune(self.event_time - self.keep_s)

    def _prune(self, cut: float) -> None:
        self._detections = {k: d for k, d in self._detections.items() if d.declared >= cut}
        for st in self._stations.values():
            if st.detections and st.detections[0].declared < cut:
                st.detections = [d for d in st.detections if d.declared >= cut]
        gone = {i for i, revs in self._revisions.items() if max(
            r.issued for r in revs.values()) < cut}
        for i in gone:
            del self._revisions[i]
        self._alerts = {k: a for k, a in self._alerts.items()
                        if a.incident_id in self._revisions or a.sent >= cut}
        self._seismic = {k: b for k, b in self._seismic.items() if float(b["issued"]) >= cut}

    # ------------------------------------------------------------------ output
    def now(self) -> float:
        """The time the view is at: the event time reached, or live the wall clock."""
        return self.event_time if self.clock is None else max(self.event_time, self.clock())

    def station_state(self, st: _Station, now: float | None = None) -> str:
        now = self.now() if now is None else now
        if any(now - d.onset <= self.detecting_s and d.onset <= now for d in st.detections):
            return "detecting"
        if st.packets == 0:
            return "waiting"
        if st.gap_at_end:
            return "gap"
        if now - st.last_end > self.late_factor * max(st.last_packet_len, 60.0):
            return "late"
        return "ok"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = self.now()
            stations: list[dict[str, Any]] = []
            for st in sorted(self._stations.values(), key=lambda s: s.info.station_id):
                i = st.info
                stations.append({
                    "station_id": i.station_id, "kind": i.kind, "lat": i.lat, "lon": i.lon,
                    "units": i.units, "state": self.station_state(st, now),
                    "last_sample": iso(st.last_end) if math.isfinite(st.last_end) else None,
                    "behind_s": (now - st.last_end) if math.isfinite(st.last_end) else None,
                    "packets": st.packets, "samples": st.samples, "missing": st.missing,
                    "detections": len(st.detections),
                })
            incidents: list[dict[str, Any]] = []
            by_incident: dict[str, list[str]] = {}
            ordered_alerts = in_order(self._alerts.values())
            for a in ordered_alerts:
                by_incident.setdefault(a.incident_id, []).append(a.identifier)
            for inc_id, revs in self._revisions.items():
                ordered = [revs[k] for k in sorted(revs)]
                last = ordered[-1]
                incidents.append({
                    "id": inc_id, "type": last.type, "status": last.status,
                    "lat": _num(last.lat), "lon": _num(last.lon),
                    "origin_time": _t(last.origin_time), "origin_time_s": _num(last.origin_time),
                    "speed_m_s": _num(last.speed_m_s), "evidence": list(last.evidence),
                    "confirmed": list(last.confirmed),
                    # the front's 95 % bound on the source (km); unbounded: the stations
                    # fix the direction of the front only
                    "source_error_km": _num(_error_km(last)),
                    "source_unbounded": ("source_error_km" in last.extra
                                         and last.extra["source_error_km"] is None),
                    "revisions": [{"revision": r.revision, "issued": iso(r.issued),
                                   "status": r.status, "lat": _num(r.lat), "lon": _num(r.lon),
                                   "origin_time": _t(r.origin_time),
                                   "speed_m_s": _num(r.speed_m_s),
                                   "stations_used": len(r.stations_used)} for r in ordered],
                    "forecasts": [{"station_id": f.station_id, "kind": f.kind,
                                   "eta": iso(f.eta), "eta_s": f.eta, "lat": _num(f.lat),
                                   "lon": _num(f.lon),
                                   "state": ("confirmed" if f.station_id in last.confirmed
                                             else "arrived" if f.eta <= now else "watch")}
                                  for f in last.forecasts],
                    "alerts": by_incident.get(inc_id, []),
                })
            incidents.sort(key=lambda x: x["revisions"][0]["issued"])
            alerts = [{"identifier": a.identifier, "msgType": a.msg_type, "sent": iso(a.sent),
                       "incident_id": a.incident_id, "severity": a.severity,
                       "urgency": a.urgency, "certainty": a.certainty,
                       "headline": a.headline}
                      for a in ordered_alerts]
            counts: dict[str, int] = {}
            for s in stations:
                counts[s["state"]] = counts.get(s["state"], 0) + 1
            return {
                "title": self.title, "version": self.version,
                "event_time": iso(now) if math.isfinite(now) else None,
                "event_time_s": now if math.isfinite(now) else None,
                "stations": stations, "incidents": incidents, "alerts": alerts,
                "seismic_events": [
                    {"event_id": b["event_id"], "revision": b["revision"], "lat": b["lat"],
                     "lon": b["lon"], "depth_km": b["depth_km"],
                     "origin_time": iso(b["origin_time"]), "herr_km": b.get("herr_km"),
                     "magnitude": b.get("magnitude"), "stations": len(b["stations"])}
                    for b in sorted(self._seismic.values(), key=lambda b: b["origin_time"])
                    if b.get("status") != "retracted"],  # withdrawn: off the map
                "health": {"stations": len(stations), "states": counts,
                           "samples": sum(s["samples"] for s in stations),
                           "missing": sum(s["missing"] for s in stations),
                           "detections": len(self._detections),
                           # the first few by name, and how many: the whole list (200,000
                           # ids, 2.4 MB) went out with every push
                           "unplaced_stations": sorted(self.unplaced)[:UNPLACED_SHOWN],
                           "unplaced_count": len(self.unplaced),
                           # more were seen than the view remembers: the count is a floor
                           "unplaced_capped": len(self.unplaced) >= UNPLACED_MAX,
                           "consumer_lag": self._lag_view(),
                           "source": None if self.source is None else {
                               **self.source, "since": iso(self.source["since"])}},
            }

    def _lag_view(self) -> dict[str, Any] | None:
        if self.lag is None:
            return None
        # topic names carry the run's prefix: show the last part (observations, ...)
        return {"group": self.lag["group"], "total": int(self.lag["total"]),
                "topics": {t.rsplit(".", 1)[-1]: int(n) for t, n in self.lag["topics"].items()},
                "age_s": round(time.time() - float(self.lag.get("at", time.time())), 1)}

    def series(self, station_id: str) -> dict[str, Any] | None:
        with self._lock:
            st = self._stations.get(station_id)
            if st is None:
                return None
            return {
                "station_id": station_id, "kind": st.info.kind, "units": st.info.units,
                "t": [p[0] for p in st.series], "v": [p[1] / p[2] for p in st.series],
                "detections": [{"onset": d.onset, "peak_time": d.peak_time,
                                "amplitude": d.amplitude, "detector": d.detector}
                               for d in st.detections],
                "event_time_s": self.event_time if math.isfinite(self.event_time) else None,
            }

    def alert(self, identifier: str) -> AlertMessage | None:
        with self._lock:
            return self._alerts.get(identifier)

    def alerts(self) -> list[AlertMessage]:
        with self._lock:
            return in_order(self._alerts.values())

    def revision(self, incident_id: str) -> IncidentRevision | None:
        with self._lock:
            revs = self._revisions.get(incident_id)
            return revs[max(revs)] if revs else None


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 5)


def _error_km(rev: IncidentRevision) -> float:
    """The revision's ``source_error_km``; NaN when it has none, it is unbounded, or it is
    no finite number (``extra`` is free JSON off the topic: ``true`` showed as 1 km)."""
    err = rev.extra.get("source_error_km")
    return float(err) if is_number(err) else math.nan


def _t(x: float) -> str | None:
    return None if x is None or math.isnan(x) else iso(x)
