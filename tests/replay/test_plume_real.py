"""The real Himawari-8 plume-height GeoTIFFs through the grid reader and the detector."""

from __future__ import annotations

from pathlib import Path

from detectors.geo import great_circle_km
from replay.package import load_package
from replay.realdata import build_tonga_plume
from replay.run import detect_package
from streams.schemas import parse_time


def test_himawari_plume_flags_the_eruption(shared_data: Path, tmp_path: Path) -> None:
    pkg = load_package(build_tonga_plume(shared_data, tmp_path / "plume"))
    frames = pkg.packets(pkg.stations[0], 600.0)
    assert len(frames) == 52
    report = detect_package(pkg)
    (det,) = report["detections"]
    assert det["detector"] == "plume_height"
    # first frame, 04:26 UTC, already holds a plume top far above 15 km
    assert parse_time(det["onset"]) == parse_time("2022-01-15T04:26:03Z")
    assert 25.0 < det["amplitude"] < 60.0
    (inc,) = report["incidents"]
    assert inc["type"] == "volcanic_eruption" and inc["evidence"] == ["plume"]
    # the overshooting top is over the volcano (20.546 S, 175.390 W)
    assert float(great_circle_km(inc["lat"], inc["lon"], -20.546, -175.390)) < 60


def test_detector_equals_the_reference_on_the_real_frames(shared_data: Path,
                                                          tmp_path: Path) -> None:
    """The real frames, and the same frames with a gap of 7 h that re-arms the detector,
    give the same flags from the detector and from the plain-Python reference."""
    from detectors.plume import PlumeDetector, plume_reference

    pkg = load_package(build_tonga_plume(shared_data, tmp_path / "plume"))
    frames = [(f.time, f.lat, f.lon, f.values) for f in pkg.packets(pkg.stations[0], 600.0)]
    shifted = [*frames[:20], *[(t + 7 * 3600.0, *rest) for t, *rest in frames[20:]]]
    for seq in (frames, shifted):
        # the defaults flag once; at 40 km the plume falls below and re-arms several times
        for params, flags in (({}, 1), ({"threshold_km": 40.0, "min_pixels": 10,
                                         "rearm_s": 1800.0}, 2)):
            det = PlumeDetector(pkg.stations[0].info, **params)
            fast = [d for t, la, lo, h in seq for d in det.feed_frame(t, la, lo, h)]
            ref = plume_reference(seq, pkg.stations[0].info, **params)
            assert len(fast) >= flags
            assert fast == ref
