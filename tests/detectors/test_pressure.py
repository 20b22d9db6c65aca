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


@pytest.mark.parametrize("n", [7, 601])
@pytest.mark.parametrize("offset", [0.1, 0.0999, 0.1005])
def test_packets_cut_off_the_second_give_the_same_detections(n: int, offset: float) -> None:
    """A 10-Hz record starting at .1 s, cut into packets whose starts are ``t0 + i * dt``
    (as a feed or the replayer computes them): a start an ulp below a bin's first sample
    put that sample in the bin before, and the onset moved by 5-57 ms with the cut. Also
    at starts a tolerance would have tipped (.1 ms before a slot) and at a half
    millisecond (rounding closing times to the ms tipped there); miniSEED times are on a
    0.1-ms grid."""
    from detectors.bins import Binner

    t0, dt = T0 + offset, 0.1
    rng = np.random.default_rng(0)
    s = np.arange(int(9 * 3600 / dt)) * dt
    v = (1010.0 + 0.3 * s / 86400.0 + 0.8 * np.cos(2 * np.pi * s / 43200.0)
         + 0.05 * rng.standard_normal(len(s)) + 2.0 * lamb_pulse(s - 6 * 3600.0, 300.0))

    def cut(size: int) -> tuple[list, list]:  # type: ignore[type-arg]
        det, binner, dets, bins = LambPulseDetector(HPA), Binner(60.0), [], []
        for i in range(0, len(v), size):
            dets.extend(det.feed(t0 + i * dt, dt, v[i:i + size]))
            bins.extend(binner.push(t0 + i * dt, dt, v[i:i + size]))
        return dets, bins

    whole_dets, whole_bins = cut(len(v))
    assert len(whole_dets) == 1 and len(whole_bins) in (539, 540)  # the last one open
    dets, bins = cut(n)
    assert bins == whole_bins
    assert dets == whole_dets


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


# ---------------------------------------------------------------- many stations at once
def _state(det: LambPulseDetector) -> tuple:
    """Everything a detector's future output depends on."""
    if det._rows is not None:
        det._rows.release(det)
    s, b = det._s, det._binner
    pending = np.concatenate(b.pending) if b.pending else np.empty(0)
    event = (s.frozen, s.t_ref, s.sigma, s.onset, s.peak_t, s.peak_v, s.snr) if s.frozen else ()
    return (det._last_t, b.index, pending.tobytes(), list(s.times), list(s.values),
            list(s.recent), list(s.history), s.above, s.warm_since, s.last_bin_t,
            s.quiet_until, event)


def test_feed_many_equals_feeding_each_station_alone() -> None:
    """Barometers fed together in frames (packets of mixed lengths, stations missing from
    frames or a frame apart, NaN, a long hole, a flat line, 0.1-hPa steps, raw counts,
    pulses, a packet out of order) give the detections, errors and states of the same
    stations fed one by one, and the quiet ones go through the rows."""
    from detectors.pressure import LambRows

    rng = np.random.default_rng(5)
    m, n = 30, 9 * 3600
    t = np.arange(n, dtype=float)
    data = 1010.0 + np.cumsum(rng.standard_normal((m, n)) * 0.003, axis=1)
    data += 0.5 * np.sin(2 * np.pi * t / 43200.0)
    for j in range(0, m, 3):
        c = rng.uniform(3 * 3600, 8 * 3600)
        data[j] += 3.0 * lamb_pulse(t - c, 300.0)
    data[4, 10000:10100] = np.nan
    data[5, 20000:24000] = np.nan
    data[7, 15000:] = data[7, 15000]
    data[8, ::777] = np.nan
    data[9] = np.round(data[9], 1)
    stations = [StationInfo(f"B{i:02d}", "barometer", 0.0, i * 0.1,
                            units="counts" if i % 5 == 0 else "hPa") for i in range(m)]
    alone = [LambPulseDetector(s) for s in stations]
    together = [LambPulseDetector(s) for s in stations]
    groups: dict = {}
    advanced = 0
    real = LambRows.feed_frame

    def counting(self, dets, t0, dt, block):  # noqa: ANN001, ANN202
        nonlocal advanced
        left = real(self, dets, t0, dt, block)
        advanced += len(dets) - len(left)
        return left

    LambRows.feed_frame = counting  # type: ignore[method-assign]
    got_alone: list = []
    got_together: list = []
    pos = np.zeros(m, dtype=int)
    sizes = [1, 1, 1, 60, 600, 7, 1, 333, 90]
    k = 0
    try:
        while (pos < n).any():
            size = sizes[k % len(sizes)]
            k += 1
            calls = []
            for j in np.flatnonzero(pos < n):
                if j == 11 and k % 13 == 0:
                    continue  # missing from this frame
                step = size + 1 if j == 12 and k % 17 == 0 else size  # a frame apart
                a = pos[j]
                t0 = T0 + a
                if j == 13 and k % 29 == 0:
                    t0 -= 5.0  # out of order: an error, then on as before
                values = data[j, a:a + step].copy()
                try:
                    got_alone.append(alone[j].feed(t0, 1.0, values))
                except ValueError as e:
                    got_alone.append(str(e))
                calls.append((together[j], t0, 1.0, values))
                pos[j] += step
            for r in LambPulseDetector.feed_many(calls, groups):
                got_together.append(str(r) if isinstance(r, ValueError) else list(r))
    finally:
        LambRows.feed_frame = real  # type: ignore[method-assign]
    detections = [d for r in got_alone if isinstance(r, list) for d in r]
    assert len(detections) >= 8, len(detections)
    assert any(isinstance(r, str) for r in got_alone)
    assert got_together == got_alone
    assert [_state(d) for d in together] == [_state(d) for d in alone]
    assert advanced > 0.8 * sum(isinstance(r, list) for r in got_alone)


@pytest.mark.parametrize("early", [0.0, 600.0])
def test_a_detector_fed_its_horizon_declares_what_one_fed_from_the_start_does(
        early: float) -> None:
    """A worker that takes a barometer over rebuilds its detector from the last
    ``horizon_s`` of record (9.75 h, plus a margin), not from all the topic holds, and
    then declares what the first worker would have. Four pulses: the second comes within
    the refractory time of the first, so it is not declared. With one refractory time in
    the horizon (6.75 h) the rebuilt detector, still warming up at the first pulse,
    declared the second, so not the third, and the fourth 10 min early, after the
    takeover (found by review)."""
    rng = np.random.default_rng(4)
    t = T0 + np.arange(0.0, 20 * 3600.0, 60.0)
    s = t - T0
    v = (1010.0 + 0.3 * s / 86400.0 + 0.8 * np.cos(2 * np.pi * s / 43200.0)
         + 0.05 * rng.standard_normal(len(t)))
    for hours in (8.5, 9.5, 11.9, 14.5):
        v += 2.0 * lamb_pulse(t - (T0 + hours * 3600.0), 300.0)
    takeover = T0 + 14.35 * 3600.0
    horizon = LambPulseDetector(HPA).horizon_s
    assert horizon == 9.75 * 3600.0
    start = takeover - horizon - early  # the margin a rebuild reads before its horizon
    whole = stream(HPA, t, v, 7)
    assert [round((d.onset - T0) / 3600.0, 1) for d in whole] == [8.5, 11.9, 14.7], whole
    i = int(np.searchsorted(t, start))
    rebuilt = stream(HPA, t[i:], v[i:], 7)
    assert [d for d in rebuilt if d.declared > takeover] == [
        d for d in whole if d.declared > takeover]
    assert rebuilt == whole  # here it even found the same earlier ones
