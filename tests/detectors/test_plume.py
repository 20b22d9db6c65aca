from __future__ import annotations

import numpy as np
import pytest

from detectors.base import PacketError, StationInfo
from detectors.plume import PlumeDetector

SAT = StationInfo("HIMAWARI8.PLUME", "plume", 0.0, 140.7, 0.0, "m")
T0 = 1642220160.0


def frame(rng: np.random.Generator, top_km: float, n: int = 400, lat0: float = -20.5,
          lon0: float = -175.4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = lat0 + rng.normal(0, 0.3, n)
    lon = lon0 + rng.normal(0, 0.3, n)
    r = np.hypot(lat - lat0, lon - lon0)
    h = top_km * 1000 * np.exp(-r / 0.3)
    return lat, lon, h


def test_flags_once_above_threshold_with_location() -> None:
    rng = np.random.default_rng(3)
    det = PlumeDetector(SAT)
    out = []
    for i, top in enumerate([8.0, 12.0, 30.0, 45.0, 40.0]):
        out += det.feed_frame(T0 + 600 * i, *frame(rng, top))
    assert len(out) == 1
    d = out[0]
    assert d.onset == T0 + 1200 and d.kind == "plume" and d.units == "km"
    assert 15.0 <= d.amplitude <= 30.0
    assert abs(d.lat + 20.5) < 0.2 and abs(d.lon + 175.4) < 0.2
    assert d.params["threshold_km"] == 15.0


def test_a_few_hot_pixels_do_not_flag_and_nan_is_no_plume() -> None:
    det = PlumeDetector(SAT)
    lat = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    lon = np.array([140.0, 140.1, 140.2, 140.3, 140.4])
    h = np.array([20000.0, 21000.0, 22000.0, np.nan, 3000.0])
    assert det.feed_frame(T0, lat, lon, h) == []  # 3 pixels < min_pixels=4


def test_rearms_after_quiet_period_and_rejects_bad_frames() -> None:
    rng = np.random.default_rng(4)
    det = PlumeDetector(SAT, rearm_s=3600)
    assert len(det.feed_frame(T0, *frame(rng, 30))) == 1
    assert det.feed_frame(T0 + 600, *frame(rng, 30)) == []
    assert det.feed_frame(T0 + 1200, *frame(rng, 5)) == []
    assert det.feed_frame(T0 + 5000, *frame(rng, 5)) == []
    assert len(det.feed_frame(T0 + 6000, *frame(rng, 30))) == 1
    with pytest.raises(PacketError, match="not after"):
        det.feed_frame(T0, *frame(rng, 30))
    with pytest.raises(PacketError, match="differ in shape"):
        det.feed_frame(T0 + 9e4, np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="threshold_km=-1"):
        PlumeDetector(SAT, threshold_km=-1)


def test_location_of_a_plume_straddling_the_antimeridian() -> None:
    from detectors.plume import plume_reference

    lat = np.array([51.93, 51.93, 51.93, 51.93])
    lon = np.array([179.97, 179.99, -179.99, -179.97])
    h = np.array([20000.0, 20500.0, 21000.0, 20200.0])
    fast = PlumeDetector(SAT).feed_frame(T0, lat, lon, h)
    ref = plume_reference([(T0, lat, lon, h)], SAT)
    assert len(fast) == 1 and fast == ref
    d = fast[0]
    assert -180.0 <= d.lon < 180.0
    # within 0.03 deg of the pixels' centre (179.98-180.02), not on the 0 meridian
    assert abs((d.lon - 179.98 + 180.0) % 360.0 - 180.0) < 0.03, d.lon
    assert d.lat == pytest.approx(51.93)


def test_a_frame_at_no_time_or_off_the_globe_is_refused_naming_it() -> None:
    """A nan frame time passed the order check and made a detection at a nan onset; pixels
    at lat 95, lon 400 made a plume at lat 95."""
    rng = np.random.default_rng(5)
    det = PlumeDetector(SAT)
    with pytest.raises(PacketError, match="plume frame time nan is not finite"):
        det.feed_frame(float("nan"), *frame(rng, 30))
    lat, lon, h = frame(rng, 30)
    lat[7] = 95.0
    with pytest.raises(PacketError, match=r"pixel 7 at lat 95\.0, lon .* is not on the globe"):
        det.feed_frame(T0, lat, lon, h)
    # neither left a mark: the same frame with its pixel on the globe flags
    lat[7] = -20.5
    (d,) = det.feed_frame(T0, lat, lon, h)
    assert d.onset == T0 and abs(d.lat + 20.5) < 0.2
