"""CAP 1.2 alerts: every message type we produce validates against the official XSD."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from lxml import etree

from responders.alerting import (
    CAP_NS,
    AlertPolicy,
    CapValidationError,
    cap_time,
    severity_at_least,
    validate_cap,
)
from responders.stage import AlertStage
from streams.schemas import Forecast, IncidentRevision

NS = {"cap": CAP_NS}
T = 1642220085.0  # 2022-01-15T04:14:45Z


def revision(n: int, *, status: str = "watch", issued: float = T + 1500.0,
             confirmed: tuple[str, ...] = ()) -> IncidentRevision:
    return IncidentRevision(
        incident_id="eruption-20220115T041445Z-abc123", type="volcanic_eruption", revision=n,
        issued=issued, status=status, origin_time=T + 3.0 * n, lat=-20.55, lon=-175.39,
        speed_m_s=314.0, detections=("lamb_pulse:A:1",), stations_used=("A", "B", "C", "D"),
        forecasts=(Forecast("chij", "tide_gauge", T + 8 * 3600.0, 7900.0, 35.13, 140.25),
                   Forecast("nkfa", "tide_gauge", T + 220.0, 68.0, -21.14, -175.18)),
        confirmed=confirmed, evidence=("pressure_front",))


def test_a_source_the_picks_do_not_bound_makes_the_watch_possible_and_says_why() -> None:
    """A network of small aperture far from the source fixes the front's direction only
    (``source_error_km`` null): its ETAs may be hours off, so the watch is Possible, not
    Likely; a bounded source gives its bound and a source region at least that wide. When
    the source becomes bounded the agency gets an Update."""
    policy = AlertPolicy()
    far = replace(revision(1), extra={"source_error_km": None})
    (alert,) = policy.on_revision(far)
    doc = validate_cap(alert.cap_xml)
    assert alert.certainty == "Possible"
    assert "not the distance of its source" in doc.findtext(".//cap:description",
                                                           namespaces=NS)
    params = {p.findtext("cap:valueName", namespaces=NS): p.findtext("cap:value", namespaces=NS)
              for p in doc.findall(".//cap:parameter", NS)}
    assert params["tocsin:source_error_km"] == "unbounded"
    (update,) = policy.on_revision(replace(revision(2), extra={"source_error_km": 77.0}))
    doc = validate_cap(update.cap_xml)
    assert (update.msg_type, update.certainty) == ("Update", "Likely")
    assert "Source within 77 km" in doc.findtext(".//cap:description", namespaces=NS)
    # the circle holds the region: its radius up to a whole 10 km
    assert doc.find(".//cap:area/cap:circle", NS).text == "-20.5500,-175.3900 80"
    narrow = AlertPolicy().on_revision(replace(revision(1), extra={"source_error_km": 12.0}))
    doc = validate_cap(narrow[0].cap_xml)
    assert doc.find(".//cap:area/cap:circle", NS).text == "-20.5500,-175.3900 50"


def test_a_source_region_that_widens_or_narrows_sends_an_update() -> None:
    """The content that decides an Update left the source bound out: from 60 to 1500 km,
    same position and ETAs, nothing went out and agencies 750 km away held a 60-km circle.
    A change within the circle's 10 km, or of a plume top by less than half a km, sends
    nothing."""
    policy = AlertPolicy()
    steps = [({"source_error_km": 60.0}, ["-20.5500,-175.3900 60"]),
             ({"source_error_km": 1500.0}, ["-20.5500,-175.3900 1500"]),
             ({"source_error_km": 1495.0}, []),
             ({"source_error_km": 30.0}, ["-20.5500,-175.3900 50"]),
             ({"source_error_km": 30.0, "plume_height_km": 57.2}, ["-20.5500,-175.3900 50"]),
             ({"source_error_km": 30.0, "plume_height_km": 57.4}, [])]
    for n, (extra, want) in enumerate(steps, start=1):
        sent = policy.on_revision(replace(revision(n), extra=extra))
        circles = [validate_cap(m.cap_xml).find(".//cap:area/cap:circle", NS).text
                   for m in sent]
        assert circles == want, extra


@pytest.mark.parametrize("bad", ["57.2", True, math.nan, math.inf, [1.0]],
                         ids=["text", "bool", "nan", "inf", "list"])
def test_a_plume_top_or_source_bound_that_is_not_a_number_is_left_out(bad: object) -> None:
    """A revision's ``extra`` is free JSON off the incidents topic: a plume top given as
    text raised ValueError in the description (the alert never went out), a ``true``
    source bound said "Source within 1 km", a NaN one "within nan km"."""
    good = AlertPolicy().on_revision(revision(1))[0]
    (msg,) = AlertPolicy().on_revision(replace(revision(1), extra={
        "plume_height_km": bad, "source_error_km": bad}))
    doc = validate_cap(msg.cap_xml)
    text = doc.findtext(".//cap:description", namespaces=NS)
    assert "Plume top" not in text and "Source within" not in text, text
    params = {p.findtext("cap:valueName", namespaces=NS)
              for p in doc.iterfind(".//cap:parameter", NS)}
    assert "tocsin:source_error_km" not in params
    assert text == validate_cap(good.cap_xml).findtext(".//cap:description", namespaces=NS)
    (plume,) = AlertPolicy().on_revision(replace(revision(1), extra={
        "plume_height_km": 57.24, "source_error_km": 12.0}))
    text = validate_cap(plume.cap_xml).findtext(".//cap:description", namespaces=NS)
    assert "Plume top 57.2 km." in text and "Source within 12 km" in text


def test_alert_update_cancel_chain_validates() -> None:
    policy = AlertPolicy()
    (alert,) = policy.on_revision(revision(1))
    assert policy.on_revision(revision(1)) == []  # same content: nothing new to say
    (update,) = policy.on_revision(revision(2, status="confirmed", issued=T + 2000.0,
                                            confirmed=("nkfa",)))
    (cancel,) = policy.on_revision(replace(revision(2), status="retracted"))
    assert [m.msg_type for m in (alert, update, cancel)] == ["Alert", "Update", "Cancel"]
    for msg in (alert, update, cancel):
        doc = validate_cap(msg.cap_xml)
        assert doc.findtext("cap:msgType", namespaces=NS) == msg.msg_type
        assert doc.findtext("cap:identifier", namespaces=NS) == msg.identifier
        assert doc.findtext("cap:sent", namespaces=NS).endswith("-00:00")  # UTC, as CAP says
    assert update.references == (f"tocsin@localhost,{alert.identifier},2022-01-15T04:39:45-00:00",)
    # the Cancel names the whole chain: an agency that missed the Update holds the Alert
    assert [r.split(",")[1] for r in cancel.references] == [alert.identifier,
                                                            update.identifier]
    assert (alert.urgency, alert.certainty) == ("Expected", "Likely")
    assert (update.urgency, update.certainty) == ("Immediate", "Observed")
    doc = etree.fromstring(alert.cap_xml.encode())
    circles = doc.findall(".//cap:area/cap:circle", NS)
    assert circles[0].text == "-20.5500,-175.3900 50"  # the source, then one per gauge
    assert len(circles) == 3
    assert doc.findtext(".//cap:expires", namespaces=NS) > doc.findtext(".//cap:onset",
                                                                         namespaces=NS)


def test_plume_only_and_tsunami_incidents_validate() -> None:
    plume = replace(revision(1), status="detected", forecasts=(), speed_m_s=float("nan"),
                    origin_time=float("nan"), extra={"plume_height_km": 32.7})
    tsunami = replace(revision(1), incident_id="tsunami-x", type="tsunami", status="observed",
                      forecasts=(), lat=float("nan"), lon=float("nan"), confirmed=("21418",))
    for rev, severity in ((plume, "Moderate"), (tsunami, "Severe")):
        (msg,) = AlertPolicy().on_revision(rev)
        validate_cap(msg.cap_xml)
        assert msg.severity == severity


def test_invalid_message_is_rejected_with_the_reason() -> None:
    (msg,) = AlertPolicy().on_revision(revision(1))
    broken = msg.cap_xml.replace("<msgType>Alert</msgType>", "<msgType>Panic</msgType>")
    with pytest.raises(CapValidationError, match="msgType"):
        validate_cap(broken)


def test_stage_sends_cancel_when_an_incident_is_withdrawn() -> None:
    stage = AlertStage()
    (alert,) = stage.add(revision(1))
    out = stage.add(replace(revision(1), status="retracted"))
    assert [m.msg_type for m in out] == ["Cancel"]
    validate_cap(out[0].cap_xml)
    assert out[0].references[0].split(",")[1] == alert.identifier


def test_severity_order() -> None:
    assert severity_at_least("Extreme", "Severe")
    assert not severity_at_least("Moderate", "Severe")
    with pytest.raises(ValueError, match="'Huge'"):
        severity_at_least("Huge", "Minor")


def test_a_revision_the_policy_fails_on_leaves_the_stage_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage kept such a revision and replayed the policy over it with every later
    revision: one bad revision stopped all alerts, for good."""
    import responders.stage as stage_mod

    stage, fresh = AlertStage(), AlertStage()
    first = stage.add(revision(1))
    assert first == fresh.add(revision(1))
    real = stage_mod.alerts_for_revisions

    def failing(revs, *args):  # type: ignore[no-untyped-def]
        revs = list(revs)
        if any(r.incident_id == "poison" for r in revs):
            raise OverflowError("timestamp out of range")
        return real(revs, *args)

    monkeypatch.setattr(stage_mod, "alerts_for_revisions", failing)
    with pytest.raises(OverflowError):
        stage.add(replace(revision(1), incident_id="poison"))
    later = revision(2, status="confirmed", issued=T + 3000.0)
    assert stage.add(later) == fresh.add(later) != []


