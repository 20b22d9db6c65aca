"""Tsunami detector: streaming vs the whole-record reference, synthetic and real records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detectors.base import Detection
from detectors.sealevel import TsunamiDetector, tsunami_reference
from replay.package import Series, series_to_packets
from tests.detectors.test_sealevel import GAUGE, record


def packets(t: np.ndarray, v: np.ndarray, seconds: float,  # type: ignore[no-untyped-def]
            station=GAUGE) -> list:
    """The record in packets of ``seconds`` (cut where NDBC's sample interval changes)."""
    return list(series_to_packets(station, Series(t, v.astype(np.float64)), seconds))


def stream_and_reference(t: np.ndarray, v: np.ndarray, seconds: float,  # type: ignore[no-untyped-def]
                         station=GAUGE, detector=TsunamiDetector, reference=tsunami_reference
                         ) -> tuple[list[Detection], list[Detection]]:
    """The streaming detector fed the packets, and the reference fed the same samples."""
    det = detector(station)
    fast: list[Detection] = []
    pkts = packets(t, v, seconds, station)
    for pkt in pkts:
        fast.extend(det.feed(pkt.start, pkt.sample_interval, pkt.values))
    tt = np.concatenate([p.start + p.sample_interval * np.arange(len(p.values)) for p in pkts])
    vv = np.concatenate([p.values for p in pkts])
    return fast, reference(tt, vv, station)


def same(a: list[Detection], b: list[Detection]) -> None:
    """Equal to floating-point tolerance (block means are summed in another order)."""
    assert [(d.key, d.extra.get("final")) for d in a] == [(d.key, d.extra.get("final")) for d in b]
    for x, y in zip(a, b, strict=True):
        assert x.onset == pytest.approx(y.onset, abs=1e-3)
        assert x.peak_time == y.peak_time and x.declared == y.declared
        assert x.amplitude == pytest.approx(y.amplitude, rel=1e-6, abs=1e-9)
        for k in ("snr", "sigma", "period_s", "tide", "final", "trigger"):
            vx, vy = x.extra.get(k), y.extra.get(k)
            if isinstance(vx, float):
                assert vx == pytest.approx(vy, rel=1e-4, abs=1e-4), k
            else:
                assert vx == vy, k


@pytest.mark.parametrize("history_h", [0.0, 30.0])  # 30 h before: a harmonic tide too
def test_streaming_equals_the_reference(history_h: float) -> None:
    t, v = record(dt=60.0, hours=30.0)
    if history_h:
        # the same gauge recorded for history_h more hours before (tide and noise only)
        tp = t[0] - history_h * 3600.0 + np.arange(0.0, history_h * 3600.0, 60.0)
        s = tp - t[0]
        rng = np.random.default_rng(7)
        vp = (0.6 * np.cos(2 * np.pi * s / 44714.0) + 0.2 * np.cos(2 * np.pi * s / 86164.0 + 1.0)
              + 0.004 * rng.standard_normal(len(tp)))
        t, v = np.concatenate([tp, t]), np.concatenate([vp, v])
    fast, ref = stream_and_reference(t, v, 36000.0)
    assert fast, "no detection would make the comparison meaningless"
    assert fast[0].extra["tide"] == ("harmonic" if history_h else "cubic")
    same(fast, ref)


def test_gaps_nan_and_a_spike_equal_the_reference() -> None:
    t, v = record(dt=60.0, hours=30.0)
    v = v.copy()
    v[100:140] = np.nan                      # 40 min of NaN
    v[900] += 1.0                            # a spike
    keep = (t < t[0] + 8 * 3600) | (t > t[0] + 9 * 3600)  # a one-hour hole
    t, v = t[keep], v[keep]
    fast, ref = stream_and_reference(t, v, 37 * 60.0)
    assert fast
    same(fast, ref)


def test_real_dart_and_tide_gauge_equal_the_reference(shared_data: Path) -> None:
    from detectors.base import StationInfo
    from replay.package import read_ndbc_series
    from replay.realdata import DARTS

    root = shared_data / "tohoku2011" / "dart_ndbc_raw"
    for dart in ("21418", "21413"):
        s = read_ndbc_series(root / f"{dart}.txt")
        lat, lon = DARTS[dart]
        st = StationInfo(dart, "bottom_pressure", lat, lon, 0.0, "m")
        fast, ref = stream_and_reference(s.times, s.values, 30000.0, st)
        assert fast, dart
        same(fast, ref)
        assert all(math.isfinite(d.amplitude) for d in fast)


# ---------------------------------------------------------------- the NOAA DART baseline
def mofjeld_stream_and_reference(t: np.ndarray, v: np.ndarray, seconds: float,  # type: ignore[no-untyped-def]
                                 station=GAUGE) -> tuple[list[Detection], list[Detection]]:
    from detectors.mofjeld import MofjeldDetector, mofjeld_reference

    return stream_and_reference(t, v, seconds, station, MofjeldDetector, mofjeld_reference)


def same_mofjeld(a: list[Detection], b: list[Detection]) -> None:
    assert [(d.key, d.declared, d.peak_time) for d in a] == [
        (d.key, d.declared, d.peak_time) for d in b]
    for x, y in zip(a, b, strict=True):
        assert x.amplitude == pytest.approx(y.amplitude, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("seconds", [60.0, 420.0, 3600.0, 1e6])
def test_mofjeld_streaming_equals_the_reference_in_any_packets(seconds: float) -> None:
    t, v = record(dt=60.0, hours=26.0, noise=0.001)
    v = v.copy()
    v[300:303] = np.nan  # a short hole
    v[500:502] += 0.2    # a two-sample spike (the shaking a DART records)
    fast, ref = mofjeld_stream_and_reference(t, v, seconds)
    assert len(fast) >= 2, "the spike and the wave"
    same_mofjeld(fast, ref)


def test_mofjeld_real_dart_equals_the_reference(shared_data: Path) -> None:
    from detectors.base import StationInfo
    from replay.package import read_ndbc_series
    from replay.realdata import DARTS

    s = read_ndbc_series(shared_data / "tohoku2011" / "dart_ndbc_raw" / "21413.txt")
    lat, lon = DARTS["21413"]
    st = StationInfo("21413", "bottom_pressure", lat, lon, 0.0, "m")
    fast, ref = mofjeld_stream_and_reference(s.times, s.values, 30000.0, st)
    assert len(fast) >= 5  # the shaking, then the wave and its coda, 4 h apart
    same_mofjeld(fast, ref)
