"""Tsunami detector on synthetic records with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.base import StationInfo
from detectors.mofjeld import MofjeldDetector
from detectors.sealevel import TsunamiDetector, highpass, zero_crossing_period

GAUGE = StationInfo("TG1", "tide_gauge", -21.1, -175.2, 0.0, "m")
T0 = 1_600_000_000.0
ONSET = T0 + 20 * 3600.0


def record(dt: float = 60.0, hours: float = 30.0, amp: float = 0.3, period: float = 1800.0,
           noise: float = 0.004, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    t = T0 + np.arange(0.0, hours * 3600.0, dt)
    tide = 0.6 * np.cos(2 * np.pi * (t - T0) / 44714.0) + 0.2 * np.cos(
        2 * np.pi * (t - T0) / 86164.0 + 1.0)
    x = t - ONSET
    wave = np.where(x >= 0, amp * np.sin(2 * np.pi * x / period) * np.exp(-x / (3 * period)),
                    0.0)
    rng = np.random.default_rng(seed)
    return t, tide + wave + noise * rng.standard_normal(len(t))


def run(t: np.ndarray, v: np.ndarray, chunk: int, **params: float) -> list:
    det = TsunamiDetector(GAUGE, **params)
    dt = float(t[1] - t[0])
    out = []
    for i in range(0, len(t), chunk):
        out.extend(det.feed(float(t[i]), dt, v[i:i + chunk].astype(np.float64)))
    return out


def test_detects_onset_amplitude_and_period() -> None:
    t, v = record()
    dets = run(t, v, 600)
    assert len(dets) == 2  # the declaration and the final amplitude, same key
    first, final = dets
    assert first.key == final.key and final.extra["final"] and not first.extra["final"]
    assert abs(first.onset - ONSET) <= 180.0
    peak = 0.3 * math.exp(-1 / 12)  # the first crest, a quarter period in
    assert final.amplitude == pytest.approx(peak, rel=0.15)
    assert final.extra["period_s"] == pytest.approx(1800.0, rel=0.25)
    assert first.declared <= ONSET + 1200.0


@pytest.mark.parametrize("chunk", [1, 7, 60, 599, 5000])
def test_chunked_equals_whole(chunk: int) -> None:
    t, v = record(dt=15.0, hours=26.0)
    whole = run(t, v, len(t))
    assert whole, "no detection would make the comparison meaningless"
    assert run(t, v, chunk) == whole


def test_quiet_record_spikes_and_seiche_raise_nothing() -> None:
    t, v = record(amp=0.0)
    v = v.copy()
    v[900] += 0.5  # one-sample spike
    v[1500:1502] -= 0.3  # a two-sample glitch
    seiche = (t > T0 + 24 * 3600) & (t < T0 + 25 * 3600)
    # an hour of 4-min harbour seiche, 6 cm, building up and dying away
    taper = np.sin(np.pi * (t[seiche] - T0 - 24 * 3600) / 3600.0) ** 2
    v[seiche] += 0.06 * taper * np.sin(2 * np.pi * (t[seiche] - T0) / 240.0)
    assert run(t, v, 600) == []


@pytest.mark.parametrize("at", [600, 905, 1200, 1207, 1700])
@pytest.mark.parametrize("spike", [0.5, -3.0])
def test_one_bad_sample_anywhere_raises_nothing(at: int, spike: float) -> None:
    """One bad sample, 10 min after it entered the baseline, bent the fitted cubic (block
    means): the residuals after it declared a tsunami in 17 of 18 cases (the one at index
    900 above happened to miss). With block medians it is left out of the fit."""
    t, v = record(amp=0.0)
    v = v.copy()
    v[at] += spike
    assert run(t, v, 600) == []


def test_one_bad_sample_in_the_tide_history_moves_neither_the_fit_nor_a_real_wave() -> None:
    """A single 99 in the 30-day harmonic history bent a month of tide predictions: false
    declarations later, and a real wave reported early at 3.5 m instead of 0.14 m."""
    t, v = record(hours=30.0)
    bad = v.copy()
    bad[60] = 99.0  # within the first day: the tide fits include it
    clean, spoiled = run(t, v, 600), run(t, bad, 600)
    assert len(clean) == 2
    assert [(d.onset, round(d.amplitude, 3)) for d in spoiled] == [
        (d.onset, round(d.amplitude, 3)) for d in clean]


def test_flat_lined_sensor_never_triggers() -> None:
    t, v = record()
    v = v.copy()
    v[int(15 * 60):] = v[int(15 * 60)]  # stuck from hour 15, through the "tsunami"
    assert run(t, v, 600) == []


def test_gap_rewarms_without_a_false_trigger() -> None:
    t, v = record(amp=0.0)
    v = v.copy()
    v[600:700] = np.nan  # a 100-min gap with a level shift after it
    v[700:] += 0.05
    assert run(t, v, 600) == []


def test_ndbc_mix_of_15_min_and_1_min_samples() -> None:
    # routine 15-min samples until an hour before the wave, then 1-min event-mode samples
    det = TsunamiDetector(StationInfo("D1", "bottom_pressure", 38.7, 148.8, 0.0, "m"))
    t15, v15 = record(dt=900.0, hours=19.0, noise=0.001)
    t1, v1 = record(dt=60.0, hours=30.0, noise=0.001)
    out = det.feed(float(t15[0]), 900.0, v15)
    keep = t1 > t15[-1]
    out += det.feed(float(t1[keep][0]), 60.0, v1[keep])
    assert out and abs(out[0].onset - ONSET) <= 240.0


def test_rejects_out_of_order_packets() -> None:
    det = TsunamiDetector(GAUGE)
    det.feed(T0, 60.0, np.zeros(10))
    with pytest.raises(ValueError, match="not after the last sample"):
        det.feed(T0 + 300.0, 60.0, np.zeros(10))


def test_mofjeld_baseline_triggers_on_30_mm() -> None:
    t, v = record(dt=60.0, noise=0.001)
    det = MofjeldDetector(GAUGE)
    dets = det.feed(float(t[0]), 60.0, v)
    assert dets and abs(dets[0].onset - ONSET) <= 600.0


def test_highpass_and_period_helpers() -> None:
    t = np.arange(0.0, 8 * 3600.0, 60.0)
    wave = 0.2 * np.sin(2 * np.pi * t / 1200.0)
    hp = highpass(t, wave + 1e-5 * t, 3 * 3600.0)
    ok = np.isfinite(hp)
    assert ok.sum() > 100
    assert np.max(np.abs(hp[ok] - wave[ok])) < 0.03
    assert zero_crossing_period(t, wave) == pytest.approx(1200.0, rel=0.01)


def test_a_gauge_on_the_equator_fits_its_tide() -> None:
    """utide divides by sin(lat): a gauge at 0.0 deg used to fail the harmonic fit."""
    t, v = record(dt=60.0, hours=40.0)
    equator = StationInfo("EQ1", "tide_gauge", 0.0, -90.0, 0.0, "m")
    det = TsunamiDetector(equator)
    out = []
    for i in range(0, len(t), 600):
        out.extend(det.feed(float(t[i]), 60.0, v[i:i + 600].astype(np.float64)))
    assert out and abs(out[0].onset - ONSET) <= 180.0


def test_a_detector_fed_its_horizon_ends_as_one_fed_from_the_start() -> None:
    """A worker that takes a gauge over rebuilds its detector from the last ``horizon_s``
    of record (32 days by default; the topic keeps 35). The harmonic refits used to fall a
    day after the previous one, counted from the detector's first bin: a detector started
    later (at another time of day) fitted its tide at other instants, on other histories.
    They now fall on multiples of ``harmonic_refit_s``, so the rebuilt one fits what the
    first did and declares the same tsunami. (A 10-day history keeps the test short.)"""
    days, params = 16, {"harmonic_history_s": 10 * 86400.0}
    onset = T0 + 15.2 * 86400.0
    t = T0 + np.arange(0.0, days * 86400.0, 60.0)
    rng = np.random.default_rng(3)
    tide = (0.6 * np.cos(2 * np.pi * (t - T0) / 44714.0)
            + 0.2 * np.cos(2 * np.pi * (t - T0) / 86164.0 + 1.0)
            + 0.1 * np.cos(2 * np.pi * (t - T0) / 43200.0 + 0.4))
    x = t - onset
    wave = np.where(x >= 0, 0.3 * np.sin(2 * np.pi * x / 1800.0) * np.exp(-x / 5400.0), 0.0)
    v = tide + wave + 0.004 * rng.standard_normal(len(t))
    start = T0 + 3 * 86400.0 + 5 * 3600.0  # another time of day than the first detector's
    assert t[-1] - start >= TsunamiDetector(GAUGE, **params).horizon_s == 12 * 86400.0

    def feed(first: float) -> tuple[TsunamiDetector, list]:
        det, out = TsunamiDetector(GAUGE, **params), []
        for i in range(int(np.searchsorted(t, first)), len(t), 600):
            out.extend(det.feed(float(t[i]), 60.0, v[i:i + 600]))
        return det, out

    (whole, found), (rebuilt, refound) = feed(T0), feed(start)
    assert whole._s.tide_fit_t == rebuilt._s.tide_fit_t
    assert np.array_equal(whole._s.tide_table, rebuilt._s.tide_table)
    assert found and abs(found[-1].onset - onset) <= 300.0, found
    assert refound[-2:] == found[-2:]  # the declaration and its final amplitude