@pytest.mark.parametrize("status", ["Exercise", "Test"])
def test_exercise_and_test_messages_say_so(status: str) -> None:
    (msg,) = AlertPolicy(status=status).on_revision(revision(1))
    doc = validate_cap(msg.cap_xml)
    ns = {"c": "urn:oasis:names:tc:emergency:cap:1.2"}
    assert doc.findtext("c:status", namespaces=ns) == status
    # each says what it is in the note, so a recipient's system never takes it for real
    assert doc.findtext("c:note", namespaces=ns) == {
        "Exercise": "Exercise: a replay of recorded data through tocsin, not a current warning.",
        "Test": "Test message of the tocsin system: disregard.",
    }[status]
    with pytest.raises(ValueError, match="'Draft'"):
        AlertPolicy(status="Draft")


def test_a_correction_of_a_sent_message_goes_out_under_an_identifier_of_its_own() -> None:
    """A late detection corrects revision 2 (same key, other content) after its Update was
    sent: the stage re-issued that Update under the same identifier and sent time, which
    the store overwrote and the outbox never delivered (its keys already existed)."""
    stage = AlertStage()
    (alert,) = stage.add(revision(1))
    r2 = revision(2, status="confirmed", issued=T + 2000.0, confirmed=("nkfa",))
    (update,) = stage.add(r2)
    r2c = replace(r2, status="watch", confirmed=(), forecasts=r2.forecasts + (
        Forecast("pago", "tide_gauge", T + 3000.0, 800.0, -14.28, -170.69),))
    (fix,) = stage.add(r2c)
    assert fix.identifier == update.identifier + ".c1" and fix.msg_type == "Update"
    assert fix.references[-1] == f"tocsin@localhost,{update.identifier},{cap_time(update.sent)}"
    doc = validate_cap(fix.cap_xml)
    assert doc.findtext("cap:identifier", namespaces=NS) == fix.identifier
    assert doc.findtext("cap:references", namespaces=NS) == " ".join(fix.references)
    assert fix.severity == "Severe" and update.severity == "Extreme"
    (fix2,) = stage.add(r2)  # corrected back: a second correction, of the first
    assert fix2.identifier == update.identifier + ".c2"
    assert fix2.references[-1].split(",")[1] == fix.identifier
    ids = [m.identifier for m in (alert, update, fix, fix2)]
    assert len(set(ids)) == len(ids), ids


