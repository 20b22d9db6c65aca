"""The replay report (``"schema": "tocsin.report/1"``), documented in docs/report.md.

Both ``tocsin detect`` (in-process) and ``tocsin replay`` (through Kafka) build their report
here from the same three collections, so equal inputs give byte-equal JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detectors.base import Detection
from detectors.seismic import SeismicParams, associate_seismic
from streams.schemas import AlertMessage, IncidentRevision, iso

REPORT_SCHEMA = "tocsin.report/1"


def latest_revisions(revs: Iterable[IncidentRevision]) -> list[IncidentRevision]:
    """The last version of each (incident_id, revision): corrections replace originals,
    and a retraction (status ``retracted``) removes the revision."""
    latest: dict[str, IncidentRevision] = {}
    for r in revs:
        latest[r.key] = r
    return sorted((r for r in latest.values() if r.status != "retracted"),
                  key=lambda r: (r.incident_id, r.revision))


def _num(x: float, nd: int = 6) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def build_report(event: dict[str, Any], detections: Iterable[Detection],
                 revisions: Iterable[IncidentRevision], alerts: Iterable[AlertMessage],
                 *, mode: str, seismic_gains: dict[str, float] | None = None
                 ) -> dict[str, Any]:
    # a detection re-emitted under its key (a sea-level detection with its final amplitude)
    # replaces the earlier version: the later declaration wins
    latest = {d.key: d for d in sorted(detections, key=lambda d: (d.declared, d.key))}
    dets = sorted(latest.values(), key=lambda d: (d.onset, d.key))
    revs = latest_revisions(revisions)
    by_incident: dict[str, list[IncidentRevision]] = {}
    for r in revs:
        by_incident.setdefault(r.incident_id, []).append(r)
    incidents = []
    for inc_id, rs in sorted(by_incident.items(), key=lambda kv: (kv[1][0].issued, kv[0])):
        last = rs[-1]
        incidents.append({
            "id": inc_id,
            "type": last.type,
            "status": last.status,
            "origin_time": None if math.isnan(last.origin_time) else iso(last.origin_time),
            "lat": _num(last.lat),
            "lon": _num(last.lon),
            "speed_m_s": _num(last.speed_m_s, 3),
            "evidence": list(last.evidence),
            "confirmed": list(last.confirmed),
            "revisions": [{
                "revision": r.revision,
                "issued": iso(r.issued),
                "status": r.status,
                "solution": {
                    "origin_time": None if math.isnan(r.origin_time) else iso(r.origin_time),
                    "lat": _num(r.lat), "lon": _num(r.lon),
                    "speed_m_s": _num(r.speed_m_s, 3),
                    "stations_used": list(r.stations_used), "rejected": list(r.rejected),
                    "rms_s": _num(r.rms_s, 3),
                    "error_km": r.extra.get("source_error_km"),
                },
                "n_detections": len(r.detections),
                "confirmed": list(r.confirmed),
            } for r in rs],
            "forecasts": [{"station_id": f.station_id, "kind": f.kind, "eta": iso(f.eta),
                           "distance_km": round(f.distance_km, 1)} for f in last.forecasts],
        })
    # seismic events: a pure function of the picks, like the incidents
    events: dict[str, dict[str, Any]] = {}
    for ev in associate_seismic(dets, SeismicParams(gains=dict(seismic_gains or {}))):
        d = ev.as_dict()
        d["origin_time"] = iso(d["origin_time"])
        d["issued"] = iso(d["issued"])
        for a in d["arrivals"]:
            a["onset"] = iso(a["onset"])
        d["revisions"] = ev.revision
        events[ev.event_id] = d
    alert_list = sorted({a.identifier: a for a in alerts}.values(),
                        # revisions issued in one second: r9 before r10 (as text, after)
                        key=lambda a: (a.sent, a.incident_id, a.revision, a.identifier))
    return {
        "schema": REPORT_SCHEMA,
        "event": {"id": event.get("id"), "title": event.get("title"),
                  "start": event.get("start"), "end": event.get("end")},
        "mode": mode,
        "detections": [{
            "station_id": d.station_id, "kind": d.kind, "detector": d.detector,
            "detector_version": d.detector_version, "onset": iso(d.onset),
            "peak_time": iso(d.peak_time), "declared": iso(d.declared),
            "amplitude": _num(float(d.amplitude)), "units": d.units,
            "period_s": d.extra.get("period_s"),
        } for d in dets],
        "incidents": incidents,
        "seismic_events": list(events.values()),
        "alerts": [{"identifier": a.identifier, "msgType": a.msg_type, "sent": iso(a.sent),
                    "incident_id": a.incident_id, "revision": a.revision,
                    "references": list(a.references), "severity": a.severity,
                    "urgency": a.urgency, "certainty": a.certainty} for a in alert_list],
    }


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the fields that say how it was produced (mode, run stats)."""
    return {k: v for k, v in report.items() if k not in ("mode", "run")}


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
