"""Lamb-wave pulse detector: reference vs streaming, packet sizes, known answers, real data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from detectors.base import StationInfo
from detectors.pressure import LambPulseDetector, lamb_pulse_reference
from replay.scenario import lamb_pulse

HPA = StationInfo("BARO.TEST", "barometer", -21.1, -175.2, 0.0, "hPa")
COUNTS = StationInfo("XX.TEST.00.LDI", "barometer", -17.7, 178.0, 0.0, "counts")
T0 = 1_642_200_000.0
ONSET = T0 + 6 * 3600.0


def record(dt: float = 1.0, hours: float = 10.0, amp: float = 2.0, seed: int = 0,
           noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Weather trend, atmospheric tide (S2), noise and a Lamb pulse at ONSET."""
    rng = np.random.default_rng(seed)
    t = T0 + np.arange(0.0, hours * 3600.0, dt)
    s = t - T0
    v = (1010.0 + 0.3 * s / 3600.0 / 24 + 0.8 * np.cos(2 * np.pi * s / 43200.0)
         + noise * rng.standard_normal(len(t)))
    v += amp * lamb_pulse(t - ONSET, 300.0)
    return t, v


def stream(station: StationInfo, t: np.ndarray, v: np.ndarray, n: int) -> list:
    det = LambPulseDetector(station)
    dt = float(t[1] - t[0])
    out = []
    for i in range(0, len(t), n):
        out.extend(det.feed(float(t[i]), dt, v[i:i + n]))
    return out


def same(a: list, b: list) -> None:
    """The same detections to floating-point tolerance (the streaming detector fits its
    line in closed form, the reference with numpy.polyfit)."""
    assert [d.key for d in a] == [d.key for d in b]
    for x, y in zip(a, b, strict=True):
        assert (x.peak_time, x.declared, x.params) == (y.peak_time, y.declared, y.params)
        assert x.onset == pytest.approx(y.onset, abs=1e-6)
        assert x.amplitude == pytest.approx(y.amplitude, rel=1e-9, abs=1e-12)
        assert x.extra["snr"] == pytest.approx(y.extra["snr"], abs=0.011)
        assert x.extra["sigma"] == pytest.approx(y.extra["sigma"], rel=1e-9)


def broken(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """NaN samples, a spike and a 20-min gap (as NaN) before the pulse."""
    v = v.copy()
    v[(t > T0 + 3600) & (t < T0 + 3700)] = np.nan
    v[np.searchsorted(t, T0 + 2.5 * 3600)] += 30.0
    v[(t > T0 + 4 * 3600) & (t < T0 + 4 * 3600 + 1200)] = np.nan
    return v


@pytest.mark.parametrize("case", ["clean", "broken", "minute"])
def test_streaming_equals_the_reference(case: str) -> None:
    t, v = record(dt=60.0 if case == "minute" else 1.0)
    if case == "broken":
        v = broken(t, v)
    fast = stream(HPA, t, v, 600)
    ref = lamb_pulse_reference(t, v, HPA)
    assert ref, "no detection would make the comparison meaningless"
    same(fast, ref)


@pytest.mark.parametrize("n", [1, 7, 60, 599, 3601])
def test_packet_size_does_not_change_the_detections(n: int) -> None:
    t, v = record()
    v = broken(t, v)
    whole = stream(HPA, t, v, len(t))
    assert len(whole) == 1
    assert stream(HPA, t, v, n) == whole


def test_known_pulse_onset_peak_and_declaration() -> None:
    t, v = record()
    (d,) = stream(HPA, t, v, 60)
    assert abs(d.onset - ONSET) <= 120.0
    assert d.amplitude == pytest.approx(2.0, rel=0.25)
    assert d.onset <= d.peak_time <= d.onset + 600
    assert d.declared >= d.onset + 600  # after the measuring window
    assert d.extra["snr"] > 8


def test_quiet_spiky_and_flat_records_never_trigger() -> None:
    t, v = record(amp=0.0)
    v = broken(t, v)
    assert stream(HPA, t, v, 60) == []
    flat = np.full(len(t), 1013.2)
    assert stream(HPA, t, flat, 60) == []


def test_counts_station_has_no_hpa_floor() -> None:
    t, v = record(amp=0.0, noise=2.0)
    v = 1e5 + 100 * (v - 1010.0)
    v += 400.0 * lamb_pulse(t - ONSET, 300.0)
    (d,) = stream(COUNTS, t, v, 60)
    assert d.params["min_amplitude"] == 0.0
    assert abs(d.onset - ONSET) <= 180.0


def _agbom(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    from streams.schemas import parse_time

    rows = list(csv.DictReader((shared / "tonga2022" / "barometer"
                                / "tonga_bp_AGBOM_1min_hPa.csv").open()))
    t = np.array([parse_time(r["time_utc"].strip()) for r in rows])
    v = np.array([float(r["pressure_hPa"]) for r in rows])
    return t, v


def test_real_barometers_streaming_equals_the_reference(shared_data: Path) -> None:
    from obspy import read

    t, v = _agbom(shared_data)
    fast = stream(HPA, t, v, 10)
    assert fast
    same(fast, lamb_pulse_reference(t, v, HPA))
    tr = read(str(shared_data / "tonga2022" / "barometer"
                  / "Tonga_2022-01-15_II.MSVF.00.LDI.mseed")).merge()[0]
    tm = tr.stats.starttime.timestamp + np.arange(tr.stats.npts) * tr.stats.delta
    vm = np.ma.filled(np.ma.asarray(tr.data, dtype=np.float64), np.nan)
    fast = stream(COUNTS, tm, vm, int(60 / tr.stats.delta))
    assert fast
    same(fast, lamb_pulse_reference(tm, vm, COUNTS))