def test_withdrawing_the_latest_revision_restates_the_one_that_stands() -> None:
    """Withdrawing revision 2 alone sent nothing: agencies kept its Update (Extreme,
    evacuate). And the Cancel, once revision 1 went too, was sent at revision 1's time,
    before the message it cancelled."""
    stage = AlertStage()
    (alert,) = stage.add(revision(1))
    r2 = revision(2, status="confirmed", issued=T + 2000.0, confirmed=("nkfa",))
    (update,) = stage.add(r2)
    (again,) = stage.add(replace(r2, status="retracted"))
    assert again.msg_type == "Update" and again.identifier == alert.identifier + ".c1"
    assert (again.severity, again.headline) == (alert.severity, alert.headline)
    assert again.sent == update.sent  # not before the message it supersedes
    assert [r.split(",")[1] for r in again.references] == [alert.identifier,
                                                           update.identifier]
    validate_cap(again.cap_xml)
    (cancel,) = stage.add(replace(revision(1), status="retracted"))
    assert cancel.msg_type == "Cancel" and cancel.sent >= again.sent
    assert cancel.references[-1].split(",")[1] == again.identifier
    validate_cap(cancel.cap_xml)
    assert stage.add(replace(revision(1), status="retracted")) == []


def test_a_tsunami_alert_covers_every_station_that_observed_it() -> None:
    """The areas were a circle called 'Source region' at the first gauge (and forecasts,
    which a tsunami incident has none of): an agency by a later gauge got nothing."""
    rev = IncidentRevision(
        incident_id="tsunami-20110311T055008Z-6ada43", type="tsunami", revision=2,
        issued=1299826800.0, status="observed", origin_time=math.nan, lat=38.71, lon=148.69,
        speed_m_s=math.nan, detections=("a", "b"), stations_used=("21418", "hilo"),
        confirmed=("21418", "hilo"), evidence=("sea_level",),
        extra={"observed_at": [["21418", 38.71, 148.69], ["hilo", 19.73, -155.06]]})
    (msg,) = AlertPolicy().on_revision(rev)
    doc = validate_cap(msg.cap_xml)
    areas = [(a.findtext("cap:areaDesc", namespaces=NS), a.findtext("cap:circle", namespaces=NS))
             for a in doc.iterfind(".//cap:area", NS)]
    assert areas == [("First observation 38.71N 148.69E", "38.7100,148.6900 50"),
                     ("sea-level station 21418 (observed)", "38.7100,148.6900 20"),
                     ("sea-level station hilo (observed)", "19.7300,-155.0600 20")]


