"""Streaming STA/LTA picker: ObsPy equivalence, the real MSVF record, gaps, flat, clipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.base import PacketError, StationInfo
from detectors.picker import PickerParams, StaLtaPicker, aic_onset

LHZ = StationInfo("II.MSVF.10.LHZ", "seismic", -17.745, 178.053, 800.0, "counts")
BHZ = StationInfo("XX.TEST..BHZ", "seismic", 0.0, 0.0, 0.0, "counts")
ERUPTION = 1642220085.0  # 2022-01-15T04:14:45Z
T0 = 1_600_000_000.0


def feed_packets(picker: StaLtaPicker, t0: float, dt: float, x: np.ndarray,
                 n: int) -> tuple[list, np.ndarray]:
    dets, cf = [], []
    for i in range(0, len(x), n):
        dets.extend(picker.feed(t0 + i * dt, dt, x[i:i + n]))
        cf.append(picker.cf)
    return dets, np.concatenate(cf)


@pytest.fixture(scope="module")
def msvf(shared_data: Path) -> tuple[float, float, np.ndarray]:
    from obspy import read

    path = shared_data / "tonga2022" / "seismic" / "Tonga_2022-01-15_II.MSVF.10.LHZ.mseed"
    st = read(str(path))
    st.merge()
    tr = st[0]
    assert tr.stats.sampling_rate == 1.0
    return tr.stats.starttime.timestamp, tr.stats.delta, np.ma.filled(
        tr.data.astype(np.float64), np.nan)


@pytest.fixture(scope="module")
def msvf_1s(msvf) -> tuple[list, np.ndarray]:
    """The MSVF record fed in 1-s packets (one sample each): picks and the function."""
    t0, dt, x = msvf
    return feed_packets(StaLtaPicker(LHZ), t0, dt, x, 1)


def test_one_second_packets_give_obspys_characteristic_function(msvf, msvf_1s) -> None:
    from obspy.signal.filter import bandpass
    from obspy.signal.trigger import recursive_sta_lta

    t0, dt, x = msvf
    assert np.isfinite(x).all(), "the comparison needs one contiguous trace"
    _, cf = msvf_1s
    p = PickerParams.for_rate(1.0 / dt)
    # a band-pass has no DC gain: the picker's steady-state start on x equals a zero-state
    # filter of x - x[0], which is ObsPy's bandpass
    filtered = bandpass(x - x[0], p.freqmin, p.freqmax, 1.0 / dt, corners=p.corners,
                        zerophase=False)
    expected = recursive_sta_lta(filtered, int(p.sta_s / dt), int(p.lta_s / dt))
    assert len(cf) == len(expected) == len(x)
    np.testing.assert_allclose(cf, expected, rtol=1e-9, atol=1e-12)
    assert expected.max() > p.on  # the eruption: the comparison covers a trigger


def test_msvf_picks_the_eruption_and_nothing_in_the_quiet_hours(msvf, msvf_1s) -> None:
    t0, dt, x = msvf
    assert t0 < ERUPTION - 3 * 3600  # at least three quiet hours before it
    dets, _ = msvf_1s
    before = [d for d in dets if d.onset < ERUPTION]
    assert before == []
    first = min(dets, key=lambda d: d.onset)
    # MSVF is 750 km from Hunga Tonga: the eruption's long-period waves (Rayleigh waves at
    # ~3.5 km/s) arrive ~4 min after it
    assert ERUPTION + 60 <= first.onset <= ERUPTION + 300, first
    assert first.declared >= first.onset
    assert first.extra["snr"] > 5
    assert not first.extra["clipped"]


@pytest.mark.parametrize("n", [1, 7, 60, 1000])
def test_packet_size_does_not_change_the_picks(msvf, msvf_1s, n: int) -> None:
    t0, dt, x = msvf
    whole, cf_whole = feed_packets(StaLtaPicker(LHZ), t0, dt, x, len(x))
    assert whole, "no pick would make the comparison meaningless"
    chunked, cf = msvf_1s if n == 1 else feed_packets(StaLtaPicker(LHZ), t0, dt, x, n)
    assert chunked == whole
    np.testing.assert_allclose(cf, cf_whole, rtol=1e-9, atol=1e-12)


def test_a_picker_rebuilt_from_its_horizon_declares_what_one_fed_from_the_start_does(
        msvf) -> None:
    """A worker that takes a seismic channel over rebuilds its picker from the last
    ``horizon_s`` of record (``detectors.base.StreamDetector``). At every takeover time,
    every 97 s from half an hour before the eruption to the record's end, the rebuilt
    picker declares after it exactly what the one fed the whole record does. With one LTA
    of memory in the horizon (1330 s) the recursive LTA still remembered its start: 28 of
    the 765 rebuilt pickers gave another ``cf_max`` (11.07 for 11.06 at the first pick)."""
    t0, dt, x = msvf
    horizon = StaLtaPicker(LHZ).horizon_s
    whole = StaLtaPicker(LHZ).feed(t0, dt, x)
    assert len(whole) == 3, whole
    differ, n = [], 0
    for takeover in np.arange(ERUPTION - 1800.0, t0 + len(x) * dt - 600.0, 97.0):
        k0, k = int(np.ceil((takeover - horizon - t0) / dt)), int((takeover - t0) / dt)
        assert k0 > 0  # the rebuilt one has less than the whole record
        rebuilt = StaLtaPicker(LHZ)
        rebuilt.feed(t0 + k0 * dt, dt, x[k0:k])
        after = rebuilt.feed(t0 + k * dt, dt, x[k:])
        n += 1
        if after != [d for d in whole if d.declared >= t0 + k * dt]:
            differ.append(round(takeover - ERUPTION))
    assert n == 765
    assert differ == [], f"{len(differ)} of {n} takeovers (s after the eruption): {differ}"


def synthetic(seconds: float = 600.0, rate: float = 20.0, onset_s: float | None = 400.0,
              amp: float = 40.0, seed: int = 3) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 1000.0 + rng.standard_normal(n)  # a DC offset, as raw counts have
    if onset_s is not None:
        s = t - onset_s
        x += np.where(s >= 0, amp * np.sin(2 * np.pi * 1.2 * s) * np.exp(-s / 20.0), 0.0)
    return 1.0 / rate, x


def test_synthetic_onset_amplitude_and_snr() -> None:
    dt, x = synthetic()
    dets, _ = feed_packets(StaLtaPicker(BHZ), T0, dt, x, 20)
    assert len(dets) == 1
    d = dets[0]
    assert abs(d.onset - (T0 + 400.0)) <= 0.25  # AIC refines the trigger to the onset
    assert d.extra["trigger"] >= d.onset
    assert d.declared == pytest.approx(d.extra["trigger"] + 10.0)  # 5 x STA later
    assert 10.0 < abs(d.amplitude) < 45.0
    assert d.extra["snr"] > 10
    assert d.params["sta_s"] == 2.0 and d.params["freqmin"] == 0.7  # SeisComP defaults


@pytest.mark.parametrize("ahead", [0.3, -0.3, 0.004])
def test_headers_off_the_nominal_rate_are_the_time(ahead: float) -> None:
    """A digitiser's clock off its nominal rate: each 1-s packet's header starts
    ``ahead`` of a sample later (or earlier) than the count of samples says. The picks
    take the headers' times, and the channel stays one segment: counting on from the
    first sample, the drift reached half a sample after two packets and every packet
    then started a new segment, warming up again, so nothing was ever picked."""
    dt, x = synthetic()
    picker = StaLtaPicker(BHZ)
    dets = []
    n = 20
    for p, i in enumerate(range(0, len(x), n)):
        dets.extend(picker.feed(T0 + i * dt + p * ahead * dt, dt, x[i:i + n]))
    assert picker.status["segments"] == 1
    assert len(dets) == 1
    k = int(400.0 / dt)  # the onset's sample, and its header time
    onset = T0 + k * dt + (k // n) * ahead * dt
    assert abs(dets[0].onset - onset) <= 0.25
    if abs(ahead) > 0.1:
        assert abs(ahead) * (k // n) * dt > 1.0  # the count alone would be off by more


def test_gap_rewarms_without_a_pick_at_its_edge() -> None:
    dt, x = synthetic(onset_s=None)
    picker = StaLtaPicker(BHZ)
    dets, _ = feed_packets(picker, T0, dt, x[:4000], 20)
    # a 60-s gap, and the stream comes back with a different DC offset
    dets2, cf = feed_packets(picker, T0 + (4000 + 1200) * dt, dt, x[4000:] + 5000.0, 20)
    assert dets == dets2 == []
    assert picker.status["segments"] == 2
    assert (cf[: int(80 / dt)] == 0).all()  # warming up again: LTA samples of zeros


def test_nan_samples_start_a_new_segment_like_a_gap() -> None:
    dt, x = synthetic(onset_s=None)
    x[5000:5100] = np.nan
    x[5100:] += 3000.0
    picker = StaLtaPicker(BHZ)
    dets, cf = feed_packets(picker, T0, dt, x, 20)
    assert dets == []
    assert picker.status["segments"] == 2
    assert (cf[5000:5100 + int(80 / dt)] == 0).all()


def test_sample_rate_change_restarts_with_the_profile_of_the_new_rate() -> None:
    picker = StaLtaPicker(BHZ)
    dt, x = synthetic(onset_s=None)
    feed_packets(picker, T0, dt, x, 20)
    assert picker.params()["sta_s"] == 2.0
    rng = np.random.default_rng(5)
    assert picker.feed(T0 + 600.0, 1.0, rng.standard_normal(600)) == []
    assert picker.status["segments"] == 2
    assert picker.params()["sta_s"] == 10.0 and picker.params()["freqmax"] == 0.2


def test_flat_channel_is_flagged_and_never_picked() -> None:
    dt, x = synthetic(onset_s=None)
    x[6000:] = 1234.0  # a dead channel: the same count for the last 5 min
    picker = StaLtaPicker(BHZ)
    dets, cf = feed_packets(picker, T0, dt, x, 20)
    assert dets == []
    assert picker.status["flat"] is True
    assert (cf[6000 + int(30 / dt):] == 0).all()
    picker.feed(T0 + len(x) * dt, dt, np.random.default_rng(9).standard_normal(20))
    assert picker.status["flat"] is False


def test_clipped_arrival_is_flagged() -> None:
    dt, x = synthetic(amp=4000.0)
    x = np.clip(x, -1500.0, 1500.0 + 1000.0)  # the digitiser saturates
    dets, _ = feed_packets(StaLtaPicker(BHZ), T0, dt, x, 20)
    assert len(dets) == 1 and dets[0].extra["clipped"] is True
    dt, x = synthetic()
    dets, _ = feed_packets(StaLtaPicker(BHZ, clip_counts=1e6), T0, dt, x, 20)
    assert len(dets) == 1 and dets[0].extra["clipped"] is False


def test_per_stream_parameters_and_clear_errors() -> None:
    dt, x = synthetic()
    dets, _ = feed_packets(StaLtaPicker(BHZ, on=1e6), T0, dt, x, 20)
    assert dets == []
    with pytest.raises(PacketError, match="Nyquist"):
        StaLtaPicker(BHZ, freqmax=20.0).feed(T0, 0.05, x[:20])
    picker = StaLtaPicker(BHZ)
    picker.feed(T0, dt, x[:20])
    with pytest.raises(PacketError, match="not after"):
        picker.feed(T0, dt, x[:20])
    with pytest.raises(PacketError, match="float64"):
        picker.feed(T0 + 10, dt, x[:20].astype(np.float32))


@pytest.mark.parametrize("bad_dt", [1e-300, 1e-9])
def test_an_interval_the_band_cannot_be_filtered_at_is_refused_before_anything_changes(
        bad_dt: float) -> None:
    """A wrong header (seconds for nanoseconds): the band-pass is numerically singular
    there. Refused naming the station and the interval; the picker is as it was and still
    takes the right packet."""
    dt, x = synthetic()
    picker = StaLtaPicker(BHZ)
    with pytest.raises(PacketError, match=rf"{BHZ.station_id}: .* at a {bad_dt:g}-s sample"):
        picker.feed(T0, bad_dt, x[:20])
    assert picker.seg is None and picker.last_t == -np.inf
    got, _ = feed_packets(picker, T0, dt, x, 20)
    assert got == feed_packets(StaLtaPicker(BHZ), T0, dt, x, 20)[0]


def test_values_that_are_not_an_array_are_refused_in_feed_and_feed_many() -> None:
    dt, x = synthetic()
    quiet = np.random.default_rng(3).standard_normal(40_000)
    with pytest.raises(PacketError, match=rf"{BHZ.station_id}: .*array, got list"):
        StaLtaPicker(BHZ).feed(T0, dt, list(x[:20]))
    # a quiet channel in the shared rows, then a list for it next to a good packet
    stations = [StationInfo(f"XX.Q{i}..BHZ", "seismic", 0.0, 0.0) for i in range(2)]
    pickers = [StaLtaPicker(s) for s in stations]
    groups: dict = {}
    t, n = T0, 200
    for k in range(0, len(quiet) - n, n):
        StaLtaPicker.feed_many([(pk, t, dt, quiet[k:k + n]) for pk in pickers], groups)
        t += n * dt
    assert all(pk._rows is not None for pk in pickers)
    out = StaLtaPicker.feed_many([(pickers[0], t, dt, list(quiet[:n])),
                                  (pickers[1], t, dt, quiet[:n])], groups)
    assert isinstance(out[0], PacketError) and "got list" in str(out[0])
    assert "XX.Q0..BHZ" in str(out[0]) and list(out[1]) == []
    # the refused packet moved nothing: the same time is still to come on its channel
    again = StaLtaPicker.feed_many([(pickers[0], t, dt, quiet[:n]),
                                    (pickers[1], t, dt, quiet[:n])], groups)
    assert list(again[0]) == [] and isinstance(again[1], PacketError)
    assert "not after" in str(again[1])


def test_aic_finds_the_onset_of_a_step_in_variance() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(300), 20 * rng.standard_normal(100)])
    assert abs(aic_onset(x) - 300) <= 2


# ---------------------------------------------------------------- many channels at once
def _channels(seed: int = 2, channels: int = 40, seconds: float = 1500.0,
              rate: float = 20.0) -> np.ndarray:
    """Noise with bursts on every other channel, and the troubles the one-channel path
    handles: NaN samples, a hole, a channel going flat, a step into a constant."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    data = rng.standard_normal((channels, n)) * 100.0
    for c in range(0, channels, 2):
        for _ in range(3):
            k = int(rng.uniform(300, seconds - 100) * rate)
            data[c, k:k + 300] += rng.standard_normal(300) * 3000.0
    data[5, 5000:5100] = np.nan
    data[7, 6000:] = data[7, 6000]
    data[9, 3000:3500] = np.nan
    data[11, 8000:9000] = 5.0
    data[13, ::997] = np.nan
    return data


