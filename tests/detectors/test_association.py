"""Association: incidents are a function of the set of detections, in any arrival order."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import numpy as np
import pytest

from detectors.association import Associator, associate
from detectors.base import Detection, StationInfo
from detectors.geo import great_circle_km
from streams.schemas import parse_time

ORIGIN = parse_time("2022-01-15T04:14:45Z")
SRC = (-20.546, -175.390)
# real coordinates (tide-gauge and barometer sites around the Pacific)
BAROS = {
    "NUKU": (-21.14, -175.18), "MSVF": (-17.745, 178.053), "APIA": (-13.83, -171.76),
    "PAGO": (-14.28, -170.69), "NIUE": (-19.05, -169.92), "SUVA": (-18.13, 178.43),
    "AUCK": (-36.85, 174.76), "NOUM": (-22.27, 166.44), "HILO": (19.73, -155.06),
    "SYDN": (-33.85, 151.23),
}
GAUGES = [StationInfo("abur", "tide_gauge", 31.58, 131.41), StationInfo("kahu", "tide_gauge",
          20.90, -156.47), StationInfo("NZA", "bottom_pressure", -42.37, 176.91)]


def pulse(sid: str, lat: float, lon: float, speed: float = 315.0, src=SRC, t0=ORIGIN,
          jitter: float = 0.0) -> Detection:
    dist = float(great_circle_km(src[0], src[1], lat, lon))
    onset = t0 + dist * 1000 / speed + jitter
    return Detection(sid, "barometer", "lamb_pulse", "1", onset, onset + 600, 2.0, "hPa",
                     onset + 900, lat=lat, lon=lon)


def sea(sid: str, lat: float, lon: float, onset: float) -> Detection:
    return Detection(sid, "tide_gauge", "sea_level", "1", onset, onset + 1200, 0.3, "m",
                     onset + 3600, lat=lat, lon=lon)


def pressure_dets() -> list[Detection]:
    rng = np.random.default_rng(1)
    return [pulse(s, *ll, jitter=float(rng.normal(0, 20))) for s, ll in BAROS.items()]


def test_pressure_front_incident_with_watches() -> None:
    revs = associate(pressure_dets(), GAUGES)
    assert revs, "ten consistent pulses must make an incident"
    ids = {r.incident_id for r in revs}
    assert len(ids) == 1
    first, last = revs[0], revs[-1]
    assert first.revision == 1 and len(first.stations_used) >= 4
    assert [r.revision for r in revs] == list(range(1, len(revs) + 1))
    assert all(a.issued <= b.issued for a, b in zip(revs, revs[1:], strict=False))
    assert last.status == "watch" and last.type == "volcanic_eruption"
    assert float(great_circle_km(last.lat, last.lon, *SRC)) < 50
    assert abs(last.origin_time - ORIGIN) < 120 and abs(last.speed_m_s - 315) < 8
    assert {f.station_id for f in last.forecasts} == {"abur", "kahu", "NZA"}
    abur = next(f for f in last.forecasts if f.station_id == "abur")
    assert abs(abur.eta - (ORIGIN + abur.distance_km * 1000 / 315)) < 300


def test_a_revision_says_how_well_its_front_fixes_the_source() -> None:
    """``extra["source_error_km"]``: the front's 95 % bound, shrinking as stations come in
    around the source; null for a network on one side of it (Fiji, 750 km from Hunga),
    whose solution is a direction, not a place."""
    revs = associate(pressure_dets(), GAUGES)
    errs = [r.extra["source_error_km"] for r in revs]
    assert all(isinstance(e, float) for e in errs) and errs[-1] <= errs[0]
    assert float(great_circle_km(revs[-1].lat, revs[-1].lon, *SRC)) <= errs[-1]
    fiji = {"SUVA": (-18.14, 178.44), "NADI": (-17.76, 177.44), "LAUT": (-17.61, 177.45),
            "LABA": (-16.43, 179.36), "SAVU": (-16.78, 179.33), "LEVU": (-17.68, 178.83)}
    rng = np.random.default_rng(4)
    one_side = associate([pulse(sid, *ll, jitter=float(rng.normal(0, 20)))
                          for sid, ll in fiji.items()], GAUGES)
    assert one_side and all(r.extra["source_error_km"] is None for r in one_side)


def test_any_arrival_order_gives_the_same_revisions() -> None:
    dets = pressure_dets() + [sea("abur", 31.58, 131.41, ORIGIN + 8106e3 / 315 + 300)]
    reference = [r.to_dict() for r in associate(dets, GAUGES)]
    for seed in range(5):
        shuffled = dets[:]
        random.Random(seed).shuffle(shuffled)
        assoc = Associator(GAUGES)
        emitted = []
        for d in shuffled:
            emitted.extend(assoc.add(d))
            emitted.extend(assoc.add(d))  # a redelivery changes nothing
        assert [r.to_dict() for r in assoc.revisions()] == reference
        # what a consumer of the emitted stream ends with (the last message per key, minus
        # retractions) is the reference: corrections and retractions share the key
        latest = {r.key: r for r in emitted}
        kept = sorted((r for r in latest.values() if r.status != "retracted"),
                      key=lambda r: (r.issued, r.key))
        assert [r.to_dict() for r in kept] == reference


def test_sea_level_confirms_a_watch_and_unrelated_does_not_merge() -> None:
    dets = pressure_dets()
    confirm = sea("abur", 31.58, 131.41, ORIGIN + 8106e3 / 315 + 600)
    # a sea-level anomaly three days later is another incident
    unrelated = sea("kahu", 20.90, -156.47, ORIGIN + 3 * 86400)
    revs = associate([*dets, confirm, unrelated], GAUGES)
    eruption = [r for r in revs if r.type == "volcanic_eruption"]
    tsunami = [r for r in revs if r.type == "tsunami"]
    assert eruption[-1].status == "confirmed" and eruption[-1].confirmed == ("abur",)
    assert len({r.incident_id for r in tsunami}) == 1 and tsunami[-1].confirmed == ("kahu",)
    # where the sea level moved, for the alert's areas
    assert tsunami[-1].extra["observed_at"] == [["kahu", 20.9, -156.47]]
    assert eruption[-1].extra["observed_at"] == [["abur", 31.58, 131.41]]


def test_two_sources_two_incidents_and_outlier_rejected() -> None:
    dets = pressure_dets()
    krakatau = (-6.10, 105.42)
    t1 = ORIGIN + 2 * 86400
    sites = {"JKT": (-6.2, 106.8), "SGP": (1.29, 103.85), "DRW": (-12.46, 130.84),
             "PER": (-31.95, 115.86), "CLB": (6.93, 79.85)}
    dets += [pulse(f"K{s}", *ll, src=krakatau, t0=t1) for s, ll in sites.items()]
    # a pulse at a Tonga-network station that fits neither moveout
    dets.append(Detection("ODD", "barometer", "lamb_pulse", "1", ORIGIN + 5000, ORIGIN + 5600,
                          1.0, "hPa", ORIGIN + 5900, lat=-25.0, lon=-130.0))
    revs = associate(dets, GAUGES)
    by_id: dict[str, list] = {}
    for r in revs:
        by_id.setdefault(r.incident_id, []).append(r)
    assert len(by_id) == 2
    finals = sorted((rs[-1] for rs in by_id.values()), key=lambda r: r.origin_time)
    assert float(great_circle_km(finals[0].lat, finals[0].lon, *SRC)) < 50
    assert float(great_circle_km(finals[1].lat, finals[1].lon, *krakatau)) < 50
    assert all("ODD" not in r.stations_used for r in finals)


def test_plume_joins_the_eruption() -> None:
    plume = Detection("himawari", "plume", "plume_height", "1", ORIGIN + 700, ORIGIN + 900,
                      57.0, "km", ORIGIN + 900, lat=-20.5, lon=-175.4)
    revs = associate([plume, *pressure_dets()], GAUGES)
    assert len({r.incident_id for r in revs}) == 1
    assert "plume" in revs[-1].evidence and "pressure_front" in revs[-1].evidence
    assert revs[-1].extra["plume_height_km"] == 57.0


def seismic_picks(src: tuple[float, float], t0: float) -> list[Detection]:
    """Exact P picks (obspy.taup iasp91) at real station sites for a source at ``src``."""
    from replay.seismic_scenario import SITES, Quake, p_arrival

    q = Quake(src[0], src[1], 10.0, t0, 5.8)
    out = []
    for sid, (lat, lon) in SITES.items():
        onset = p_arrival(q, lat, lon)[0]
        out.append(Detection(sid, "seismic", "sta_lta", "1", onset, onset + 5, 5e4, "counts",
                             onset + 50, lat=lat, lon=lon, extra={"band_hz": [0.05, 0.2]}))
    return out


def test_the_eruptions_seismic_event_joins_its_pressure_incident() -> None:
    dets = pressure_dets() + seismic_picks(SRC, ORIGIN)
    revs = associate(dets, GAUGES)
    assert len({r.incident_id for r in revs}) == 1
    last = revs[-1]
    assert last.type == "volcanic_eruption" and "seismic" in last.evidence
    assert "pressure_front" in last.evidence
    seis = last.extra["seismic"]
    assert float(great_circle_km(seis["lat"], seis["lon"], *SRC)) < 25
    assert abs(seis["origin_time"] - ORIGIN) < 5
    assert {k for k in last.detections if k.startswith("sta_lta:")} == {
        d.key for d in seismic_picks(SRC, ORIGIN)}
    # the same whichever arrives first, through the incremental associator
    assoc = Associator(GAUGES)
    for d in sorted(dets, key=lambda d: (d.declared, d.key)):
        assoc.add(d)
    assert [r.to_dict() for r in assoc.revisions()] == [r.to_dict() for r in revs]


def test_a_distant_earthquake_does_not_join_the_eruption() -> None:
    from detectors.seismic import associate_seismic

    far = (-30.0, -177.0)  # Kermadec, ~1100 km from Hunga Tonga
    quake = seismic_picks(far, ORIGIN + 300)
    assert associate_seismic(quake), "the earthquake itself must be located"
    revs = associate(pressure_dets() + quake, GAUGES)
    assert len({r.incident_id for r in revs}) == 1  # an earthquake alone opens nothing
    assert all("seismic" not in r.evidence for r in revs)


def test_a_seismic_event_re_formed_by_a_late_pick_is_retracted() -> None:
    """The earliest station's pick comes in last (its data were late): association in
    declaration order now forms the event from it, under another id. The event handed out
    before is retracted (a revision after its last, no picks); the new one comes out; and
    the revision numbers of an event only grow."""
    from detectors.seismic import LOCATED, RETRACTED

    picks = sorted(seismic_picks((-30.0, -177.0), ORIGIN), key=lambda d: d.onset)
    late, rest = picks[0], picks[1:]
    assoc = Associator([], lateness_s=600.0, onset_lag_s=60.0)
    sent = []
    for d in rest:
        assoc.add(d)
        sent.extend(assoc.take_seismic())
    assert sent and {e.status for e in sent} == {LOCATED}
    (first_id,) = {e.event_id for e in sent}
    assert [e.revision for e in sent] == list(range(1, len(sent) + 1))
    assert assoc.take_seismic() == []  # nothing new: nothing handed out again

    assoc.add(late)
    after = assoc.take_seismic()
    gone = [e for e in after if e.event_id == first_id]
    new = [e for e in after if e.event_id != first_id]
    assert [(e.status, e.revision, e.picks) for e in gone] == [(RETRACTED, sent[-1].revision + 1,
                                                                ())]
    assert gone[0].origin == sent[-1].origin and gone[0].issued >= sent[-1].issued
    assert len(new) == 1 and new[0].status == LOCATED
    assert late.key in {d.key for d in new[0].picks}
    assert gone[0].as_dict()["status"] == RETRACTED and gone[0].as_dict()["arrivals"] == []
    assert assoc.take_seismic() == []  # the retraction is handed out once

    # days later (and a pick an hour after those, to move the checkpoint on), neither
    # event is remembered, nor handed out again
    later = seismic_picks((-30.0, -177.0), ORIGIN + 4 * 86400)
    for d in [*later, dataclasses.replace(later[0], onset=later[0].onset + 3600,
                                          declared=later[0].declared + 3600)]:
        assoc.add(d)
    handed = assoc.take_seismic()
    assert handed and {e.status for e in handed} == {LOCATED}  # the new picks' event
    assert {e.event_id for e in handed}.isdisjoint({first_id, new[0].event_id})
    assert assoc.state_size()["seismic_handed_out"] == 1  # the newest event's


def _weeks_of_detections(days: int, seed: int) -> list[Detection]:
    """A feed of ``days`` days: an eruption every few days at one of three volcanoes (its
    pulses, a plume, its seismic event, the watch's sea level), and between them unrelated
    pulses, sea-level anomalies, plumes, an earthquake and stray seismic picks."""
    rng = random.Random(seed)
    volcanoes = [SRC, (-6.10, 105.42), (-15.4, 167.8)]
    gauges = [(g.station_id, g.lat, g.lon) for g in GAUGES if g.kind == "tide_gauge"]
    from replay.seismic_scenario import SITES

    dets: list[Detection] = []
    for day in range(days):
        t0 = ORIGIN + day * 86400 + rng.uniform(0, 43200)
        if day % 3 == 0:
            src = volcanoes[(day // 3) % len(volcanoes)]
            dets += [pulse(f"{s}", *ll, src=src, t0=t0, jitter=rng.gauss(0, 20))
                     for s, ll in BAROS.items()]
            dets.append(Detection("himawari", "plume", "plume_height", "1", t0 + 700,
                                  t0 + 900, 30.0 + day, "km", t0 + 900, lat=src[0] + 0.05,
                                  lon=src[1]))
            if src == SRC:
                dets += seismic_picks(src, t0)
            sid, lat, lon = gauges[day % len(gauges)]
            dist = float(great_circle_km(*src, lat, lon))
            dets.append(sea(sid, lat, lon, t0 + dist * 1000 / 315 + 600))
        if day % 4 == 1:
            dets += seismic_picks((-30.0, -177.0), t0)
        for _ in range(3):  # unrelated pulses, a few hours apart
            s, ll = rng.choice(list(BAROS.items()))
            t = ORIGIN + day * 86400 + rng.uniform(0, 86400)
            dets.append(Detection(s, "barometer", "lamb_pulse", "1", t, t + 600, 1.0, "hPa",
                                  t + 900, lat=ll[0], lon=ll[1]))
        sid, lat, lon = rng.choice(gauges)
        dets.append(sea(sid, lat, lon, ORIGIN + day * 86400 + rng.uniform(0, 86400)))
        if day % 5 == 2:  # a plume far from any volcano of the feed
            t = ORIGIN + day * 86400 + rng.uniform(0, 86400)
            dets.append(Detection("himawari", "plume", "plume_height", "1", t, t + 200, 12.0,
                                  "km", t + 200, lat=40.0, lon=140.0))
        for _ in range(4):  # stray seismic picks
            sid, (lat, lon) = rng.choice(list(SITES.items()))
            t = ORIGIN + day * 86400 + rng.uniform(0, 86400)
            dets.append(Detection(sid, "seismic", "sta_lta", "1", t, t + 5, 3e4, "counts",
                                  t + 50, lat=lat, lon=lon, extra={"band_hz": [0.05, 0.2]}))
    return dets


def test_the_bounded_associator_gives_what_association_of_everything_gives() -> None:
    """Over three weeks the associator retires what can no longer change, takes late
    detections by re-running its tail, and still ends with exactly the revisions and the
    seismic events of associating the whole set at once."""
    from detectors.seismic import RETRACTED

    dets = _weeks_of_detections(21, seed=3)
    events: dict[str, object] = {}
    reference = [r.to_dict() for r in associate(dets, GAUGES, seismic_out=events)]
    assert len({r["incident_id"] for r in reference}) >= 20
    assert any("seismic" in r["evidence"] for r in reference)
    rng = random.Random(5)
    # arrival: in declared order, but one in ten held back for up to 2 h
    arrival = sorted(dets, key=lambda d: d.declared + (rng.uniform(0, 7200)
                                                         if rng.random() < 0.1 else 0.0))
    assoc = Associator(GAUGES, lateness_s=4 * 3600.0)
    emitted, seismic, peak = [], [], 0
    for d in arrival:
        emitted.extend(assoc.add(d))
        seismic.extend(assoc.take_seismic())
        peak = max(peak, assoc.state_size()["incidents"])
    assert [r.to_dict() for r in assoc.revisions()] == reference
    latest = {r.key: r for r in emitted}
    kept = sorted((r for r in latest.values() if r.status != "retracted"),
                  key=lambda r: (r.issued, r.key))
    assert [r.to_dict() for r in kept] == reference
    # what can no longer change has left: at most a few days of incidents at any time
    total = len({r["incident_id"] for r in reference})
    assert peak <= total // 2, (peak, total)
    assert assoc.state_size()["incidents"] < total // 3
    # every event of the reference was handed out as it ends there, and every other one
    # handed out was retracted
    last = {}
    for e in seismic:
        last[e.event_id] = e
    assert set(events) <= set(last)
    for eid, e in last.items():
        if eid in events:
            ref = events[eid]
            assert e.status != RETRACTED and e.origin == ref.origin and e.picks == ref.picks
        else:
            assert e.status == RETRACTED


def test_a_detection_the_checkpoint_has_passed_is_refused_by_name() -> None:
    from detectors.association import LateDetection

    dets = sorted(_weeks_of_detections(4, seed=1), key=lambda d: (d.declared, d.key))
    assoc = Associator(GAUGES, lateness_s=3600.0, onset_lag_s=3600.0)
    for d in dets[:-1]:
        assoc.add(d)
    old = next(d for d in dets if assoc.floor <= d.declared < assoc.checkpoint)
    assert assoc.add(old) == []  # a redelivery the floor has not passed: a duplicate
    late = dataclasses.replace(old, onset=old.onset - 1.0)  # another detection
    with pytest.raises(LateDetection, match=rf"{late.key}.*checkpoint"):
        assoc.add(late)
    newest = dets[-1]
    # an onset more than the lag before its own declaration: refused, even with the floor
    # below it (it would stay in the tail while the floor passed it)
    early_onset = dataclasses.replace(newest, onset=newest.declared - 3601.0)
    assert early_onset.onset > assoc.floor
    with pytest.raises(LateDetection, match="onset_lag_s = 3600 s before its declaration"):
        assoc.add(early_onset)
    assoc.add(newest)  # and it goes on
    with pytest.raises(ValueError, match="lateness_s = -1"):
        Associator(GAUGES, lateness_s=-1)


def _fed_one_by_one(dets: list[Detection], **kw: float) -> Associator:
    assoc = Associator(GAUGES, **kw)  # type: ignore[arg-type]
    for d in sorted(dets, key=lambda d: (d.declared, d.key)):
        assoc.add(d)
    return assoc


def test_retiring_keeps_what_the_edges_of_the_rules_still_reach() -> None:
    """With no lateness allowed and the onset lag at the sea-level detector's, each rule
    used at the far end of its window: the last detection still finds what it joins."""
    krakatau = (-6.10, 105.42)
    t1 = ORIGIN + 86400
    sites = {"JKT": (-6.2, 106.8), "SGP": (1.29, 103.85), "DRW": (-12.46, 130.84),
             "PER": (-31.95, 115.86), "CLB": (6.93, 79.85)}
    dets = [pulse(f"K{s}", *ll, src=krakatau, t0=t1) for s, ll in sites.items()]
    # the reach's longest rule: the watch's last minutes at Buenaventura, near Krakatau's
    # antipode (19,645 km at 150 m/s, plus its 3-h tail: 39.4 h after the eruption, 36.7 h
    # after its last pulse)
    bvnt = (3.88, -77.07)
    watch_end = t1 + float(great_circle_km(*krakatau, *bvnt)) * 1e3 / 150 + 3 * 3600
    edges = [sea("bvnt", *bvnt, watch_end - 300)]
    # three pulses near Tonga wait unassigned for a fourth, far one 4.4 h later
    t2 = ORIGIN + 3 * 86400
    dets += [pulse(s, *BAROS[s], t0=t2) for s in ("NUKU", "NIUE", "APIA")]
    edges.append(pulse("HILO", *BAROS["HILO"], t0=t2))
    # a plume at the end of its window from that eruption
    edges.append(Detection("himawari", "plume", "plume_height", "1", t2 + 6 * 3600 - 300,
                           t2 + 6 * 3600, 20.0, "km", t2 + 6 * 3600, lat=-20.5, lon=-175.4))
    # a tsunami incident's cluster, its second station 23.9 h after the first
    t3 = ORIGIN + 6 * 86400
    dets.append(sea("NZA", -42.37, 176.91, t3))
    edges.append(sea("abur", 31.58, 131.41, t3 + 23.9 * 3600))
    # the checkpoint moves on to the detection before the newest, and what it retires goes
    # before the next one comes: two stray picks just before each detection at an edge
    for edge in edges:
        for t in (edge.declared - 2.0, edge.declared - 1.0):
            dets.append(Detection("II.MSVF.10.LHZ", "seismic", "sta_lta", "1", t - 50,
                                  t - 45, 1e4, "counts", t, lat=-17.745, lon=178.053,
                                  extra={"band_hz": [0.05, 0.2]}))
    dets += edges
    reference = [r.to_dict() for r in associate(dets, GAUGES)]
    final = {r["incident_id"]: r for r in reference}
    eruptions = [r for r in final.values() if r["type"] == "volcanic_eruption"]
    assert len(eruptions) == 2 and all(r["stations_used"] for r in eruptions)
    krak = next(r for r in eruptions if "KJKT" in r["stations_used"])
    assert krak["confirmed"] == ["bvnt"]
    tonga = next(r for r in eruptions if r is not krak)
    assert {"NUKU", "HILO"} <= set(tonga["stations_used"]) and "plume" in tonga["evidence"]
    (tsunami,) = [r for r in final.values() if r["type"] == "tsunami"]
    assert tsunami["confirmed"] == ["NZA", "abur"]

    assoc = _fed_one_by_one(dets, lateness_s=0.0, onset_lag_s=3600.0)
    assert [r.to_dict() for r in assoc.revisions()] == reference
    assert assoc.state_size()["incidents"] == 1  # only the tsunami is young enough to stay


def test_retired_seismic_picks_and_events_are_beyond_any_later_pick() -> None:
    """A quake's picks 60-90 s apart, the checkpoint 10 s behind the newest onset: the
    first picks wait as pending, the later ones join the event, as with no retiring."""
    from detectors.seismic import associate_seismic

    picks = sorted(seismic_picks((-30.0, -177.0), ORIGIN), key=lambda d: d.onset)
    assert picks[-1].onset - picks[0].onset > 60
    reference = [e.as_dict() for e in associate_seismic(picks)]
    assert reference and reference[-1]["revision"] >= 2  # formed, then joined
    assoc = Associator([], lateness_s=0.0, onset_lag_s=60.0)
    got = []
    for d in sorted(picks, key=lambda d: (d.declared, d.key)):
        assoc.add(d)
        got += [e.as_dict() for e in assoc.take_seismic()]
    assert got == reference


def test_an_event_retired_before_it_was_taken_still_comes_out_once() -> None:
    from detectors.seismic import associate_seismic

    picks = seismic_picks((-30.0, -177.0), ORIGIN) + seismic_picks((-30.0, -177.0),
                                                                   ORIGIN + 3 * 86400)
    reference = {e.event_id: e.as_dict() for e in associate_seismic(picks)}
    assert len(reference) == 2
    assoc = _fed_one_by_one(picks, lateness_s=0.0, onset_lag_s=60.0)
    assert assoc.state_size()["seismic_events"] == 1  # the first has been retired
    out = assoc.take_seismic()
    assert {e.event_id: e.as_dict() for e in out} == reference
    assert assoc.take_seismic() == []


def test_a_pick_too_far_for_the_travel_time_table_does_not_join_and_breaks_nothing() -> None:
    """A pick 28 deg from a located quake, its onset 40 min before the quake's first: the
    event relocated with it would need travel times beyond the table's 40 deg. It used to
    raise ValueError out of the association; it now just does not join."""
    from detectors.seismic import associate_seismic

    picks = seismic_picks((-30.0, -177.0), ORIGIN)
    first, last = min(d.onset for d in picks), max(d.declared for d in picks)
    far = Detection("XX.FAR..LHZ", "seismic", "sta_lta", "1", first - 2400, first - 2395, 1e4,
                    "counts", last + 10, lat=-30.0, lon=150.0, extra={"band_hz": [0.05, 0.2]})
    alone = associate_seismic(picks)
    events = associate_seismic([*picks, far])
    assert [e.as_dict() for e in events] == [e.as_dict() for e in alone]
    assert all(far.key not in {d.key for d in e.picks} for e in events)


def test_an_error_in_a_step_leaves_the_associator_as_it_was(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A detection whose association raises, in order (after changing the state) or late
    (in a re-run of the tail), is lost alone: what comes after ends as if it had never
    come."""
    import detectors.association as association

    pulses = sorted(pressure_dets(), key=lambda d: d.declared)
    confirm = sea("abur", 31.58, 131.41, ORIGIN + 8106e3 / 315 + 600)
    reference = [r.to_dict() for r in associate([*pulses, confirm], GAUGES)]

    def plume(declared: float) -> Detection:
        return Detection("himawari", "plume", "plume_height", "1", declared - 200,
                         declared, 40.0, "km", declared, lat=-20.5, lon=-175.4)

    in_order = plume(pulses[5].declared + 1.0)  # it joins the eruption, then raises
    late = plume(ORIGIN + 300)  # before every pulse, it comes after them all
    add_plume = association._add_plume

    def failing(det: Detection, *args: Any) -> Any:
        joined = add_plume(det, *args)
        if det.key in (in_order.key, late.key):
            raise RuntimeError(f"bad plume {det.key}")
        return joined

    monkeypatch.setattr(association, "_add_plume", failing)
    assoc = Associator(GAUGES)
    failed = []
    for d in [*pulses[:6], in_order, *pulses[6:], late, confirm]:
        try:
            assoc.add(d)
        except RuntimeError as exc:
            failed.append(str(exc))
    assert failed == [f"bad plume {in_order.key}", f"bad plume {late.key}"]
    assert [r.to_dict() for r in assoc.revisions()] == reference


def test_late_detections_re_run_from_the_snapshot_before_their_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots of the tail's state (every 3 detections with 2 kept; every one): a late
    detection re-runs from the newest one before its place (or from the checkpoint when it
    is older than those). What comes out, revisions and seismic events in their order, is
    what re-running from the checkpoint gives, in fewer steps; and the revisions end as
    associating everything at once gives."""
    import detectors.association as association

    dets = _weeks_of_detections(10, seed=4)
    reference = [r.to_dict() for r in associate(dets, GAUGES)]
    rng = random.Random(9)
    arrival = sorted(dets, key=lambda d: d.declared + (rng.uniform(0, 6 * 3600)
                                                         if rng.random() < 0.2 else 0.0))
    late = sum(1 for a, b in zip(arrival, arrival[1:], strict=False)
               if (b.declared, b.key) < (a.declared, a.key))
    assert late > 20
    run_step = association._Run.step
    steps = 0

    def counted(self: object, state: object, det: Detection) -> object:
        nonlocal steps
        steps += 1
        return run_step(self, state, det)  # type: ignore[arg-type]

    monkeypatch.setattr(association._Run, "step", counted)

    def feed(every: int, snaps: int) -> tuple[list[Any], list[Any], int]:
        nonlocal steps
        monkeypatch.setattr(association, "SNAP_EVERY", every)
        monkeypatch.setattr(association, "SNAPS", snaps)
        steps = 0
        assoc = Associator(GAUGES)
        emitted, seismic = [], []
        for d in arrival:
            emitted += [r.to_dict() for r in assoc.add(d)]
            seismic += [e.as_dict() for e in assoc.take_seismic()]
        assert [r.to_dict() for r in assoc.revisions()] == reference
        return emitted, seismic, steps

    emitted, seismic, from_checkpoint = feed(1, 0)
    assert seismic and emitted
    latest = {(r["incident_id"], r["revision"]): r for r in emitted}
    assert sorted((r for r in latest.values() if r["status"] != "retracted"),
                  key=lambda r: (r["issued"], r["incident_id"], r["revision"])) == sorted(
        reference, key=lambda r: (r["issued"], r["incident_id"], r["revision"]))
    for every, snaps in ((3, 2), (1, 1000)):
        got_emitted, got_seismic, n = feed(every, snaps)
        assert got_emitted == emitted and got_seismic == seismic
        assert n < 0.8 * from_checkpoint, (every, snaps, n, from_checkpoint)


def test_a_detection_sent_again_under_its_key_is_associated_once_in_both() -> None:
    """The tsunami detector sends its final amplitude hours later under the same key. The
    bounded Associator dropped it as a redelivery; the reference took it, and there it
    joined the eruption that had formed meanwhile: the same observation counted in two
    incidents, and the two disagreed (found in review)."""
    import dataclasses

    near = StationInfo("nukug", "tide_gauge", -21.13, -175.20)
    reg = [*GAUGES, near]
    on = ORIGIN + 300.0
    prov = Detection("nukug", "tide_gauge", "tsunami", "1", on, on + 600, 0.3, "m", on + 900,
                     lat=-21.13, lon=-175.20, extra={"final": False})
    final = dataclasses.replace(prov, amplitude=0.8, declared=on + 4 * 3600 + 5400,
                                extra={"final": True})
    assert final.key == prov.key
    dets = [*pressure_dets(), prov, final]
    reference = associate(dets, reg)
    bounded = Associator(reg)
    for d in sorted(dets, key=lambda d: (d.declared, d.key)):
        bounded.add(d)
    assert [r.to_dict() for r in reference] == [r.to_dict() for r in bounded.revisions()]
    # and as if the final copy had never come
    assert [r.to_dict() for r in reference] == [
        r.to_dict() for r in associate([*pressure_dets(), prov], reg)]
    holding = {r.incident_id for r in reference if prov.key in r.detections}
    assert len(holding) == 1, holding


def test_barometers_at_two_sites_open_no_eruption_incident() -> None:
    """Two channels at each of two sites passed min_stations = 4 and opened an eruption
    incident 9,400 km from the source, with watches and CAP alerts to follow."""
    from detectors.association import associate

    dets = [pulse(sid, lat, lon, jitter=j) for (sid, lat, lon), j in zip(
        [("NUKU.00", -21.14, -175.18), ("NUKU.10", -21.14, -175.18),
         ("MSVF.00", -17.745, 178.053), ("MSVF.10", -17.745, 178.053)],
        (15.0, -12.0, 20.0, -18.0), strict=True)]
    assert associate(dets, GAUGES) == []
    # two more sites: the front is there, and located
    dets += [pulse("pago", -14.28, -170.69, jitter=10.0), pulse("raro", -21.2, -159.8)]
    (rev, *_) = associate(dets, GAUGES)
    assert rev.type == "volcanic_eruption"
    assert float(great_circle_km(rev.lat, rev.lon, *SRC)) < 100


def test_a_detection_at_no_time_is_refused_naming_it() -> None:
    """A nan declared time sorted first in the associator's tail, and its checkpoint never
    moved again (the bounded state grew without end)."""
    import dataclasses
    import math

    from detectors.association import Associator

    good = pulse("NUKU", -21.14, -175.18)
    for name in ("declared", "onset"):
        bad = dataclasses.replace(good, **{name: math.nan})
        a = Associator(GAUGES)
        with pytest.raises(ValueError, match=f"{name} = nan is not a time"):
            a.add(bad)
        assert a.add(good) == [] and good.key in a._keys


def test_the_front_coming_back_round_the_globe_is_no_new_eruption() -> None:
    """The Lamb wave's return the long way round (2 pi R - d) fitted a source at the
    antipode, origin 17.7 h after the eruption, and its next pass (2 pi R + d) the volcano
    again 35 h later: two more eruption incidents, each with an Alert (the real AGBOM
    barometer over 48 h has the return, 35.5 h after the eruption). Both associations now
    keep one incident."""
    half = math.pi * 6371.0

    def later(sid: str, lat: float, lon: float, path_km: Any) -> Detection:
        on = ORIGIN + path_km(float(great_circle_km(*SRC, lat, lon))) * 1000 / 315
        return Detection(sid, "barometer", "lamb_pulse", "1", on, on + 600, -1.0, "hPa",
                         on + 700, lat=lat, lon=lon)

    dets = [pulse(s, *ll) for s, ll in BAROS.items()]
    for path in (lambda d: 2 * half - d, lambda d: 2 * half + d):
        dets += [later(s, *ll, path) for s, ll in BAROS.items()]
    bounded = Associator(GAUGES)
    revs = [r for d in sorted(dets, key=lambda d: (d.declared, d.key)) for r in bounded.add(d)]
    assert len({r.incident_id for r in revs}) == 1
    assert len({r.incident_id for r in associate(dets, GAUGES)}) == 1
    assert abs(revs[-1].lat - SRC[0]) < 0.5 and revs[-1].origin_time < ORIGIN + 600


def test_the_reference_association_forecasts_for_the_same_stations() -> None:
    """associate() took the registry as it came and put barometers under watch, where the
    Associator keeps tide gauges and DARTs only: on the tonga2022 registry the two gave
    other forecasts."""
    registry = [*GAUGES, StationInfo("BARO.X", "barometer", -21.1, -175.2, 0.0, "hPa")]
    dets = [pulse(s, *ll) for s, ll in BAROS.items()]
    bounded = Associator(registry)
    got = [r for d in sorted(dets, key=lambda d: (d.declared, d.key)) for r in bounded.add(d)]
    ref = associate(dets, registry)
    assert ref and [r.to_dict() for r in ref] == [r.to_dict() for r in got]
    assert all(f.kind != "barometer" for r in ref for f in r.forecasts)


@pytest.mark.parametrize("speed", [315.0, 325.0, 335.0])
def test_far_stations_of_a_faster_or_slower_wave_join_its_front(speed: float) -> None:
    """Four stations near the source fix the front at about the prior's 315 m/s; a wave
    at 325 or 335 m/s (Lamb waves run at 310-340) reached stations 8,000-16,000 km away
    800-1,600 s off that fit, past the fixed 600-s tolerance, and they began a second
    eruption (its own Alert) while the first kept its wrong ETAs."""
    far = {"TOKY": (35.7, 139.7), "SEAT": (47.6, -122.3), "LOND": (51.5, -0.1),
           "SANT": (-33.4, -70.6), "CAPE": (-33.9, 18.4), "DELH": (28.6, 77.2)}
    near = dict(list(BAROS.items())[:4])
    dets = []
    for sid, (lat, lon) in {**near, **far}.items():
        on = ORIGIN + float(great_circle_km(*SRC, lat, lon)) * 1000 / speed
        dets.append(Detection(sid, "barometer", "lamb_pulse", "1", on, on + 600, -1.0, "hPa",
                              on + 700, lat=lat, lon=lon))
    revs = associate(dets, GAUGES)
    assert len({r.incident_id for r in revs}) == 1
    assert abs(revs[-1].speed_m_s - speed) < 3.0


def test_sea_level_seen_before_the_front_is_located_goes_into_the_eruption() -> None:
    """A gauge by the source saw the sea rise before the fourth barometer: it opened a
    tsunami incident, the eruption formed later never took the observation, and its alert
    stayed a watch (Severe, Prepare) instead of Extreme, Evacuate, beside a second chain.
    Now the front takes the observation, and the tsunami incident, left empty, is
    withdrawn: its agencies get the eruption's alert, then the tsunami's Cancel."""
    from responders.stage import AlertStage

    gauges = [StationInfo("nkfa", "tide_gauge", -21.138, -175.1815),
              StationInfo("NZA", "bottom_pressure", -42.37, 176.91)]
    dets = [pulse(s, *BAROS[s]) for s in ("NUKU", "MSVF", "APIA", "AUCK")]
    lamb = float(great_circle_km(*SRC, -21.138, -175.1815)) * 1000 / 315
    dets.append(sea("nkfa", -21.138, -175.1815, ORIGIN + lamb + 120))
    bounded = Associator(gauges)
    emitted = [r for d in sorted(dets, key=lambda d: (d.declared, d.key)) for r in bounded.add(d)]
    assert [(r.type, r.status) for r in emitted] == [
        ("tsunami", "observed"), ("volcanic_eruption", "confirmed"), ("tsunami", "retracted")]
    (standing,) = associate(dets, gauges)
    assert standing.confirmed == ("nkfa",) and standing.status == "confirmed"
    assert [r.to_dict() for r in bounded.revisions()] == [standing.to_dict()]
    stage = AlertStage()
    sent = [(m.identifier.split(".")[1].split("-")[0], m.msg_type, m.severity)
            for r in emitted for m in stage.add(r)]
    assert sent == [("tsunami", "Alert", "Severe"), ("eruption", "Alert", "Extreme"),
                    ("tsunami", "Cancel", "Severe")]