def test_areas_only_where_both_coordinates_place_them() -> None:
    """A forecast with a lat and no lon went out as '<circle>-21.1400,nan 20</circle>' (only
    a NaN lat was skipped), and an observed_at entry with a string lat raised in float()."""
    rev = replace(revision(1), forecasts=(
        Forecast("half", "tide_gauge", T + 600.0, 90.0, -21.14, math.nan),
        Forecast("far", "tide_gauge", T + 600.0, 90.0, 95.0, 10.0),
        Forecast("nkfa", "tide_gauge", T + 220.0, 68.0, -21.14, -175.18)),
        extra={"observed_at": [["s1", "x", 1.0], ["s2", -21.0], 7, ["s3", -21.0, -175.0]]})
    (msg,) = AlertPolicy().on_revision(rev)
    doc = validate_cap(msg.cap_xml)
    circles = [c.text for c in doc.iterfind(".//cap:circle", NS)]
    assert circles == ["-20.5500,-175.3900 50", "-21.1400,-175.1800 20",
                       "-21.0000,-175.0000 20"]
    assert "nan" not in msg.cap_xml


def test_a_station_id_xml_cannot_carry_still_gets_its_alert_out() -> None:
    """The schemas refuse such ids now; before, lxml raised ValueError building the CAP XML
    and the revision was dead-lettered: no alert at all."""
    rev = revision(1)
    rev = replace(rev, forecasts=(Forecast("GA\x0bUGE", "tide_gauge", T + 600.0, 90.0,
                                           -21.1, -175.2),),
                  extra={"observed_at": [["S\x00", -21.0, -175.0]]})
    (msg,) = AlertPolicy().on_revision(rev)
    doc = validate_cap(msg.cap_xml)
    descs = [a.findtext("cap:areaDesc", namespaces=NS) for a in doc.iterfind(".//cap:area", NS)]
    assert "tide_gauge GA\ufffdUGE (watch), ETA 2022-01-15T04:24:45-00:00" in descs
    assert "sea-level station S\ufffd (observed)" in descs


