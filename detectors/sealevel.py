"""Tsunami onset on tide gauges and DART bottom-pressure records.

Works on fixed event-time bins (``bin_s``, default 60 s) like the pressure detector, so
NDBC's mix of 15-min, 1-min and 15-s samples becomes one bin series with empty bins where
nothing was recorded, and packet boundaries never change the result. For each bin with
data:

1. **Tide** - where the station has ``harmonic_min_s`` (default 1 day) of history the
   tide is predicted by harmonic analysis (``utide``, refitted every ``harmonic_refit_s`` on
   the history up to that bin) and subtracted; the short-window step below then removes
   what the harmonic prediction misses (``degree_detided``, a cubic by default: a line was
   tried and raised false alarms on the real DART 21401 record, where the de-tided residual
   still curves). With less history only the short window is used.
2. **Short-window predictor** - a cubic (``degree``) least-squares fit to the bins of the
   previous ``baseline_s`` (3 h) ending ``guard_s`` before the bin, taken as the medians of
   ``fit_block_s`` (10-min) blocks (one bad sample cannot bend it), extrapolated to the bin
   (the DART predictor of Mofjeld, with a guard so a slow leading wave is not absorbed).
3. **Noise** - sigma = 1.4826 * MAD of the fit residuals, inflated for the degrees of
   freedom of the fit and floored at ``min_sigma``.
4. **Median of five** residuals, and at most ``max_sign_changes`` (0) sign changes among
   them: a spike, a harbour seiche or the ringing a DART records while seismic waves pass
   cannot trigger; a tsunami's leading wave (periods of 10 min and more) keeps its sign.
5. **Trigger** when |median residual| > ``k_on`` * sigma and > ``min_amplitude``; the
   baseline is then frozen.
6. **Onset** - walking back, the start of the run of bins above ``k_onset`` * sigma,
   interpolated between the last quiet bin and the first loud one.
7. **Declaration** ``declare_after_s`` after the onset, if the largest residual so far
   reached ``k_declare`` * sigma (a tsunami grows over its first quarter period; a noise
   burst that merely crossed ``k_on`` does not, and is dropped), with that peak and the
   period (twice the median spacing of residual zero crossings).
8. **Final amplitude** - when ``measure_s`` of record after the onset (plus half the
   high-pass window) has been seen, the same detection (same key) is emitted again with
   the peak of the record high-passed by a centred ``highpass_s`` cubic (periods longer
   than about 3 h removed, like the de-tided references), ``extra["final"] = True``.

A gap between data bins longer than ``max_gap_s`` re-warms the detector (``warmup_s``); a
flat window or ``median`` identical bins in a row (a stuck sensor) never trigger. After a
detection the station stays quiet for ``refractory_s``: a tsunami rings for many hours.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

import numpy as np

from detectors.base import Detection, FloatArray, StationInfo
from detectors.bins import (
    Binner,
    bin_of,
    bins_of,
    check_packet,
    median,
    run_onset,
    whole_record_bins,
)


@dataclass(frozen=True)
class SeaLevelParams:
    bin_s: float = 60.0
    baseline_s: float = 3 * 3600.0
    guard_s: float = 600.0
    degree: int = 3
    degree_detided: int = 3
    fit_block_s: float = 600.0
    k_on: float = 5.0
    k_onset: float = 2.5
    k_declare: float = 10.0
    median: int = 5
    max_sign_changes: int = 0
    min_amplitude: float = 0.02
    min_sigma: float = 0.003
    declare_after_s: float = 900.0
    measure_s: float = 3 * 3600.0
    highpass_s: float = 3 * 3600.0
    onset_lookback_s: float = 3600.0
    refractory_s: float = 12 * 3600.0
    max_gap_s: float = 1800.0
    warmup_s: float = 3 * 3600.0
    min_points: int = 8
    harmonic_min_s: float = 86400.0
    harmonic_refit_s: float = 86400.0
    harmonic_history_s: float = 30 * 86400.0

    @property
    def horizon_s(self) -> float:
        """How much record before its newest sample determines the detector's state: a
        fresh detector fed only that much ends where one fed from the start does, as long
        as no event began before it (a stream worker that takes a station over rebuilds
        it from so much; see ``detectors.base.StreamDetector``). Harmonic refits fall on
        multiples of ``harmonic_refit_s``, each on the ``harmonic_history_s`` before it: the
        refit before the last already saw the full history."""
        return max(self.harmonic_history_s + 2 * self.harmonic_refit_s,
                   self.warmup_s + self.baseline_s + self.guard_s + self.onset_lookback_s
                   + self.declare_after_s + self.measure_s + self.highpass_s
                   + self.refractory_s)

    @property
    def declare_lag_s(self) -> float:
        """At most how long after its onset a detection is declared: the final amplitude,
        ``measure_s`` and half ``highpass_s`` after the onset (the first declaration comes
        ``declare_after_s`` after it, its trigger up to ``onset_lookback_s``), at the next
        bin with data, which a gap of up to ``max_gap_s`` may hold back (the real DART
        21418 declared 2 min after the 4.5 h): an associator must take detections that
        late."""
        return max(self.onset_lookback_s + self.declare_after_s,
                   self.measure_s + self.highpass_s / 2) + self.max_gap_s + self.bin_s

    def refit_due(self, t: float, last_fit: float) -> bool:
        """A harmonic refit at bin ``t``: the first (``last_fit`` = -inf), or the first bin
        past a multiple of ``harmonic_refit_s`` since the last (fixed instants, so the fits
        do not depend on when the detector started)."""
        w = self.harmonic_refit_s
        return last_fit == -math.inf or math.floor(t / w) > math.floor(last_fit / w)


@dataclass
class _Event:
    frozen: tuple[FloatArray, float]  # cubic coefficients, t_ref
    sigma: float
    onset: float
    trigger_t: float
    snr: float
    peak_t: float = math.nan
    peak_v: float = 0.0
    declared: Detection | None = None
    trace: list[tuple[float, float]] = field(default_factory=list)  # residuals since onset


@dataclass
class _State:
    window: deque[tuple[float, float]] = field(default_factory=deque)  # (t, detided v)
    recent: deque[float] = field(default_factory=deque)
    history: deque[tuple[float, float]] = field(default_factory=deque)  # (t, |r|/sigma)
    warm_since: float = -math.inf
    last_bin_t: float = -math.inf
    quiet_until: float = -math.inf
    event: _Event | None = None
    # raw bins kept for the final amplitude and the harmonic tide
    raw: deque[tuple[float, float]] = field(default_factory=deque)
    tide: Any = None  # utide coefficient structure
    tide_fit_t: float = -math.inf
    tide_t0: float = 0.0  # the prediction table: tide at bins tide_t0 + i * bin_s
    tide_table: FloatArray = field(default_factory=lambda: np.zeros(0))


class TsunamiDetector:
    """Streaming tsunami detector for one tide gauge or DART (see the module docstring)."""

    name = "tsunami"
    version = "1"

    def __init__(self, station: StationInfo, **params: Any) -> None:
        self.station = station
        self.p = SeaLevelParams(**params)
        if self.p.degree < 0 or self.p.min_points <= self.p.degree:
            raise ValueError(f"tsunami: min_points={self.p.min_points} must exceed "
                             f"degree={self.p.degree}")
        self._binner = Binner(self.p.bin_s)
        self._s = _State()
        self._last_t = -math.inf
        self.horizon_s = self.p.horizon_s

    def params(self) -> dict[str, Any]:
        return dict(self.p.__dict__)

    def feed(self, t0: float, dt: float, values: FloatArray) -> list[Detection]:
        self._last_t = check_packet(self.station.station_id, t0, dt, values, self._last_t)
        out: list[Detection] = []
        for b, v, closed_at in self._binner.push(t0, dt, values):
            out.extend(self._bin(b * self.p.bin_s, v, closed_at))
        return out

    # ------------------------------------------------------------------ per bin
    def _bin(self, t: float, v: float, last_sample: float) -> list[Detection]:
        p, s = self.p, self._s
        if not math.isfinite(v):
            return self._finish(t, last_sample)
        s.raw.append((t, v))
        keep = max(p.harmonic_history_s, p.measure_s + p.highpass_s + p.onset_lookback_s)
        while s.raw and s.raw[0][0] < t - keep:
            s.raw.popleft()
        if t - s.last_bin_t > p.max_gap_s:
            s.window.clear()
            s.recent.clear()
            s.history.clear()
            s.warm_since = t
            if s.event is not None and s.event.declared is None:
                s.event = None
        s.last_bin_t = t
        self._maybe_refit_tide(t)
        d = v - self._tide_at(t)
        ev = s.event
        if ev is not None:
            r = d - _poly(ev.frozen, t)
            ev.trace.append((t, r))
            s.window.append((t, d))
            while s.window and s.window[0][0] < t - p.baseline_s - p.guard_s:
                s.window.popleft()
            if t - ev.onset <= p.declare_after_s and abs(r) > abs(ev.peak_v):
                ev.peak_v, ev.peak_t = r, t
            return self._finish(t, last_sample)
        fit = self._fit(t)
        s.window.append((t, d))
        while s.window and s.window[0][0] < t - p.baseline_s - p.guard_s:
            s.window.popleft()
        if fit is None:
            return []
        coef, sigma = fit
        r = d - _poly(coef, t)
        s.recent.append(r)
        if len(s.recent) > p.median:
            s.recent.popleft()
        s.history.append((t, abs(r) / sigma))
        while s.history and s.history[0][0] < t - p.onset_lookback_s:
            s.history.popleft()
        if len(s.recent) < p.median:
            return []
        recent = np.asarray(s.recent)
        rm = median(recent)
        z = abs(rm) / sigma
        armed = t >= s.quiet_until and t - s.warm_since >= p.warmup_s
        if not (armed and z > p.k_on and abs(rm) > p.min_amplitude):
            return []
        if _sign_changes(recent) > p.max_sign_changes:
            return []  # ringing (seismic shaking of a DART, a harbour seiche), not a wave
        onset = run_onset(self._s.history, self.p.k_onset, self.p.bin_s, t)
        s.event = _Event(frozen=coef, sigma=sigma, onset=onset, trigger_t=t, snr=z,
                         peak_t=t, peak_v=rm)
        # the bins since the onset count towards the provisional peak
        for tb, db in s.window:
            if tb >= onset:
                rb = db - _poly(coef, tb)
                s.event.trace.append((tb, rb))
                if abs(rb) > abs(s.event.peak_v):
                    s.event.peak_v, s.event.peak_t = rb, tb
        s.event.trace.append((t, r))
        s.recent.clear()
        s.history.clear()
        return self._finish(t, last_sample)

    def _fit(self, t: float) -> tuple[tuple[FloatArray, float], float] | None:
        """((cubic coefficients, t_ref), sigma) of the recent tide, or None."""
        p, s = self.p, self._s
        # the window is in time order: the bins up to the guard are its first n
        n, cut = len(s.window), t - p.guard_s
        for tb, _ in reversed(s.window):
            if tb <= cut:
                break
            n -= 1
        if n < p.min_points:
            return None
        both = np.fromiter(chain.from_iterable(islice(s.window, n)), np.float64, 2 * n)
        tt, vv = both[0::2].copy(), both[1::2].copy()
        if tt[-1] - tt[0] < 0.5 * p.baseline_s:
            return None
        if vv.max() == vv.min():
            return None  # a flat-lined sensor never triggers
        if len(s.raw) >= p.median:
            last = [x[1] for x in islice(reversed(s.raw), p.median)]
            if max(last) == min(last):
                return None  # stuck now: the tide moves, the sensor does not
        t_ref = float(tt[-1])
        # with the tide removed harmonically only slow surge is left: a line extrapolates it
        # without the cubic's amplification of noise at the window's end
        degree = p.degree if s.tide is None else p.degree_detided
        # fit to block medians (``fit_block_s``): a seiche or ringing at the window's end
        # evens out instead of bending the extrapolated cubic, and one bad sample (a spike,
        # a 99) is left out; with block means it bent the cubic, and the residuals after it
        # declared a tsunami
        blk = bins_of(tt, p.fit_block_s)  # in order: each block is a run
        first = np.empty(len(blk), dtype=bool)
        first[0] = True
        np.not_equal(blk[1:], blk[:-1], out=first[1:])
        start = np.flatnonzero(first)
        counts = np.diff(start, append=len(blk))
        bt = np.add.reduceat(tt, start) / counts
        bv = run_medians(blk, vv, start, counts)
        if len(bt) <= degree + 2:
            return None
        coef = np.polyfit((bt - t_ref) / 3600.0, bv, degree)
        resid = vv - np.polyval(coef, (tt - t_ref) / 3600.0)
        n = len(vv)
        mad = median(np.abs(resid - median(resid)))
        sigma = 1.4826 * mad * math.sqrt(n / max(n - degree - 1, 1))
        return (coef, t_ref), max(sigma, p.min_sigma)

    # ------------------------------------------------------------------ tide
    def _maybe_refit_tide(self, t: float) -> None:
        p, s = self.p, self._s
        if s.event is not None or not p.refit_due(t, s.tide_fit_t):
            return
        if not s.raw or t - s.raw[0][0] < p.harmonic_min_s:
            return
        s.tide_fit_t = t
        s.tide = fit_tide(np.array([x[0] for x in s.raw]), np.array([x[1] for x in s.raw]),
                          self.station.lat)
        # predict once for every bin until well past the next refit
        n = int((p.harmonic_refit_s + p.measure_s + p.highpass_s) / p.bin_s) + 2
        s.tide_t0 = t
        s.tide_table = predict_tide(s.tide, t + p.bin_s * np.arange(n))
        # the de-tided series changes: start the short window again from the new series
        s.window = deque((tb, db) for tb, db in _detide(s.raw, s.tide) if tb >= t - (
            p.baseline_s + p.guard_s))

    def _tide_at(self, t: float) -> float:
        s = self._s
        if s.tide is None:
            return 0.0
        i = int(round((t - s.tide_t0) / self.p.bin_s))
        if 0 <= i < len(s.tide_table):
            return float(s.tide_table[i])
        return float(predict_tide(s.tide, [t])[0])

    # ------------------------------------------------------------------ declaration
    def _finish(self, t: float, last_sample: float) -> list[Detection]:
        s, p = self._s, self.p
        ev = s.event
        if ev is None:
            return []
        out = []
        if ev.declared is None and t - ev.onset >= p.declare_after_s:
            if abs(ev.peak_v) < p.k_declare * ev.sigma:
                # did not grow like a wave does over its first quarter period: noise burst
                s.event = None
                return []
            s.quiet_until = ev.onset + p.refractory_s
            ev.declared = self._detection(ev, ev.peak_v, ev.peak_t, last_sample,
                                          self._period(ev), final=False)
            out.append(ev.declared)
        if ev.declared is not None and t - ev.onset >= p.measure_s + p.highpass_s / 2:
            peak_v, peak_t, period = self._final_peak(ev)
            out.append(self._detection(ev, peak_v, peak_t, last_sample, period, final=True))
            s.event = None
            s.window.clear()
            s.recent.clear()
            s.warm_since = t
        return out

    def _period(self, ev: _Event) -> float:
        if len(ev.trace) < 3:
            return math.nan
        tt, rr = np.array(ev.trace).T
        return zero_crossing_period(tt, rr)

    def _final_peak(self, ev: _Event) -> tuple[float, float, float]:
        p = self.p
        raw = [(tb, vb) for tb, vb in self._s.raw
               if ev.onset - p.highpass_s / 2 <= tb <= ev.onset + p.measure_s + p.highpass_s / 2]
        tt = np.array([x[0] for x in raw])
        vv = np.array([x[1] for x in raw])
        hp = highpass(tt, vv, p.highpass_s, p.degree)
        sel = (tt >= ev.onset) & (tt <= ev.onset + p.measure_s) & np.isfinite(hp)
        if not sel.any():
            return ev.peak_v, ev.peak_t, math.nan
        i = int(np.argmax(np.where(sel, np.abs(hp), -1.0)))
        return float(hp[i]), float(tt[i]), zero_crossing_period(tt[sel], hp[sel])

    def _detection(self, ev: _Event, peak_v: float, peak_t: float, declared: float,
                   period: float, *, final: bool) -> Detection:
        st = self.station
        extra: dict[str, Any] = {"snr": round(ev.snr, 2), "sigma": round(ev.sigma, 5),
                                 "trigger": ev.trigger_t, "final": final,
                                 "tide": "harmonic" if self._s.tide is not None else "cubic"}
        if math.isfinite(period):
            extra["period_s"] = round(period, 1)
        return Detection(
            station_id=st.station_id, kind=st.kind, detector=self.name,
            detector_version=self.version, onset=ev.onset, peak_time=peak_t,
            amplitude=float(peak_v), units=st.units, declared=declared, lat=st.lat,
            lon=st.lon, params=self.params(), extra=extra)


def _sign_changes(x: FloatArray) -> int:
    s = np.sign(x)
    return int(np.count_nonzero(s[1:] * s[:-1] < 0))


def _poly(fit: tuple[FloatArray, float], t: float) -> float:
    coef, t_ref = fit
    return float(np.polyval(coef, (t - t_ref) / 3600.0))


def highpass(tt: FloatArray, vv: FloatArray, width_s: float, degree: int = 3) -> FloatArray:
    """Each sample minus a cubic fitted to the samples within +-width/2 (NaN near edges
    where the window is less than three-quarters covered)."""
    out = np.full(len(tt), np.nan)
    half = width_s / 2.0
    lo = np.searchsorted(tt, tt - half)
    hi = np.searchsorted(tt, tt + half, side="right")
    for i in range(len(tt)):
        a, b = lo[i], hi[i]
        if b - a < degree + 3 or tt[b - 1] - tt[a] < 0.75 * width_s:
            continue
        x = (tt[a:b] - tt[i]) / 3600.0
        coef = np.polyfit(x, vv[a:b], degree)
        out[i] = vv[i] - coef[-1]
    return out


def zero_crossing_period(tt: FloatArray, vv: FloatArray) -> float:
    """Twice the median spacing of zero crossings (NaN with fewer than three)."""
    sign = np.sign(vv)
    idx = np.nonzero(sign[1:] * sign[:-1] < 0)[0]
    if len(idx) < 3:
        return math.nan
    tc = tt[idx] + (tt[idx + 1] - tt[idx]) * np.abs(vv[idx]) / (
        np.abs(vv[idx]) + np.abs(vv[idx + 1]))
    return float(2.0 * np.median(np.diff(tc)))


def run_medians(keys: FloatArray, vv: FloatArray, start: Any, counts: Any) -> FloatArray:
    """The median of ``vv`` over each run of equal ``keys`` (runs starting at ``start``,
    ``counts`` long; ``keys`` in order), as ``statistics.median`` gives it."""
    ordered = vv[np.lexsort((vv, keys))]
    lo, hi = start + (counts - 1) // 2, start + counts // 2
    return (ordered[lo] + ordered[hi]) / 2.0


def fit_tide(tt: FloatArray, vv: FloatArray, lat: float) -> Any:
    """Harmonic tide fit with utide (constituents chosen by the record's length)."""
    import utide

    # fit on 10-min medians: the tide is smooth, the fit 10x cheaper, and one bad sample
    # (with means, a single 99 bent a month of tide predictions) is left out
    idx = bins_of(tt, 600.0)
    uniq, start, counts = np.unique(idx, return_index=True, return_counts=True)
    means = run_medians(idx, vv, start, counts)
    # utide's nodal corrections divide by sin(lat): a gauge on the equator fits at 0.01 deg
    lat = lat if abs(lat) >= 0.01 else math.copysign(0.01, lat)
    return utide.solve(uniq * 600.0 / 86400.0 + 300.0 / 86400.0, means, lat=lat,
                       epoch="1970-01-01", method="ols", conf_int="none", verbose=False,
                       trend=False)


def predict_tide(coef: Any, tt: Any) -> FloatArray:
    import utide

    days = np.asarray(tt, dtype=float) / 86400.0
    rec = utide.reconstruct(days, coef, epoch="1970-01-01", verbose=False)
    return np.asarray(rec.h, dtype=float)


def _detide(raw: deque[tuple[float, float]], coef: Any) -> list[tuple[float, float]]:
    tt = np.array([x[0] for x in raw])
    vv = np.array([x[1] for x in raw])
    return list(zip(tt.tolist(), (vv - predict_tide(coef, tt)).tolist(), strict=True))


def tsunami_reference(times: FloatArray, values: FloatArray, station: StationInfo,
                      **params: Any) -> list[Detection]:
    """Slow, obvious reference of the same rules on a whole record (the tests compare it
    with the streaming detector fed in packets of any size, to floating-point tolerance).

    It shares only the numerical helpers (``fit_tide``, ``predict_tide``, ``highpass``,
    ``zero_crossing_period``) and the onset rule (``run_onset``) with
    :class:`TsunamiDetector`: bins come from the whole record at once, windows are plain
    lists re-scanned for every bin, block means are computed per block.
    """
    import statistics

    p = SeaLevelParams(**params)
    keep = max(p.harmonic_history_s, p.measure_s + p.highpass_s + p.onset_lookback_s)
    out: list[Detection] = []
    raw: list[tuple[float, float]] = []
    window: list[tuple[float, float]] = []
    recent: list[float] = []
    history: list[tuple[float, float]] = []
    warm_since = last_bin_t = quiet_until = tide_fit_t = -math.inf
    tide: Any = None
    tide_t0, tide_table = 0.0, np.zeros(0)
    ev: dict[str, Any] | None = None

    def poly(coef: FloatArray, t_ref: float, t: float) -> float:
        return float(np.polyval(coef, (t - t_ref) / 3600.0))

    def detection(peak_v: float, peak_t: float, declared: float, period: float,
                  final: bool) -> Detection:
        assert ev is not None
        extra: dict[str, Any] = {"snr": round(ev["snr"], 2), "sigma": round(ev["sigma"], 5),
                                 "trigger": ev["trigger_t"], "final": final,
                                 "tide": "harmonic" if tide is not None else "cubic"}
        if math.isfinite(period):
            extra["period_s"] = round(period, 1)
        return Detection(station.station_id, station.kind, "tsunami", "1", ev["onset"], peak_t,
                         float(peak_v), station.units, declared, station.lat, station.lon,
                         dict(p.__dict__), extra)

    def finish(t: float, closed_at: float) -> None:
        nonlocal ev, quiet_until, window, recent, warm_since
        if ev is None:
            return
        if not ev["declared"] and t - ev["onset"] >= p.declare_after_s:
            if abs(ev["peak_v"]) < p.k_declare * ev["sigma"]:
                ev = None
                return
            quiet_until = ev["onset"] + p.refractory_s
            trace = np.array(ev["trace"]).T if len(ev["trace"]) >= 3 else None
            period = math.nan if trace is None else zero_crossing_period(trace[0], trace[1])
            out.append(detection(ev["peak_v"], ev["peak_t"], closed_at, period, False))
            ev["declared"] = True
        if ev["declared"] and t - ev["onset"] >= p.measure_s + p.highpass_s / 2:
            lo, hi = ev["onset"] - p.highpass_s / 2, ev["onset"] + p.measure_s + p.highpass_s / 2
            sel_raw = [(tb, vb) for tb, vb in raw if lo <= tb <= hi]
            tt = np.array([x[0] for x in sel_raw])
            vv = np.array([x[1] for x in sel_raw])
            hp = highpass(tt, vv, p.highpass_s, p.degree)
            sel = (tt >= ev["onset"]) & (tt <= ev["onset"] + p.measure_s) & np.isfinite(hp)
            if sel.any():
                i = int(np.argmax(np.where(sel, np.abs(hp), -1.0)))
                final = (float(hp[i]), float(tt[i]), zero_crossing_period(tt[sel], hp[sel]))
            else:
                final = (ev["peak_v"], ev["peak_t"], math.nan)
            out.append(detection(final[0], final[1], closed_at, final[2], True))
            ev, window, recent, warm_since = None, [], [], t

    for b, vals, closed_at in whole_record_bins(times, values, p.bin_s):
        t = b * p.bin_s
        if not vals:
            finish(t, closed_at)
            continue
        v = float(np.asarray(vals).sum() / len(vals))
        raw = [x for x in [*raw, (t, v)] if x[0] >= t - keep]
        if t - last_bin_t > p.max_gap_s:
            window, recent, history, warm_since = [], [], [], t
            if ev is not None and not ev["declared"]:
                ev = None
        last_bin_t = t
        # the harmonic tide, refitted once a day on the history (not during an event)
        if (p.refit_due(t, tide_fit_t) and ev is None and raw
                and t - raw[0][0] >= p.harmonic_min_s):
            tide_fit_t = t
            rt = np.array([x[0] for x in raw])
            tide = fit_tide(rt, np.array([x[1] for x in raw]), station.lat)
            n = int((p.harmonic_refit_s + p.measure_s + p.highpass_s) / p.bin_s) + 2
            tide_t0, tide_table = t, predict_tide(tide, t + p.bin_s * np.arange(n))
            pred = predict_tide(tide, rt)
            window = [(tb, vb - float(pb)) for (tb, vb), pb in zip(raw, pred, strict=True)
                      if tb >= t - (p.baseline_s + p.guard_s)]
        if tide is None:
            d = v
        else:
            k = int(round((t - tide_t0) / p.bin_s))
            d = v - float(tide_table[k] if 0 <= k < len(tide_table)
                          else predict_tide(tide, [t])[0])
        if ev is not None:
            r = d - poly(ev["coef"], ev["t_ref"], t)
            ev["trace"].append((t, r))
            window = [x for x in [*window, (t, d)] if x[0] >= t - p.baseline_s - p.guard_s]
            if t - ev["onset"] <= p.declare_after_s and abs(r) > abs(ev["peak_v"]):
                ev["peak_v"], ev["peak_t"] = r, t
            finish(t, closed_at)
            continue
        # the short-window predictor from the window as it stands
        fit = None
        pts = [x for x in window if x[0] <= t - p.guard_s]
        last_raw = [x[1] for x in raw[-p.median:]]
        if (len(pts) >= p.min_points and pts[-1][0] - pts[0][0] >= 0.5 * p.baseline_s
                and max(x[1] for x in pts) != min(x[1] for x in pts)
                and not (len(raw) >= p.median and max(last_raw) == min(last_raw))):
            t_ref = pts[-1][0]
            degree = p.degree if tide is None else p.degree_detided
            blocks: dict[float, list[tuple[float, float]]] = {}
            for x in pts:
                blocks.setdefault(bin_of(x[0], p.fit_block_s), []).append(x)
            bt = np.array([sum(x[0] for x in g) / len(g) for g in blocks.values()])
            bv = np.array([statistics.median(x[1] for x in g) for g in blocks.values()])
            if len(bt) > degree + 2:
                coef = np.polyfit((bt - t_ref) / 3600.0, bv, degree)
                tt = np.array([x[0] for x in pts])
                resid = [x[1] - poly(coef, t_ref, x[0]) for x in pts]
                med = statistics.median(resid)
                mad = statistics.median([abs(e - med) for e in resid])
                n = len(pts)
                sigma = 1.4826 * mad * math.sqrt(n / max(n - degree - 1, 1))
                fit = (coef, t_ref, max(sigma, p.min_sigma))
                del tt
        window = [x for x in [*window, (t, d)] if x[0] >= t - p.baseline_s - p.guard_s]
        if fit is None:
            continue
        coef, t_ref, sigma = fit
        r = d - poly(coef, t_ref, t)
        recent = [*recent, r][-p.median:]
        history = [h for h in [*history, (t, abs(r) / sigma)] if h[0] >= t - p.onset_lookback_s]
        if len(recent) < p.median:
            continue
        rm = statistics.median(recent)
        z = abs(rm) / sigma
        armed = t >= quiet_until and t - warm_since >= p.warmup_s
        if not (armed and z > p.k_on and abs(rm) > p.min_amplitude):
            continue
        signs = [math.copysign(1.0, x) if x else 0.0 for x in recent]
        if sum(1 for a, c in zip(signs, signs[1:], strict=False) if a * c < 0) > p.max_sign_changes:
            continue
        onset = run_onset(history, p.k_onset, p.bin_s, t)
        ev = {"coef": coef, "t_ref": t_ref, "sigma": sigma, "onset": onset, "trigger_t": t,
              "snr": z, "peak_t": t, "peak_v": rm, "declared": False, "trace": []}
        # the bins since the onset count (the current one is in the window already, and is
        # appended once more after them, as the streaming detector does)
        for tb, db in window:
            if tb >= onset:
                rb = db - poly(coef, t_ref, tb)
                ev["trace"].append((tb, rb))
                if abs(rb) > abs(ev["peak_v"]):
                    ev["peak_v"], ev["peak_t"] = rb, tb
        ev["trace"].append((t, r))
        recent, history = [], []
        finish(t, closed_at)
    return out