def test_feed_many_equals_feeding_each_channel_alone() -> None:
    """Channels fed together (packets of mixed lengths, gaps, a time jump, a new sample
    rate, a packet out of order) give the picks, functions, statuses and errors of the
    same channels fed one by one, and the quiet ones really go through the rows."""
    from detectors.picker import PickerRows

    rate, dt = 20.0, 0.05
    data = _channels(rate=rate)
    rng = np.random.default_rng(7)
    channels, n = data.shape
    stations = [StationInfo(f"XX.S{i:03d}..BHZ", "seismic", 0.0, 0.0) for i in range(channels)]
    alone = [StaLtaPicker(s) for s in stations]
    together = [StaLtaPicker(s) for s in stations]
    groups: dict = {}
    pos = np.zeros(channels, dtype=int)
    got_alone: list = []
    got_together: list = []
    advanced = 0
    real_advance = PickerRows.advance

    def counting(self, calls):  # noqa: ANN001, ANN202
        nonlocal advanced
        ok = real_advance(self, calls)
        advanced += int(ok.sum())
        return ok

    PickerRows.advance = counting  # type: ignore[method-assign]
    try:
        while (pos < n).any():
            calls = []
            for c in np.flatnonzero(pos < n):
                size = int(rng.choice([1, 1, 5, 20, 20, 20, 37, 500, 1300]))
                k = pos[c]
                t0, step = T0 + k * dt, dt
                if c == 15 and k > 10000:
                    t0 += 3600.0  # a jump forward: a new segment
                if c == 17 and k > 12000:
                    step = dt / 2  # the channel changes its sample rate
                if c == 19 and rng.random() < 0.02:
                    t0 -= 10.0  # a packet out of order: an error, then on as before
                if c in (21, 22):  # clocks off the nominal rate: headers drift
                    t0 += (0.3 if c == 21 else -0.002) * dt * int(pos[c] // 20)
                values = data[c, k:k + size]
                try:
                    got_alone.append(alone[c].feed(t0, step, values))
                except PacketError as e:
                    got_alone.append(str(e))
                calls.append((together[c], t0, step, values))
                pos[c] += size
            for r in StaLtaPicker.feed_many(calls, groups):
                got_together.append(str(r) if isinstance(r, PacketError) else list(r))
            for a, b in zip(alone, together, strict=True):
                assert np.array_equal(a.cf, b.cf)
    finally:
        PickerRows.advance = real_advance  # type: ignore[method-assign]
    picks = [d for r in got_alone if isinstance(r, list) for d in r]
    errors = [r for r in got_alone if isinstance(r, str)]
    assert len(picks) > 30 and errors
    assert got_together == got_alone
    assert [a.status for a in alone] == [b.status for b in together]
    assert advanced > 0.8 * sum(isinstance(r, list) for r in got_alone)
    assert together[7]._rows is None  # the dead channel stays on the one-channel path


def test_feed_many_rejects_a_picker_twice() -> None:
    p = StaLtaPicker(BHZ)
    x = np.zeros(20)
    with pytest.raises(ValueError, match="at most one packet per picker"):
        StaLtaPicker.feed_many([(p, T0, 0.05, x), (p, T0 + 1, 0.05, x)], {})


def test_feed_many_cf_is_the_packets_own() -> None:
    """The function a caller keeps from one packet is not overwritten by the next."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000) * 50.0
    alone, together = StaLtaPicker(BHZ), StaLtaPicker(BHZ)
    groups: dict = {}
    kept_alone, kept_together = [], []
    for a in range(0, len(x), 20):
        v = x[a:a + 20]
        alone.feed(T0 + a * 0.05, 0.05, v)
        StaLtaPicker.feed_many([(together, T0 + a * 0.05, 0.05, v)], groups)
        kept_alone.append(alone.cf)
        kept_together.append(together.cf)
    assert together._rows is not None
    np.testing.assert_array_equal(np.concatenate(kept_together), np.concatenate(kept_alone))