def test_references_name_the_chain_up_to_its_bound() -> None:
    """Each Update references the chain before it, oldest first; past REFERENCES_MAX the
    Alert and the latest messages (an incident revised for months would outgrow a Kafka
    message)."""
    from responders.alerting import REFERENCES_MAX

    policy = AlertPolicy()
    msgs = [m for n in range(1, REFERENCES_MAX + 52) for m in policy.on_revision(replace(
        revision(n, issued=T + 1500.0 + 60.0 * n), lat=-20.0 + 0.1 * n))]
    assert len(msgs) == REFERENCES_MAX + 51 and msgs[0].msg_type == "Alert"
    ids = [m.identifier for m in msgs]
    for i, msg in enumerate(msgs[1:], start=1):
        named = [r.split(",")[1] for r in msg.references]
        assert named == (ids[:i] if i <= REFERENCES_MAX else
                         [ids[0], *ids[i - REFERENCES_MAX + 1:i]]), msg.identifier
    assert len(msgs[-1].references) == REFERENCES_MAX
    assert validate_cap(msgs[-1].cap_xml).findtext("cap:references", namespaces=NS) == \
        " ".join(msgs[-1].references)


def test_a_cancel_names_every_version_that_went_out_and_corrections_keep_the_bound() -> None:
    """An agency whose copy of a correction the outbox gave up on holds the original: the
    Cancel named the correction only. And a correction of the 220th Update carried 201
    references (its own added after the bound)."""
    from responders.alerting import REFERENCES_MAX

    stage = AlertStage()
    (alert,) = stage.add(revision(1))
    (fix,) = stage.add(revision(1, issued=T + 1507.0))
    (update,) = stage.add(revision(2, status="confirmed", issued=T + 2000.0,
                                   confirmed=("nkfa",)))
    stage.add(replace(revision(2), status="retracted"))
    (*_, cancel) = stage.add(replace(revision(1), status="retracted"))
    named = [r.split(",")[1] for r in cancel.references]
    assert cancel.msg_type == "Cancel" and alert.identifier in named
    assert {fix.identifier, update.identifier} <= set(named)

    stage = AlertStage()
    n = REFERENCES_MAX + 20
    for k in range(1, n + 1):
        stage.add(replace(revision(k, issued=T + 1500.0 + 60.0 * k), lat=-20.0 + 0.1 * k))
    (fixed,) = stage.add(replace(revision(n, issued=T + 1507.0 + 60.0 * n),
                                 lat=-20.0 + 0.1 * n))
    assert fixed.identifier.endswith(".c1") and len(fixed.references) == REFERENCES_MAX
    assert validate_cap(fixed.cap_xml).findtext("cap:references", namespaces=NS) == \
        " ".join(fixed.references)


def test_cap_circles_are_in_wgs84_longitudes() -> None:
    """A registry gauge at lon 189.31 (0..360) went out as a circle at 189.31, outside the
    range CAP expects, and matched no subscription area."""
    rev = replace(revision(1), forecasts=(
        Forecast("apia", "tide_gauge", T + 3600.0, 900.0, -13.83, 188.24),))
    (msg,) = AlertPolicy().on_revision(rev)
    circles = [c.text for c in validate_cap(msg.cap_xml).iterfind(".//cap:circle", NS)]
    assert circles == ["-20.5500,-175.3900 50", "-13.8300,-171.7600 20"]


