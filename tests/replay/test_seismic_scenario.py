"""A synthetic earthquake on real MSVF noise: picked, associated, located, sized, exported.

The package is built at test time: real station coordinates, obspy.taup arrivals, and noise
cut from the quiet hours of the real II.MSVF.10.LHZ record (before the eruption).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detectors.geo import great_circle_km
from replay.package import load_package
from replay.run import detect_package
from replay.seismic_scenario import SITES
from responders.quakeml import event_quakeml
from streams.schemas import parse_time
from tests.conftest import QUAKE, detect_and_replay, same_reports
from tocsin.settings import Settings


@pytest.fixture(scope="module")
def quake_report(quake_pkg):  # type: ignore[no-untyped-def]
    return detect_package(quake_pkg, packet_seconds=60.0)


def test_located_within_25_km_and_5_s_magnitude_within_half(quake_report) -> None:  # type: ignore[no-untyped-def]
    picks = [d for d in quake_report["detections"] if d["kind"] == "seismic"]
    assert sorted(d["station_id"] for d in picks) == sorted(SITES)  # one pick each
    (ev,) = quake_report["seismic_events"]
    assert ev["revisions"] >= 2  # revised as later picks arrived
    assert sorted(ev["stations"]) == sorted(SITES)
    err_km = float(great_circle_km(ev["lat"], ev["lon"], QUAKE.lat, QUAKE.lon))
    assert err_km <= 25.0, ev
    assert abs(parse_time(ev["origin_time"]) - QUAKE.time) <= 5.0, ev
    assert ev["magnitude"] == pytest.approx(QUAKE.magnitude, abs=0.5), ev
    assert 0 < ev["magnitude_sigma"] < 0.5
    assert ev["herr_km"] <= 50.0 and ev["gap_deg"] < 270.0
    assert all(abs(a["residual_s"]) <= 5.0 for a in ev["arrivals"])


def test_coordinates_and_gains_come_from_the_stationxml(quake_pkg) -> None:  # type: ignore[no-untyped-def]
    from replay.seismic_scenario import GAIN

    assert {s.info.station_id: (s.info.lat, s.info.lon) for s in quake_pkg.stations} == SITES
    gains = quake_pkg.seismic_gains
    assert sorted(gains) == sorted(SITES)
    assert all(g == pytest.approx(GAIN, rel=1e-3) for g in gains.values())


def test_bad_inventory_is_a_clear_package_error(quake_pkg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from replay.package import PackageError

    bad = tmp_path / "pkg"
    shutil.copytree(quake_pkg.root, bad)
    (bad / "data" / "stations.xml").write_text("not xml")
    with pytest.raises(PackageError, match="inventory 'data/stations.xml'"):
        load_package(bad)
    (bad / "data" / "stations.xml").unlink()
    with pytest.raises(PackageError, match="no such file"):
        load_package(bad)
    toml = (bad / "event.toml").read_text().replace('inventory = "data/stations.xml"\n', "")
    (bad / "event.toml").write_text(toml)
    with pytest.raises(PackageError, match="II.MSVF.10.LHZ has no lat/lon"):
        load_package(bad)


def test_quakeml_is_valid_and_reads_back(quake_report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import obspy
    from lxml import etree

    ev = quake_report["seismic_events"][0]
    xml = event_quakeml(ev)
    assert event_quakeml(ev) == xml  # same revision, same document
    xsd = Path(obspy.__file__).parent / "io" / "quakeml" / "data" / "QuakeML-1.2.xsd"
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    doc = etree.fromstring(xml)
    assert schema.validate(doc), schema.error_log
    path = tmp_path / "ev.xml"
    path.write_bytes(xml)
    (qev,) = obspy.read_events(str(path))
    o = qev.preferred_origin()
    assert o.latitude == pytest.approx(ev["lat"]) and o.longitude == pytest.approx(ev["lon"])
    assert abs(o.time.timestamp - parse_time(ev["origin_time"])) < 1e-3
    assert len(o.arrivals) == len(qev.picks) == len(SITES)
    assert qev.preferred_magnitude().mag == pytest.approx(ev["magnitude"])
    assert len(qev.station_magnitudes) == len(SITES)
    assert o.origin_uncertainty.horizontal_uncertainty == pytest.approx(ev["herr_km"] * 1000)
    # herr_km null (the schema allows it): no stated uncertainty, still valid (a TypeError)
    bare = etree.fromstring(event_quakeml({**ev, "herr_km": None}))
    assert schema.validate(bare), schema.error_log
    assert bare.find(".//{*}originUncertainty") is None


def test_tocsin_quakeml_command(quake_report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.json"
    report.write_text(json.dumps(quake_report))
    out = tmp_path / "quakeml"
    run = subprocess.run([sys.executable, "-m", "tocsin", "quakeml", str(report),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (written,) = out.glob("*.xml")
    assert written.name == f"{quake_report['seismic_events'][0]['event_id']}.xml"
    assert written.read_text().startswith("<?xml")


def test_worker_gains_from_registry_and_inventory(quake_pkg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The gains a worker reads: the registry's gain column, else the inventory's."""
    from replay.package import PackageError, read_channels
    from replay.registry import read_gains, worker_gains, write_registry

    reg = tmp_path / "registry.csv"
    write_registry(quake_pkg.station_infos(), reg, quake_pkg.seismic_gains)
    assert read_gains(reg) == quake_pkg.seismic_gains
    assert len(read_gains(reg)) == len(SITES)
    inv = quake_pkg.root / quake_pkg.raw_event["seismic"]["inventory"]
    chans = read_channels(inv, quake_pkg.start, "test")
    assert {k: c.gain_m for k, c in chans.items()} == quake_pkg.seismic_gains
    assert worker_gains(None, inv, quake_pkg.start) == quake_pkg.seismic_gains
    one = tmp_path / "one.csv"
    sid = sorted(quake_pkg.seismic_gains)[0]
    one.write_text(f"station_id,kind,lat,lon,gain\n{sid},seismic,0,0,123.5\n")
    assert worker_gains(one, inv, quake_pkg.start) == {**quake_pkg.seismic_gains, sid: 123.5}
    bad = tmp_path / "bad.csv"
    bad.write_text("station_id,kind,lat,lon,gain\nXX.A..BHZ,seismic,0,0,-3\n")
    with pytest.raises(PackageError, match=r"bad.csv:2: gain '-3' of XX.A..BHZ"):
        read_gains(bad)


@pytest.mark.kafka
def test_through_kafka_equals_detect(quake_pkg, kafka_settings: Settings,  # type: ignore[no-untyped-def]
                                     tmp_path: Path) -> None:
    expected, got = detect_and_replay(quake_pkg, kafka_settings, tmp_path)
    assert len(expected["seismic_events"]) == 1
    same_reports(got, expected)
    # the workers published each revision of the event on the seismic topic as it was made
    streamed = got["run"]["seismic_revisions"]
    (ev,) = expected["seismic_events"]
    assert [m["revision"] for m in streamed] == list(range(1, ev["revisions"] + 1))
    last = streamed[-1]
    assert last["event_id"] == ev["event_id"]
    assert (last["lat"], last["lon"], last["depth_km"]) == (ev["lat"], ev["lon"], ev["depth_km"])
    assert abs(last["origin_time"] - parse_time(ev["origin_time"])) < 1e-3
    # the workers sized it with the package's gains (the registry's gain column)
    assert last["magnitude"] == pytest.approx(ev["magnitude"])
    assert last["magnitude_sigma"] == pytest.approx(ev["magnitude_sigma"])
