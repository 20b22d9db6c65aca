"""Seismic association, location and magnitude on picks with a known answer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from detectors.base import Detection
from detectors.geo import great_circle_km
from detectors.seismic import KM_PER_DEG, SeismicParams, associate_seismic, iasp91_p, locate
from replay.seismic_scenario import SITES, Quake, p_arrival

Q = Quake(lat=-20.0, lon=-174.5, depth_km=35.0, time=1_700_000_000.0, magnitude=6.0)


def pick(sid: str, onset: float, amplitude: float = 1000.0, declared: float | None = None,
         lat: float | None = None, lon: float | None = None) -> Detection:
    la, lo = SITES.get(sid, (lat, lon))
    return Detection(station_id=sid, kind="seismic", detector="sta_lta", detector_version="1",
                     onset=onset, peak_time=onset + 5, amplitude=amplitude, units="counts",
                     declared=(onset + 50) if declared is None else declared, lat=la, lon=lo,
                     extra={"band_hz": [0.05, 0.2]})


def exact_picks(q: Quake = Q, jitter_s: float = 0.0, seed: int = 0) -> list[Detection]:
    rng = np.random.default_rng(seed)
    return [pick(sid, p_arrival(q, lat, lon)[0] + jitter_s * rng.standard_normal())
            for sid, (lat, lon) in SITES.items()]


def test_table_matches_taup_between_its_nodes() -> None:
    from obspy.taup import TauPyModel

    tt = iasp91_p()
    model = TauPyModel("iasp91")
    for dist, depth in [(0.73, 12.0), (3.3, 27.0), (7.77, 41.0), (16.2, 88.0), (33.1, 240.0)]:
        exact = min(a.time for a in model.get_travel_times(
            source_depth_in_km=depth, distance_in_degree=dist, phase_list=["ttp"]))
        assert float(tt(np.array([dist]), depth)[0]) == pytest.approx(exact, abs=1.0)


def test_exact_picks_locate_on_the_source() -> None:
    o = locate(exact_picks())
    assert float(great_circle_km(o.lat, o.lon, Q.lat, Q.lon)) < 5.0
    assert abs(o.time - Q.time) < 1.0
    assert abs(o.depth_km - Q.depth_km) <= 15.0
    assert o.rms_s < 0.5


def test_revisions_as_picks_arrive_and_magnitude() -> None:
    gain = 6.0e8
    picks = []
    for d in exact_picks(jitter_s=1.0):
        dist = float(great_circle_km(Q.lat, Q.lon, d.lat, d.lon)) / KM_PER_DEG
        a_um = 10.0 * 10 ** (Q.magnitude - 1.66 * np.log10(dist) - 3.3)
        picks.append(pick(d.station_id, d.onset, amplitude=a_um * 1e-6 * gain))
    events = associate_seismic(picks, SeismicParams(gains={s: gain for s in SITES}))
    assert len({e.event_id for e in events}) == 1
    assert [e.revision for e in events] == list(range(1, len(events) + 1))
    assert len(events[0].picks) >= 4 and len(events[-1].picks) == len(SITES)
    assert [e.issued for e in events] == sorted(e.issued for e in events)
    last = events[-1]
    assert float(great_circle_km(last.origin.lat, last.origin.lon, Q.lat, Q.lon)) < 25.0
    assert abs(last.origin.time - Q.time) < 5.0
    assert last.magnitude is not None
    assert last.magnitude.value == pytest.approx(6.0, abs=0.1)
    assert last.magnitude.station_count == len(SITES)


def test_declaration_order_not_arrival_order_of_messages() -> None:
    picks = exact_picks(jitter_s=0.5)
    a = associate_seismic(picks)
    shuffled = picks[:]
    random.Random(4).shuffle(shuffled)
    assert [e.as_dict() for e in associate_seismic(shuffled)] == [e.as_dict() for e in a]
    assert a and a[-1].magnitude is None  # no gains, no magnitude


def test_inconsistent_or_too_few_picks_make_no_event() -> None:
    picks = exact_picks()
    assert associate_seismic(picks[:3]) == []
    # the same stations, picked at random times within the span: no consistent source
    rng = np.random.default_rng(2)
    scattered = [pick(d.station_id, Q.time + float(rng.uniform(0, 200))) for d in picks]
    assert associate_seismic(scattered) == []
    # sea-level and pressure detections are not picks
    other = [Detection(**{**d.__dict__, "kind": "barometer"}) for d in picks]
    assert associate_seismic(other) == []


def test_two_quakes_are_two_events() -> None:
    q2 = Quake(lat=-16.0, lon=-173.0, depth_km=20.0, time=Q.time + 1800.0, magnitude=5.5)
    events = associate_seismic(exact_picks() + exact_picks(q2))
    last = {e.event_id: e for e in events}
    assert len(last) == 2
    found = sorted(last.values(), key=lambda e: e.origin.time)
    for ev, q in zip(found, (Q, q2), strict=True):
        assert float(great_circle_km(ev.origin.lat, ev.origin.lon, q.lat, q.lon)) < 25.0


def test_locate_refuses_repeated_stations() -> None:
    picks = exact_picks()
    with pytest.raises(ValueError, match="distinct stations"):
        locate([picks[0], picks[0], picks[1], picks[2]])


def test_source_near_the_antimeridian_locates_on_it() -> None:
    q = Quake(lat=-18.0, lon=179.6, depth_km=33.0, time=Q.time, magnitude=6.0)
    # stations on both sides of 180 deg; the first to be reached is at lon -179.8
    sites = {"A": (-18.2, -179.8), "B": (-15.0, -178.0), "C": (-21.0, 177.5),
             "D": (-17.0, 176.0), "E": (-23.0, -176.0)}
    picks = [pick(sid, p_arrival(q, la, lo)[0], lat=la, lon=lo)
             for sid, (la, lo) in sites.items()]
    assert min(picks, key=lambda d: d.onset).station_id == "A"
    for o in [locate(picks), locate(picks, fixed_depth_km=33.0),
              *(e.origin for e in associate_seismic(picks))]:
        assert -180.0 <= o.lon < 180.0, o.lon
        assert abs(o.lon - 179.6) < 0.2, o.lon
        assert abs(o.lat - q.lat) < 0.2 and abs(o.time - q.time) < 2.0
    assert associate_seismic(picks), "the five picks make an event"


@pytest.mark.parametrize(("source", "sites"), [
    # across the North Pole from the first station (the one nearest the source)
    ((88.0, 180.0), [(85.0, 0.0), (80.0, 170.0), (78.0, -150.0), (82.0, 60.0),
                     (79.0, -60.0), (76.0, 120.0)]),
    # 757 km east of the first station, at 70 N: beyond +-12 degrees of longitude there
    ((70.0, 40.0), [(70.0, 20.0), (66.0, 20.0), (74.0, 20.0), (62.0, 25.0), (78.0, 25.0)]),
])
def test_a_source_across_the_pole_or_far_east_at_high_latitude_is_found(
        source: tuple[float, float], sites: list[tuple[float, float]]) -> None:
    """The search grid was a box of latitude and longitude degrees around the first
    station: clipped at 89.9 N (no source beyond the pole) and, at 70 N, 456 km wide each
    way east-west where it is 1334 km north-south. It is now square in kilometres."""
    q = Quake(lat=source[0], lon=source[1], depth_km=35.0, time=1_700_000_000.0,
              magnitude=5.5)
    picks = [pick(f"S{i}", p_arrival(q, la, lo)[0], lat=la, lon=lo)
             for i, (la, lo) in enumerate(sites)]
    assert min(picks, key=lambda d: d.onset).station_id == "S0"
    o = locate(picks, fixed_depth_km=35.0)
    assert float(great_circle_km(o.lat, o.lon, *source)) < 10.0, (o.lat, o.lon)
    assert abs(o.time - q.time) < 1.0 and o.rms_s < 0.5 and -180.0 <= o.lon < 180.0