def _refs_went_out(msgs: list) -> None:  # type: ignore[type-arg]
    """Every reference of every message names a message that went out before it, with
    the time it was sent; no identifier went out twice."""
    went: dict[str, float] = {}
    for m in msgs:
        for ref in m.references:
            sender, ident, sent = ref.split(",")
            assert ident in went, f"{m.identifier} references {ident}, never sent"
            assert sent == cap_time(went[ident]), f"{m.identifier}: {ref}"
        assert m.identifier not in went, f"{m.identifier} went out twice"
        went[m.identifier] = m.sent
        validate_cap(m.cap_xml)


def test_an_incident_withdrawn_back_and_withdrawn_again_ends_cancelled() -> None:
    """Withdrawn, back unchanged, then withdrawn again: the return sent nothing (agencies
    held only the Cancel while the incident was live again), and the second Cancel reused
    the first's identifier with other content, which the store overwrote and the outbox
    never delivered. The last message agencies got was an Update, never cancelled."""
    stage = AlertStage()
    r1 = revision(1)
    r2 = revision(2, status="confirmed", issued=T + 2000.0, confirmed=("nkfa",))
    steps = [r1, replace(r1, status="retracted"), r1, r2, replace(r2, status="retracted"),
             replace(r1, status="retracted")]
    got = [stage.add(step) for step in steps]
    assert [[m.msg_type for m in msgs] for msgs in got] == [
        ["Alert"], ["Cancel"], ["Update"], ["Update"], ["Update"], ["Cancel"]]
    sent = [m for msgs in got for m in msgs]
    _refs_went_out(sent)
    back = got[2][0]  # supersedes the Cancel as well as the alert it had cancelled
    assert [r.split(",")[1] for r in back.references] == [got[0][0].identifier,
                                                          got[1][0].identifier]
    last = got[-1][0]
    # every message of the incident that went out, in the order sent: an agency may hold
    # any of them (the latest Update among them)
    assert [r.split(",")[1] for r in last.references] == [m.identifier for m in sent[:-1]]
    assert stage.add(replace(r1, status="retracted")) == []


def test_an_update_references_the_message_that_went_out_not_its_recomputed_version() -> None:
    """Revision 1 is corrected after its Alert went out (the correction goes out as
    ``.c1``); revision 2's Update referenced ``r1.alert`` at the corrected time, a message
    no agency ever got, and did not supersede the ``.c1`` they held."""
    stage = AlertStage()
    (alert,) = stage.add(revision(1))
    (fix,) = stage.add(revision(1, issued=T + 1507.0))
    assert fix.identifier == alert.identifier + ".c1"
    (update,) = stage.add(revision(2, status="confirmed", issued=T + 2000.0,
                                   confirmed=("nkfa",)))
    # both versions that went out (an agency that missed the correction holds the
    # original), never r1.alert at the corrected time
    assert update.references == (f"tocsin@localhost,{alert.identifier},{cap_time(alert.sent)}",
                                 f"tocsin@localhost,{fix.identifier},{cap_time(fix.sent)}")
    _refs_went_out([alert, fix, update])


