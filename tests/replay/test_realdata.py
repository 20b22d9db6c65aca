"""Real recordings through the whole chain: in-process and through the real broker."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from replay.package import load_package
from replay.realdata import build_tohoku, build_tonga
from replay.run import detect_package
from streams.schemas import parse_time
from tests.conftest import detect_and_replay, same_reports
from tocsin.settings import Settings

ERUPTION = parse_time("2022-01-15T04:14:45Z")
TOHOKU = parse_time("2011-03-11T05:46:24Z")


@pytest.fixture(scope="module")
def tonga_pkg(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_package(build_tonga(shared_data, tmp_path_factory.mktemp("tonga")))


@pytest.fixture(scope="module")
def tohoku_pkg(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_package(build_tohoku(shared_data, tmp_path_factory.mktemp("tohoku")))


def test_tonga_real_barometers_and_seismometer(tonga_pkg) -> None:  # type: ignore[no-untyped-def]
    report = detect_package(tonga_pkg)
    by_station: dict[str, list[float]] = {}
    picks = [d for d in report["detections"] if d["kind"] == "seismic"]
    # the seismometer: the eruption's arrival is picked (~4 min after it, at 750 km), and
    # nothing in the 4.7 quiet hours before it
    assert picks and {d["detector"] for d in picks} == {"sta_lta"}
    first = min(parse_time(d["onset"]) for d in picks)
    assert ERUPTION + 60 <= first <= ERUPTION + 300
    for d in report["detections"]:
        if d["kind"] == "seismic":
            continue
        onset = parse_time(d["onset"])
        if onset < parse_time("2022-01-16T00:00:00Z"):
            by_station.setdefault(d["station_id"], []).append(onset)
    assert sorted(by_station) == ["AGBOM.TONGA", "II.MSVF.00.LDI"]
    (tonga,) = by_station["AGBOM.TONGA"]
    (fiji,) = by_station["II.MSVF.00.LDI"]
    assert ERUPTION <= tonga <= parse_time("2022-01-15T04:40:00Z")
    assert parse_time("2022-01-15T04:40:00Z") <= fiji <= parse_time("2022-01-15T05:05:00Z")


def test_every_real_detection_is_declared_within_the_settings_onset_lag(  # type: ignore[no-untyped-def]
        tonga_pkg, tohoku_pkg) -> None:
    """TOCSIN_ASSOCIATION_ONSET_LAG_S may not be set below the longest a detector declares
    after an onset (below it every such detection was refused as late): that bound holds
    on the real records, their tsunamis' final amplitudes (4.5 h after the onset) included."""
    from detectors.sealevel import SeaLevelParams
    from tocsin.settings import longest_declare_lag_s

    lags = [parse_time(d["declared"]) - parse_time(d["onset"])
            for pkg in (tonga_pkg, tohoku_pkg) for d in detect_package(pkg)["detections"]]
    p = SeaLevelParams()
    assert p.measure_s + p.highpass_s / 2 < max(lags) <= longest_declare_lag_s()
    assert min(lags) >= 0


# the de-tided peaks measured in ../shared/data/tohoku2011/PROVENANCE.md (value, time)
TOHOKU_PEAKS = {"21418": (1.87, "2011-03-11T06:19:00Z"), "21401": (0.66, "2011-03-11T06:53:00Z"),
                "21413": (0.77, "2011-03-11T07:07:00Z"), "21419": (0.54, "2011-03-11T07:16:00Z"),
                "nkfa": (0.62, "2011-03-11T18:06:00Z")}


def test_tohoku_real_sea_level(tohoku_pkg) -> None:  # type: ignore[no-untyped-def]
    report = detect_package(tohoku_pkg)
    dets = report["detections"]
    assert {d["detector"] for d in dets} == {"tsunami"}
    stations = sorted(d["station_id"] for d in dets)
    # one detection per station, none on the quiet days (the package starts on 1 March)
    assert stations == sorted(TOHOKU_PEAKS)
    for d in dets:
        peak, peak_time = TOHOKU_PEAKS[d["station_id"]]
        assert TOHOKU < parse_time(d["onset"]) < parse_time(peak_time), d
        assert abs(d["amplitude"] - peak) <= 0.3 * peak, d
        assert d["period_s"] is not None and 60 < d["period_s"] < 4 * 3600, d
    # far-field and near-field sea-level detections become one tsunami incident
    tsunami = [i for i in report["incidents"] if i["type"] == "tsunami"]
    assert len(tsunami) == 1
    assert sorted(tsunami[0]["confirmed"]) == stations


def test_tonga_msvf_gain_from_its_resp_file(tonga_pkg) -> None:  # type: ignore[no-untyped-def]
    # RESP.II.MSVF.10.LHZ: sensitivity 1.97716e9 counts/(m/s) at 0.05 Hz; the displacement
    # gain at the long-period band centre (0.1 Hz) is about S * 2 pi f
    gain = tonga_pkg.seismic_gains["II.MSVF.10.LHZ"]
    assert gain == pytest.approx(1.97716e9 * 2 * 3.141592653589793 * 0.1, rel=0.05)


@pytest.mark.kafka
def test_tonga_real_through_kafka_equals_detect(tonga_pkg, kafka_settings: Settings,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    """miniSEED replay sources (barometer and seismometer) through the real broker."""
    expected, got = detect_and_replay(tonga_pkg, kafka_settings, tmp_path)
    assert {d["kind"] for d in expected["detections"]} == {"barometer", "seismic"}
    same_reports(got, expected)


@pytest.mark.kafka
def test_tohoku_real_through_kafka_equals_detect(tohoku_pkg, kafka_settings: Settings,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    expected, got = detect_and_replay(tohoku_pkg, kafka_settings, tmp_path)
    assert expected["detections"], "an empty report would make the comparison meaningless"
    same_reports(got, expected)


def test_sea_level_detector_against_the_dart_baseline(tohoku_pkg, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    from replay.baseline_comparison import compare, tohoku_arrivals

    rows = {(r.station_id, r.detector): r
            for r in compare(tohoku_pkg, tohoku_arrivals(shared_data, TOHOKU), TOHOKU)}
    stations = sorted({sid for sid, _ in rows})
    assert stations == ["21401", "21413", "21418", "21419", "nkfa"]
    for sid in stations:
        ours, base = rows[(sid, "tsunami")], rows[(sid, "mofjeld")]
        # no more false alarms on the quiet days, and no more triggers that are not the wave
        assert ours.false_alarms == 0 and ours.false_alarms <= base.false_alarms, sid
        assert ours.early <= base.early, sid
    # the wave itself, 20 min before its reference arrival or later: at 21401 our one
    # trigger came earlier than that (counted early above), at the others it is the wave
    caught = {sid for sid in stations if math.isfinite(rows[(sid, "tsunami")].first_trigger)}
    assert caught == {"21413", "21418", "21419", "nkfa"}
    for sid in caught:
        # no later than the baseline, where it has the wave at all (a seismic trigger often
        # blinds it for its 4-h event mode)
        ours, base = rows[(sid, "tsunami")], rows[(sid, "mofjeld")]
        assert math.isnan(base.first_trigger) or ours.first_trigger <= base.first_trigger, sid
