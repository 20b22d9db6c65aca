"""Barometric pressure pulse of an explosive eruption's atmospheric Lamb wave.

The kernel works on fixed event-time bins (``bin_s``, default 60 s): 1-s records are
averaged into bins aligned to multiples of ``bin_s``, 1-min records fall one sample per bin.
A bin is processed once a sample of a later bin has arrived, so packet boundaries never
change the result. For each bin:

1. **Baseline** - a straight line fitted (least squares) to the bins of the previous
   ``baseline_s`` seconds, ending ``guard_s`` before the bin, extrapolated to the bin. Over
   two hours this removes the weather trend and the atmospheric tide (S2 curvature over the
   extrapolation is a few hundredths of a hPa).
2. **Noise** - sigma = 1.4826 * MAD of the fit's residuals (robust to the odd spike); a
   perfectly flat window (sigma = 0: a flat-lined or stuck sensor) never triggers.
3. **Median of three** residuals, so a one-bin spike cannot trigger.
4. **Trigger** when |residual| > ``k_on`` * sigma, above ``min_amplitude`` (in the
   station's units; 0.3 hPa for hPa stations, 0 for raw counts), for ``persist`` bins.
   The baseline is then frozen (the pulse is measured against the pre-event trend).
5. **Onset** - walking back from the trigger, the first bin of the run in which
   |residual| stayed above ``k_onset`` * sigma (at most ``onset_lookback_s`` back).
6. **Peak and declaration** - the largest |residual| (sign kept) within
   ``declare_after_s`` of the onset; the detection is declared when that window has
   passed, with ``declared`` = the time of the sample that closed the last bin of the
   window (the latest sample the decision rests on; independent of packet boundaries).

After a detection the station stays quiet for ``refractory_s``. A gap longer than
``max_gap_s`` re-warms the detector: it needs ``warmup_s`` of data again before it can
trigger, so the edge of a gap cannot be mistaken for a pulse.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detectors.base import Detection, FloatArray, StationInfo
from detectors.bins import Binner, check_packet, run_onset, whole_record_bins


def line_fit(x: FloatArray, y: FloatArray) -> tuple[float, float]:
    """Least-squares line ``y = slope * x + icpt`` (closed form: a fraction of the cost of
    ``numpy.polyfit``, which solves the same problem by SVD)."""
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    sxx = float(dx @ dx)
    slope = float(dx @ (y - ym)) / sxx if sxx > 0 else 0.0
    return slope, ym - slope * xm


def median(a: FloatArray) -> float:
    """``numpy.median`` of a 1-D float array without its per-call overhead (same value)."""
    n = len(a)
    k = n // 2
    if n % 2:
        return float(np.partition(a, k)[k])
    part = np.partition(a, [k - 1, k])
    return float((part[k - 1] + part[k]) / 2.0)


@dataclass(frozen=True)
class LambParams:
    bin_s: float = 60.0
    baseline_s: float = 7200.0
    guard_s: float = 300.0
    k_on: float = 8.0
    k_onset: float = 3.0
    persist: int = 2
    min_amplitude: float | None = None  # None: 0.3 for hPa stations, 0 otherwise
    declare_after_s: float = 600.0
    onset_lookback_s: float = 1800.0
    refractory_s: float = 3 * 3600.0
    max_gap_s: float = 600.0
    warmup_s: float = 3600.0
    min_coverage: float = 0.5

    def floor(self, units: str) -> float:
        if self.min_amplitude is not None:
            return self.min_amplitude
        return 0.3 if units.lower() in ("hpa", "mbar") else 0.0


@dataclass
class _State:
    times: deque[float] = field(default_factory=deque)    # baseline window bins (finite)
    values: deque[float] = field(default_factory=deque)
    recent: deque[float] = field(default_factory=deque)   # last residuals (median of 3)
    history: deque[tuple[float, float]] = field(default_factory=deque)  # (t, |r|/sigma)
    above: int = 0
    warm_since: float = -math.inf
    last_bin_t: float = -math.inf
    quiet_until: float = -math.inf
    # an event being measured
    frozen: tuple[float, float] | None = None  # (slope, intercept) at t_ref
    t_ref: float = 0.0
    sigma: float = 0.0
    onset: float = math.nan
    peak_t: float = math.nan
    peak_v: float = 0.0
    snr: float = 0.0


class LambPulseDetector:
    """Streaming Lamb-wave pulse detector for one barometer (see the module docstring)."""

    name = "lamb_pulse"
    version = "1"

    def __init__(self, station: StationInfo, **params: Any) -> None:
        self.station = station
        self.p = LambParams(**params)
        if self.p.bin_s <= 0 or self.p.baseline_s <= self.p.bin_s * 4:
            raise ValueError(f"lamb_pulse: bin_s={self.p.bin_s} and baseline_s="
                             f"{self.p.baseline_s} must leave >= 4 bins in the baseline")
        self.floor = self.p.floor(station.units)
        self._binner = Binner(self.p.bin_s)
        self._s = _State()
        self._last_t = -math.inf

    def params(self) -> dict[str, Any]:
        return {**self.p.__dict__, "min_amplitude": self.floor}

    def feed(self, t0: float, dt: float, values: FloatArray) -> list[Detection]:
        self._last_t = check_packet(self.station.station_id, t0, dt, values, self._last_t)
        out: list[Detection] = []
        for b, v, closed_at in self._binner.push(t0, dt, values):
            det = self._bin(b * self.p.bin_s, v, closed_at)
            if det is not None:
                out.append(det)
        return out

    # ------------------------------------------------------------------ per bin
    def _bin(self, t: float, v: float, last_sample: float) -> Detection | None:
        p, s = self.p, self._s
        if not math.isfinite(v):
            return self._maybe_declare(t, last_sample)
        if t - s.last_bin_t > p.max_gap_s:
            # a long gap (or the start): forget the window and warm up again
            s.times.clear()
            s.values.clear()
            s.recent.clear()
            s.history.clear()
            s.above = 0
            s.warm_since = t
            if s.frozen is not None and math.isnan(s.peak_t):
                s.frozen = None
        s.last_bin_t = t
        if s.frozen is not None:
            r = v - (s.frozen[0] * (t - s.t_ref) + s.frozen[1])
            if t - s.onset <= p.declare_after_s and abs(r) > abs(s.peak_v):
                s.peak_v, s.peak_t = r, t
            return self._maybe_declare(t, last_sample)
        # baseline window ending guard_s before t
        fit = self._fit(t)
        self._window_add(t, v)
        if fit is None:
            return None
        slope, icpt, sigma = fit
        r = v - (slope * (t - s.t_ref) + icpt)
        s.recent.append(r)
        if len(s.recent) > 3:
            s.recent.popleft()
        if len(s.recent) < 3 or sigma <= 0.0:
            s.above = 0
            return None
        rm = median(np.fromiter(s.recent, dtype=np.float64, count=len(s.recent)))
        z = abs(rm) / sigma
        s.history.append((t, abs(r) / sigma))
        while s.history and s.history[0][0] < t - p.onset_lookback_s:
            s.history.popleft()
        armed = t >= s.quiet_until and t - s.warm_since >= p.warmup_s
        if armed and z > p.k_on and abs(rm) > self.floor:
            s.above += 1
        else:
            s.above = 0
        if s.above < p.persist:
            return None
        # trigger: freeze the baseline, find the onset, start measuring the peak
        s.above = 0
        s.frozen = (slope, icpt)
        s.sigma = sigma
        s.onset = run_onset(self._s.history, self.p.k_onset, self.p.bin_s, t)
        s.peak_v, s.peak_t = rm, t - p.bin_s
        s.snr = z
        return self._maybe_declare(t, last_sample)

    def _window_add(self, t: float, v: float) -> None:
        s = self._s
        s.times.append(t)
        s.values.append(v)
        while s.times and s.times[0] < t - self.p.baseline_s - self.p.guard_s:
            s.times.popleft()
            s.values.popleft()

    def _fit(self, t: float) -> tuple[float, float, float] | None:
        p, s = self.p, self._s
        if not s.times:
            return None
        tt = np.fromiter(s.times, dtype=np.float64, count=len(s.times))
        # the window is in time order: the bins up to t - guard_s are a prefix
        n = int(np.searchsorted(tt, t - p.guard_s, side="right"))
        need = p.min_coverage * p.baseline_s / p.bin_s
        if n < max(need, 4):
            return None
        tt = tt[:n]
        vv = np.fromiter(s.values, dtype=np.float64, count=len(s.values))[:n]
        s.t_ref = tt[-1]
        x = tt - s.t_ref
        slope, icpt = line_fit(x, vv)
        resid = vv - (slope * x + icpt)
        sigma = 1.4826 * median(np.abs(resid - median(resid)))
        steps = np.abs(np.diff(vv))
        steps = steps[steps > 0]
        if len(steps):
            # quantised data (0.1 hPa consumer barometers): the MAD of a quiet record can
            # fall below the resolution; no noise estimate below half a quantum
            sigma = max(sigma, 0.5 * float(steps.min()))
        elif vv.max() == vv.min():
            sigma = 0.0  # flat line: a stuck sensor never triggers
        return slope, icpt, sigma

    def _maybe_declare(self, t: float, last_sample: float) -> Detection | None:
        s, p = self._s, self.p
        if s.frozen is None or t - s.onset < p.declare_after_s:
            return None
        det = Detection(
            station_id=self.station.station_id, kind=self.station.kind, detector=self.name,
            detector_version=self.version, onset=s.onset, peak_time=s.peak_t,
            amplitude=float(s.peak_v), units=self.station.units, declared=last_sample,
            lat=self.station.lat, lon=self.station.lon, params=self.params(),
            extra={"snr": round(s.snr, 2), "sigma": s.sigma},
        )
        s.frozen = None
        s.quiet_until = s.onset + p.refractory_s
        s.recent.clear()
        s.history.clear()
        return det


def lamb_pulse_reference(times: FloatArray, values: FloatArray, station: StationInfo,
                         **params: Any) -> list[Detection]:
    """Slow, obvious reference of the same rules on a whole record (the tests compare it
    with the streaming detector fed in packets of any size).

    Nothing is shared with :class:`LambPulseDetector` but :class:`LambParams` and the
    onset rule (:func:`detectors.bins.run_onset`): bins come from the whole record at once,
    the baseline window is a plain list re-scanned for every bin, the line is fitted with
    ``numpy.polyfit``, medians with ``statistics.median``.
    """
    import statistics

    p = LambParams(**params)
    floor = p.floor(station.units)
    out: list[Detection] = []
    window: list[tuple[float, float]] = []
    recent: list[float] = []
    history: list[tuple[float, float]] = []
    above, warm_since, last_bin_t, quiet_until = 0, -math.inf, -math.inf, -math.inf
    event: dict[str, Any] | None = None  # slope, icpt, t_ref, onset, peak_v, peak_t, ...

    def declare(t: float, closed_at: float) -> None:
        nonlocal event, quiet_until, recent, history
        if event is None or t - event["onset"] < p.declare_after_s:
            return
        out.append(Detection(
            station_id=station.station_id, kind=station.kind, detector="lamb_pulse",
            detector_version="1", onset=event["onset"], peak_time=event["peak_t"],
            amplitude=float(event["peak_v"]), units=station.units, declared=closed_at,
            lat=station.lat, lon=station.lon, params={**p.__dict__, "min_amplitude": floor},
            extra={"snr": round(event["snr"], 2), "sigma": event["sigma"]}))
        quiet_until = event["onset"] + p.refractory_s
        event, recent, history = None, [], []

    for b, vals, closed_at in whole_record_bins(times, values, p.bin_s):
        t = b * p.bin_s
        if not vals:
            declare(t, closed_at)
            continue
        v = float(np.asarray(vals).sum() / len(vals))  # numpy's pairwise sum, as Binner
        if t - last_bin_t > p.max_gap_s:
            window, recent, history, above, warm_since = [], [], [], 0, t
        last_bin_t = t
        if event is not None:
            r = v - (event["slope"] * (t - event["t_ref"]) + event["icpt"])
            if t - event["onset"] <= p.declare_after_s and abs(r) > abs(event["peak_v"]):
                event["peak_v"], event["peak_t"] = r, t
            declare(t, closed_at)
            continue
        # 2. the baseline from the window as it stands, then the bin joins the window
        base = [(wt, wv) for wt, wv in window if wt <= t - p.guard_s]
        window.append((t, v))
        window = [(wt, wv) for wt, wv in window if wt >= t - p.baseline_s - p.guard_s]
        if len(base) < max(p.min_coverage * p.baseline_s / p.bin_s, 4):
            continue
        t_ref = base[-1][0]
        x = np.array([wt - t_ref for wt, _ in base])
        y = np.array([wv for _, wv in base])
        slope, icpt = (float(c) for c in np.polyfit(x, y, 1))
        resid = (y - (slope * x + icpt)).tolist()
        med = statistics.median(resid)
        sigma = 1.4826 * statistics.median([abs(e - med) for e in resid])
        steps = [abs(y[k + 1] - y[k]) for k in range(len(y) - 1) if y[k + 1] != y[k]]
        if steps:
            sigma = max(sigma, 0.5 * float(min(steps)))
        elif float(y.max() - y.min()) == 0:
            sigma = 0.0
        r = v - (slope * (t - t_ref) + icpt)
        recent = [*recent, r][-3:]
        if len(recent) < 3 or sigma <= 0.0:
            above = 0
            continue
        rm = statistics.median(recent)
        z = abs(rm) / sigma
        history = [h for h in [*history, (t, abs(r) / sigma)] if h[0] >= t - p.onset_lookback_s]
        armed = t >= quiet_until and t - warm_since >= p.warmup_s
        above = above + 1 if armed and z > p.k_on and abs(rm) > floor else 0
        if above < p.persist:
            continue
        above = 0
        onset = run_onset(history, p.k_onset, p.bin_s, t)
        event = {"slope": slope, "icpt": icpt, "t_ref": t_ref, "onset": onset, "peak_v": rm,
                 "peak_t": t - p.bin_s, "snr": z, "sigma": sigma}
        declare(t, closed_at)
    return out