def test_a_revision_replays_the_policy_over_its_own_incident_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every revision replayed the policy over every revision of every incident seen: on
    a worker that runs for months, each alert waited longer (217 ms at 1600 incidents).
    The policy keeps one chain per incident, so the stage gives the same messages."""
    import responders.stage as stage_mod

    seen: list[int] = []
    real = stage_mod.alerts_for_revisions

    def counting(revs, *args):  # type: ignore[no-untyped-def]
        revs = list(revs)
        seen.append(len(revs))
        return real(revs, *args)

    stage = AlertStage()
    every = []
    for i in range(50):
        every += stage.add(replace(revision(1), incident_id=f"eruption-{i:03d}"))
    monkeypatch.setattr(stage_mod, "alerts_for_revisions", counting)
    later = replace(revision(2, status="confirmed", issued=T + 2000.0, confirmed=("nkfa",)),
                    incident_id="eruption-007")
    (update,) = stage.add(later)
    assert seen == [2]  # revisions 1 and 2 of eruption-007, not the 51 of all of them
    assert update.references[0].split(",")[1] == every[7].identifier
    # the same messages as the policy over all the revisions
    policy_all = stage_mod.alerts_for_revisions(
        [replace(revision(1), incident_id=f"eruption-{i:03d}") for i in range(50)] + [later])
    assert {m.identifier: m for m in policy_all} == {m.identifier: m for m in every + [update]}


def test_every_message_is_sent_no_earlier_than_the_messages_it_references() -> None:
    """An incident withdrawn (its Cancel out) and then back went out as an Update with the
    ``sent`` of its first Alert, before the Cancel it references: an agency that orders
    messages by ``sent`` kept the incident cancelled."""
    from responders.alerting import cap_time

    stage = AlertStage()
    r1 = revision(1, issued=T + 600.0)
    r2 = revision(2, issued=T + 900.0)
    sent: dict[str, str] = {}  # identifier -> its CAP sent, as agencies got them
    out = []
    for rev in (r1, r2, replace(r1, lat=-20.0), replace(r2, status="retracted"),
                replace(r1, status="retracted"), r1,
                revision(3, issued=T + 1500.0, status="confirmed")):
        for msg in stage.add(rev):
            validate_cap(msg.cap_xml)
            for ref in msg.references:
                _, ident, when = ref.split(",")
                assert sent[ident] == when, ref  # the message as it went out
                assert msg.sent >= parse_cap_time(when), (msg.identifier, ref)
            sent[msg.identifier] = cap_time(msg.sent)
            out.append(msg)
    back = next(m for m in out if any(".cancel," in r for r in m.references))
    cancel = next(m for m in out if m.msg_type == "Cancel")
    assert back.msg_type == "Update" and back.sent >= cancel.sent > r1.issued


def parse_cap_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_a_message_that_does_not_validate_never_leaves_the_policy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CAP schema was checked in the tests alone: a message the XSD refuses (a field
    the policy wrote wrong) would have gone out to the agencies. It is an error now, which
    the alert agent dead-letters with the reason, the stage left as it was."""
    import responders.alerting as alerting
    from responders.alerting import CapValidationError

    real = alerting.build_cap_xml

    def wrong(*args, **kwargs):  # type: ignore[no-untyped-def]
        return real(*args, **kwargs).replace("<status>", "<status>Draft-").replace(
            "</status>", "</status>", 1)

    stage, fresh = AlertStage(), AlertStage()
    monkeypatch.setattr(alerting, "build_cap_xml", wrong)
    with pytest.raises(CapValidationError, match="status"):
        AlertPolicy().on_revision(revision(1))
    with pytest.raises(CapValidationError):
        stage.add(revision(1))
    monkeypatch.undo()
    assert stage.add(revision(1)) == fresh.add(revision(1)) != []


def test_an_incident_withdrawn_whole_sends_one_cancel_and_no_fresh_alerts() -> None:
    """The association withdraws an incident's revisions oldest first: withdrawing #1 left
    #2 and #3 standing, and the stage sent r2.alert, a fresh Alert, and corrections of the
    rest, then r3.alert, and only then the Cancel (on the Tonga scenario with the plume
    late, 9 new Alerts and about 45 Updates for an incident being withdrawn). A revision
    withdrawn takes the later ones with it: one Cancel. Withdrawing from #2 with #1
    standing restates #1, once."""
    def rev(n: int, lat: float) -> IncidentRevision:
        return replace(revision(n), issued=T + 60.0 * n, lat=lat,
                       extra={"source_error_km": 30.0})

    def withdrawn(r: IncidentRevision) -> IncidentRevision:
        return replace(r, status="retracted", detections=(), forecasts=())

    revs = [rev(1, -20.0), rev(2, -20.5), rev(3, -21.0)]
    stage = AlertStage()
    for r in revs:
        stage.add(r)
    out = [[(m.identifier.rsplit(".", 2)[-2:], m.msg_type) for m in stage.add(withdrawn(r))]
           for r in revs]
    assert out == [[(["r3", "cancel"], "Cancel")], [], []]
    partial = AlertStage()
    for r in revs:
        partial.add(r)
    (again,) = partial.add(withdrawn(revs[1]))
    assert again.msg_type == "Update" and again.identifier.endswith(".r1.alert.c1")
    assert partial.add(withdrawn(revs[2])) == []
