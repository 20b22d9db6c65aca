"""Streaming band-pass + recursive STA/LTA picker (SeisComP ``scautopick`` style).

The filter (Butterworth band-pass as second-order sections) and the STA/LTA recursions
carry their state across packets, so a trace fed in 1-s packets gives, sample for sample,
the characteristic function of the whole trace: ObsPy's ``recursive_sta_lta`` on the
band-passed trace (a test compares them). For each contiguous segment:

* the filter starts in its steady state for the segment's first sample (no step
  transient from a DC offset of raw counts);
* ``sta[i] = csta * x[i]**2 + (1 - csta) * sta[i-1]`` and the same for ``lta``, from
  ``sta = 0``, ``lta = 1e-99`` and the segment's second sample, as ObsPy does; the
  characteristic function is ``sta / lta`` and 0 for the first ``nlta`` samples.

The recursive LTA starts from zero, so one LTA after a segment starts it is only 63 % of
its settled value and the function reads ~1.6 times too high: noise alone would trigger.
Triggers are therefore held for ``warmup_s`` (default three LTAs, 95 %) after a segment
starts; the function itself stays ObsPy's.

A trigger starts when the function exceeds ``on``; the pick is declared ``declare_after_s``
later with the onset refined by the Akaike information criterion (Maeda 1985) on the
filtered samples from ``aic_pre_s`` before the trigger to ``sta_s`` after it, the peak
amplitude (filtered counts) and SNR (peak over the pre-trigger RMS, sqrt of the LTA) in
that window. The picker re-arms when the function falls below ``off``.

A gap (a packet starting more than half a sample late) or a change of sample rate restarts
the segment: filter and STA/LTA warm up again, so the edge of a gap is never picked. A
packet that follows on takes its time from its own start, not from the segment's first
sample counted on at the nominal rate: a digitiser whose clock runs off its nominal rate
has headers that drift from that count, by up to half a sample per packet, and the count
started a new segment (and warmed up again) each time the drift reached half a sample. A
flat stretch (``flat_s`` of identical samples: a dead channel) holds the picker with
``status["flat"]`` set, and a trigger followed only by identical samples (the step of a
channel going dead) is not declared; a pick whose window reaches the clip level
(``clip_counts``, or three samples at the window's extreme raw value) is flagged
``clipped``.

Many channels are advanced together by :meth:`StaLtaPicker.feed_many` (one packet per
channel): channels sharing a sample interval and parameters keep their filter, STA/LTA,
flat-run and recent-sample state as rows of arrays (:class:`PickerRows`), and a packet per
row is filtered and scanned in one call of the same kernels, row for row the arithmetic of
a single channel. A channel leaves its row for the one-channel path whenever that path has
something to decide (a trigger, a gap or NaN, a possible flat run, a new sample rate) and
returns when it is quiet again, so the picks are those of feeding each channel alone.

Defaults follow SeisComP (STA 2 s, LTA 80 s, on 3, off 1.5, 0.7-2 Hz) for short-period and
broadband channels. Below 2.5 samples/s (long-period ``LH?`` channels, whose Nyquist is
under the 2 Hz corner) the long-period profile applies: 0.05-0.2 Hz, STA 10 s, LTA 300 s,
on 6, off 2. Every value can be set per stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np
from scipy.signal import iirfilter, lfilter, sosfilt, sosfilt_zi

from detectors.base import (
    Detection,
    DetectorError,
    FloatArray,
    PacketError,
    StationInfo,
    feed_guarded,
)

# scipy's own kernels behind ``sosfilt`` and ``lfilter``, without their 20-40 us of argument
# handling per call (a picker makes three calls per packet); the public functions if a
# scipy release moves them
try:
    from scipy.signal._sigtools import _linear_filter
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover
    _linear_filter = _sosfilt_kernel = None


def _recursive_mean(c: float, x: FloatArray, prev: float | FloatArray) -> FloatArray:
    """``y[i] = c * x[i] + (1 - c) * y[i-1]`` along the last axis from ``y[-1] = prev``
    (one value per row): ``lfilter([c], [1, c - 1], x, zi=[(1 - c) * prev])[0]``."""
    b, a = np.array([c]), np.array([1.0, c - 1.0])
    zi = ((1.0 - c) * np.asarray(prev, dtype=np.float64))[..., None]
    if _linear_filter is None:
        return np.asarray(lfilter(b, a, x, zi=zi)[0])
    return np.asarray(_linear_filter(b, a, x, -1, zi)[0])


def _sosfilt_rows(sos: np.ndarray, x: FloatArray, zi: np.ndarray
                  ) -> tuple[FloatArray, np.ndarray]:
    """``sosfilt`` of each row of a 2-D ``x`` (rows, samples) from its state ``zi`` (rows,
    sections, 2): the filtered rows and their final states (new arrays)."""
    y = np.array(x, dtype=np.float64, order="C")  # a copy: filtered in place
    z = np.array(zi, dtype=np.float64, order="C")
    if _sosfilt_kernel is None:
        y, zf = sosfilt(sos, y, axis=-1, zi=np.moveaxis(z, 0, 1))
        return y, np.moveaxis(zf, 1, 0)
    _sosfilt_kernel(sos, y, z)
    return y, z


def _sosfilt_state(sos: np.ndarray, x: FloatArray, zi: np.ndarray
                   ) -> tuple[FloatArray, np.ndarray]:
    """``sosfilt(sos, x, zi=zi)`` for a 1-D float64 ``x`` (same arithmetic, same result)."""
    y, z = _sosfilt_rows(sos, x[None, :], zi.reshape(1, len(sos), 2))
    return y[0], z[0]


# a packet that follows on and starts more than this fraction of a sample from where its
# segment's count puts it re-anchors the segment's times at its start (less is rounding:
# a record cut into packets re-anchors nowhere, and picks the same as fed whole)
ANCHOR_TOL = 0.01


# LTAs of record after which the recursive LTA has forgotten where it started: its start
# weighs exp(-14) = 1e-6 by then (after one LTA, 37 %: a detector rebuilt from that little
# gave another ``cf_max`` than the one fed from the start, in 28 of 765 takeover times on
# the MSVF record)
LTA_MEMORY = 14.0


@dataclass(frozen=True)
class PickerParams:
    sta_s: float = 2.0
    lta_s: float = 80.0
    on: float = 3.0
    off: float = 1.5
    freqmin: float = 0.7
    freqmax: float = 2.0
    corners: int = 2
    declare_after_s: float | None = None  # None: 5 x STA
    aic_pre_s: float | None = None         # None: 5 x STA
    warmup_s: float | None = None          # None: 3 x LTA
    flat_s: float = 30.0
    clip_counts: float | None = None

    @classmethod
    def for_rate(cls, sampling_rate: float, **overrides: Any) -> PickerParams:
        """The SeisComP defaults, or the long-period profile below 2.5 samples/s."""
        base = cls()
        if sampling_rate < 2.5:
            base = cls(sta_s=10.0, lta_s=300.0, on=6.0, off=2.0, freqmin=0.05, freqmax=0.2)
        return replace(base, **overrides)

    @property
    def declare_s(self) -> float:
        return 5.0 * self.sta_s if self.declare_after_s is None else self.declare_after_s

    @property
    def warm_s(self) -> float:
        return 3.0 * self.lta_s if self.warmup_s is None else self.warmup_s

    @property
    def pre_s(self) -> float:
        return 5.0 * self.sta_s if self.aic_pre_s is None else self.aic_pre_s

    @property
    def horizon_s(self) -> float:
        """How much record determines the picker's state (``detectors.base.StreamDetector``):
        a warm-up, the LTA's memory (:data:`LTA_MEMORY`), a trigger's AIC window and its
        declaration."""
        return (self.warm_s + LTA_MEMORY * self.lta_s + self.pre_s + self.declare_s
                + self.flat_s)


@lru_cache(maxsize=256)
def design_filter(p: PickerParams, dt: float) -> np.ndarray:
    """Butterworth band-pass (second-order sections), as ObsPy's ``bandpass`` designs it
    (one shared array per parameter set and interval: do not modify it)."""
    nyq = 0.5 / dt
    if not 0 < p.freqmin < p.freqmax < nyq:
        raise PacketError(f"picker band {p.freqmin}-{p.freqmax} Hz does not fit under the "
                          f"Nyquist frequency {nyq:g} Hz of a {dt:g}-s stream")
    sos = np.asarray(iirfilter(p.corners, [p.freqmin / nyq, p.freqmax / nyq], btype="band",
                               ftype="butter", output="sos"))
    return sos


@lru_cache(maxsize=256)
def unit_filter_state(p: PickerParams, dt: float) -> np.ndarray:
    """``sosfilt_zi`` of :func:`design_filter`'s filter: the state of a step of height 1
    (shared, do not modify; a channel starts at its first sample times this)."""
    sos = design_filter(p, dt)
    try:
        zi = np.asarray(sosfilt_zi(sos))
    except np.linalg.LinAlgError:
        zi = np.full((len(sos), 2), np.nan)
    # a band-pass lets no step through: a band too narrow for the rate (0.7 Hz at a 1e-9-s
    # interval) is numerically singular, and its state lets the step through or is none
    step = sosfilt(sos, np.ones(64), zi=zi)[0] if np.isfinite(zi).all() else zi
    if not np.isfinite(step).all() or np.abs(step).max() > 1e-6:
        raise PacketError(f"picker band {p.freqmin}-{p.freqmax} Hz cannot be filtered at a "
                          f"{dt:g}-s sample interval: the band-pass is numerically singular "
                          "there (the interval is wrong, or the picker needs another band)")
    return zi


def aic_onset(x: FloatArray) -> int:
    """Index of the minimum of Maeda's AIC over ``x`` (the onset of the signal)."""
    n = len(x)
    if n < 8:
        return n // 2
    k = np.arange(2, n - 2)
    c1 = np.cumsum(x)
    c2 = np.cumsum(x * x)
    var1 = c2[k - 1] / k - (c1[k - 1] / k) ** 2
    var2 = (c2[-1] - c2[k - 1]) / (n - k) - ((c1[-1] - c1[k - 1]) / (n - k)) ** 2
    eps = 1e-30
    aic = k * np.log(np.maximum(var1, eps)) + (n - k - 1) * np.log(np.maximum(var2, eps))
    return int(k[np.argmin(aic)])


@dataclass
class _Segment:
    """State of one contiguous run of samples."""

    t0: float              # time of the segment's first sample
    dt: float
    sos: np.ndarray
    zi1: np.ndarray           # filter state of a unit step (``unit_filter_state``)
    zi: np.ndarray | None = None  # filter state (None until the first sample)
    sta: float = 0.0
    lta: float = 1e-99
    n: int = 0             # samples seen in the segment
    nsta: int = 1
    nlta: int = 1
    # the last samples (filtered and raw) for the AIC window, from sample index ``buf_k0``
    buf_f: FloatArray = field(default_factory=lambda: np.empty(0))
    buf_r: FloatArray = field(default_factory=lambda: np.empty(0))
    buf_k0: int = 0
    flat_run: int = 0
    last_raw: float = math.nan


class StaLtaPicker:
    """Streaming STA/LTA picker for one seismic channel (see the module docstring)."""

    name = "sta_lta"
    version = "1"

    def __init__(self, station: StationInfo, **params: Any) -> None:
        self.station = station
        self.overrides = params
        self.p: PickerParams | None = None
        self.seg: _Segment | None = None
        self.last_t = -math.inf
        # trigger state (sample indices within the current segment)
        self.trig_k: int | None = None
        self.trig_cf = 0.0
        self.declared = False
        self.status: dict[str, Any] = {"segments": 0, "flat": False}
        self._cf_out: FloatArray = np.empty(0)  # see the ``cf`` property
        self._cf: FloatArray = np.empty(0)
        # while the channel is quiet its state may live in a row of a PickerRows
        self._rows: PickerRows | None = None
        self._row = -1

    def params(self) -> dict[str, Any]:
        return {} if self.p is None else dict(self.p.__dict__)

    @property
    def horizon_s(self) -> float:
        if self.p is not None:
            return self.p.horizon_s
        # the profile is chosen by the first packet's rate: the longer of the two
        return max(PickerParams.for_rate(r, **self.overrides).horizon_s for r in (1.0, 100.0))

    # ------------------------------------------------------------------ input
    def leave_group(self) -> None:
        """Take its state back from the PickerRows it shares, if it is in one (before it is
        dropped: the row is freed)."""
        if self._rows is not None:
            self._rows.release(self)

    def feed(self, t0: float, dt: float, values: FloatArray) -> list[Detection]:
        if self._rows is not None:
            self._rows.release(self)
        if not isinstance(values, np.ndarray):
            raise PacketError(f"{self.station.station_id}: values must be a 1-D float64 "
                              f"array, got {type(values).__name__}")
        if values.dtype != np.float64 or values.ndim != 1:
            raise PacketError(f"{self.station.station_id}: values must be 1-D float64, got "
                              f"{values.dtype} {values.shape}")
        if not (dt > 0 and math.isfinite(dt)):
            raise PacketError(f"{self.station.station_id}: sample interval {dt!r} must be > 0")
        if not math.isfinite(t0):  # nan passed the order check below and turned it off
            raise PacketError(f"{self.station.station_id}: packet start {t0!r} is not finite")
        if self.seg is None or abs(dt - self.seg.dt) > 1e-9 * dt:
            # a new rate's filter, checked before any state changes (cached)
            try:
                unit_filter_state(PickerParams.for_rate(1.0 / dt, **self.overrides), dt)
            except PacketError as e:
                raise PacketError(f"{self.station.station_id}: {e}") from None
        if len(values) == 0:
            self.cf = np.empty(0)
            return []
        if t0 <= self.last_t + 1e-6 * dt:
            raise PacketError(f"{self.station.station_id}: packet starts at {t0}, not after "
                              f"the last sample of the previous one ({self.last_t})")
        self.last_t = t0 + (len(values) - 1) * dt
        # each run of finite samples is fed in turn; a run that does not follow the last
        # sample fed (a gap, NaN samples, a new sample rate) starts a new segment
        finite = np.isfinite(values)
        if finite.all():
            starts, ends = [0], [len(values)]
        else:
            good = np.concatenate([[False], finite, [False]])
            starts = np.flatnonzero(good[1:] & ~good[:-1]).tolist()
            ends = np.flatnonzero(~good[1:] & good[:-1]).tolist()
        out: list[Detection] = []
        whole = len(starts) == 1 and ends[0] - starts[0] == len(values)
        cf = np.zeros(len(values))
        for a, b in zip(starts, ends, strict=True):
            t = t0 + a * dt
            seg = self.seg
            if (seg is None or abs(dt - seg.dt) > 1e-9 * dt
                    or t - (seg.t0 + (seg.n - 1) * seg.dt) > 1.5 * seg.dt):
                self._new_segment(t, dt)
            elif abs(t - (seg.t0 + seg.n * dt)) > ANCHOR_TOL * dt:
                seg.t0 = t - seg.n * dt  # the record's header is the time (see ANCHOR_TOL)
            out.extend(self._run(values if whole else values[a:b]))
            if whole:
                cf = self._cf
            else:
                cf[a:b] = self._cf
        self.cf = cf
        return out

    def _new_segment(self, t0: float, dt: float) -> None:
        self.p = PickerParams.for_rate(1.0 / dt, **self.overrides)
        p = self.p
        self.seg = _Segment(t0=t0, dt=dt, sos=design_filter(p, dt),
                            zi1=unit_filter_state(p, dt),
                            nsta=max(1, round(p.sta_s / dt)), nlta=max(1, round(p.lta_s / dt)))
        self.trig_k = None
        self.declared = False
        self.status["segments"] += 1

    # ------------------------------------------------------------------ kernel
    def characteristic(self, raw: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Filter ``raw`` (the segment's next samples); (sta/lta, filtered) for them."""
        seg = self.seg
        assert seg is not None
        if seg.zi is None:
            seg.zi = seg.zi1 * raw[0]
        x, seg.zi = _sosfilt_state(seg.sos, raw, seg.zi)
        sq = x * x
        skip = 1 if seg.n == 0 else 0  # ObsPy's recursion starts at the second sample
        cs, cl = 1.0 / seg.nsta, 1.0 / seg.nlta
        sta = np.empty(len(x))
        lta = np.empty(len(x))
        if skip:
            sta[0], lta[0] = seg.sta, seg.lta
        if len(x) > skip:
            sta[skip:] = _recursive_mean(cs, sq[skip:], seg.sta)
            lta[skip:] = _recursive_mean(cl, sq[skip:], seg.lta)
            seg.sta, seg.lta = float(sta[-1]), float(lta[-1])
        cf = sta / lta
        if skip:
            cf[0] = 0.0
        if seg.n < seg.nlta:
            cf[:seg.nlta - seg.n] = 0.0
        seg.n += len(x)
        return cf, x

    def _flat(self, raw: FloatArray) -> np.ndarray | None:
        """Mask of samples inside a flat run of at least ``flat_s`` (dead channel), or None
        when there is none."""
        seg, p = self.seg, self.p
        assert seg is not None and p is not None
        n_flat = max(2, round(p.flat_s / seg.dt))
        if seg.flat_run + len(raw) < n_flat:
            # no run can reach the threshold in this packet: only the run at its end counts
            changes = np.flatnonzero(raw[1:] != raw[:-1])
            if len(changes):
                seg.flat_run = len(raw) - 2 - int(changes[-1])
            else:
                seg.flat_run = seg.flat_run + len(raw) if raw[0] == seg.last_raw else len(raw) - 1
            seg.last_raw = float(raw[-1])
            self.status["flat"] = False
            return None
        same = np.empty(len(raw), dtype=bool)
        same[0] = raw[0] == seg.last_raw
        same[1:] = raw[1:] == raw[:-1]
        # run length of identical samples ending at each index, carried across packets
        idx = np.arange(len(raw))
        reset = np.maximum.accumulate(np.where(same, -1, idx))
        run = np.where(reset >= 0, idx - reset, seg.flat_run + idx + 1)
        seg.flat_run = int(run[-1])
        seg.last_raw = float(raw[-1])
        flat = run >= n_flat
        self.status["flat"] = bool(flat[-1])
        return flat

    def _run(self, raw: FloatArray) -> list[Detection]:
        seg, p = self.seg, self.p
        assert seg is not None and p is not None
        k0 = seg.n
        flat = self._flat(raw)
        cf, x = self.characteristic(raw)
        if flat is not None:
            cf[flat] = 0.0
        self._cf = cf
        # the recent samples and this packet: a pick's window may reach back before it
        seg.buf_f = np.concatenate([seg.buf_f, x])
        seg.buf_r = np.concatenate([seg.buf_r, raw])
        out: list[Detection] = []
        i, n = 0, len(cf)
        declare_n = max(1, round(p.declare_s / seg.dt))
        warm = round(p.warm_s / seg.dt) - k0  # samples of this packet still warming up
        while i < n:
            if self.trig_k is None:
                hits = np.flatnonzero(cf[max(i, warm):] > p.on)
                if not len(hits):
                    break
                i = max(i, warm) + int(hits[0])
                self.trig_k, self.trig_cf, self.declared = k0 + i, float(cf[i]), False
            if not self.declared:
                end = self.trig_k + declare_n - k0  # index (in this packet) of declaration
                self.trig_cf = max(self.trig_cf, float(cf[i:min(end, n - 1) + 1].max()))
                if end >= n:
                    break
                pick = self._declare(k0 + end)
                if pick is not None:
                    out.append(pick)
                self.declared = True
                i = end
            lows = np.flatnonzero(cf[i:] < p.off)
            if not len(lows):
                break
            i += int(lows[0])
            self.trig_k = None
        keep = int(math.ceil((p.pre_s + p.declare_s) / seg.dt)) + 2
        if len(seg.buf_f) > keep:
            seg.buf_k0 += len(seg.buf_f) - keep
            seg.buf_f, seg.buf_r = seg.buf_f[-keep:], seg.buf_r[-keep:]
        return out

    def _declare(self, k_end: int) -> Detection | None:
        seg, p = self.seg, self.p
        assert seg is not None and p is not None and self.trig_k is not None
        after = seg.buf_r[self.trig_k - seg.buf_k0:k_end + 1 - seg.buf_k0]
        if np.ptp(after) == 0:
            return None  # a step into a constant: the channel went dead, not an arrival
        pre = max(1, round(p.pre_s / seg.dt))
        a = max(self.trig_k - pre, seg.buf_k0)
        b_aic = self.trig_k + max(1, round(p.sta_s / seg.dt)) + 1
        x = seg.buf_f[a - seg.buf_k0:b_aic - seg.buf_k0]
        onset_k = a + aic_onset(x)
        if onset_k > self.trig_k:
            onset_k = self.trig_k
        win_f = seg.buf_f[onset_k - seg.buf_k0:k_end + 1 - seg.buf_k0]
        win_r = seg.buf_r[onset_k - seg.buf_k0:k_end + 1 - seg.buf_k0]
        noise = seg.buf_f[a - seg.buf_k0:onset_k - seg.buf_k0]
        j = int(np.argmax(np.abs(win_f)))
        amp = float(win_f[j])
        rms = float(np.sqrt(np.mean(noise * noise))) if len(noise) else math.nan
        snr = round(abs(amp) / rms, 2) if rms > 0 else None  # no noise before it
        if p.clip_counts is not None:
            clipped = bool(np.any(np.abs(win_r) >= p.clip_counts))
        else:
            top = np.max(np.abs(win_r))
            clipped = bool(top > 0 and np.count_nonzero(np.abs(win_r) == top) >= 3)
        t = seg.t0
        return Detection(
            station_id=self.station.station_id, kind=self.station.kind, detector=self.name,
            detector_version=self.version, onset=t + onset_k * seg.dt,
            peak_time=t + (onset_k + j) * seg.dt, amplitude=amp, units=self.station.units,
            declared=t + k_end * seg.dt, lat=self.station.lat, lon=self.station.lon,
            params=self.params(),
            extra={"snr": snr, "cf_max": round(self.trig_cf, 2),
                   "trigger": t + self.trig_k * seg.dt, "clipped": clipped,
                   "band_hz": [p.freqmin, p.freqmax]},
        )

    # ------------------------------------------------------------------ many channels
    @property
    def cf(self) -> FloatArray:
        """The characteristic function (STA/LTA) of the samples of the last ``feed``, 0
        where warming up or flat; NaN samples contribute 0 (for monitoring and tests)."""
        rows = self._rows
        if rows is not None and rows.cf_len[self._row] >= 0:
            # a copy: the rows' buffer is overwritten by the next packet
            return rows.cf[self._row, :rows.cf_len[self._row]].copy()
        return self._cf_out

    @cf.setter
    def cf(self, value: FloatArray) -> None:
        self._cf_out = value

    @classmethod
    def feed_many(cls, calls: Sequence[tuple[StaLtaPicker, float, float, FloatArray]],
                  groups: dict[tuple[float, PickerParams], PickerRows],
                  ) -> list[Sequence[Detection] | DetectorError]:
        """Feed one packet to each of many pickers (each picker at most once), as
        ``[picker.feed(t0, dt, values) for picker, t0, dt, values in calls]`` would, with
        an error in place of the detections of a packet that raised one.

        Quiet channels are advanced together in the rows of ``groups`` (keep the same dict
        from call to call); the others go through :meth:`feed` one by one."""
        pickers = list(map(itemgetter(0), calls))
        if len(set(map(id, pickers))) != len(calls):
            raise ValueError("feed_many takes at most one packet per picker")
        out: list[Sequence[Detection] | DetectorError] = [()] * len(calls)
        buckets: dict[tuple[int, int], list[int]] = {}
        slow: list[int] = []
        values = list(map(itemgetter(3), calls))
        rows_of = list(map(attrgetter("_rows"), pickers))
        one_rows = set(map(id, rows_of))
        sizes = set(map(len, values))
        first = rows_of[0] if calls else None
        if (len(one_rows) == 1 and len(sizes) == 1 and first is not None
                and set(map(itemgetter(2), calls)) == {first.dt} and 0 not in sizes
                and set(map(type, values)) == {np.ndarray}
                and set(map(attrgetter("dtype"), values)) == {np.dtype(np.float64)}
                and set(map(attrgetter("ndim"), values)) == {1}):
            buckets[(id(first), sizes.pop())] = list(range(len(calls)))  # the usual case
        else:
            for i, (pk, _t0, dt, v) in enumerate(calls):
                rows = pk._rows
                if (rows is not None and dt == rows.dt and isinstance(v, np.ndarray)
                        and v.dtype == np.float64 and v.ndim == 1 and len(v)):
                    buckets.setdefault((id(rows), len(v)), []).append(i)
                else:
                    slow.append(i)
        for items in buckets.values():
            rows = calls[items[0]][0]._rows
            assert rows is not None
            ok = rows.advance(calls if len(items) == len(calls) else [calls[i] for i in items])
            if not ok.all():
                slow.extend(items[j] for j in np.flatnonzero(~ok).tolist())
        for i in sorted(slow):
            pk, t0, dt, v = calls[i]
            out[i] = feed_guarded(pk, pk.station.station_id, t0, dt, v)
            PickerRows.attach(pk, groups)
        return out


class PickerRows:
    """The state of quiet pickers that share a sample interval and parameters, one row
    each, advanced a packet per row at a time (see :meth:`StaLtaPicker.feed_many`).

    The recent samples (filtered and raw, for a pick's AIC window) are a ring per row:
    ``hist[r, head[r]:]`` then ``hist[r, :head[r]]`` are the last ``keep``, oldest first."""

    # one row per channel (grown by ``_grow``)
    zi: np.ndarray
    sta: FloatArray
    lta: FloatArray
    last_raw: FloatArray
    last_t: FloatArray
    seg_t0: FloatArray
    n: np.ndarray
    flat_run: np.ndarray
    head: np.ndarray
    cf_len: np.ndarray  # samples of the last packet in ``cf``; -1: the picker's own
    cf: FloatArray
    hist_f: FloatArray
    hist_r: FloatArray

    def __init__(self, dt: float, p: PickerParams, sos: np.ndarray) -> None:
        self.dt, self.p, self.sos = dt, p, sos
        self.nsta = max(1, round(p.sta_s / dt))
        self.nlta = max(1, round(p.lta_s / dt))
        self.keep = int(math.ceil((p.pre_s + p.declare_s) / dt)) + 2
        self.n_flat = max(2, round(p.flat_s / dt))
        self.warm = round(p.warm_s / dt)
        self.cs, self.cl = 1.0 / self.nsta, 1.0 / self.nlta
        self.pickers: list[StaLtaPicker | None] = []
        self.free: list[int] = []
        self.cf = np.zeros((0, 1))
        self._grow(16)

    def _grow(self, cap: int) -> None:
        old, nsec = len(self.pickers), len(self.sos)

        def more(name: str, shape: tuple[int, ...], dtype: Any = np.float64) -> None:
            new = np.zeros((cap, *shape), dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        more("zi", (nsec, 2))
        for name in ("sta", "lta", "last_raw", "last_t", "seg_t0"):
            more(name, ())
        for name in ("n", "flat_run", "head"):
            more(name, (), np.int64)
        more("cf_len", (), np.int64)
        more("cf", (self.cf.shape[1],))
        more("hist_f", (self.keep,))
        more("hist_r", (self.keep,))
        self.pickers.extend([None] * (cap - old))
        self.free.extend(range(cap - 1, old - 1, -1))

    @staticmethod
    def attach(pk: StaLtaPicker, groups: dict[tuple[float, PickerParams], PickerRows]
               ) -> None:
        """Move a quiet picker's state into a row of its group (created on first use);
        a picker with something pending (a trigger, a flat run, a fresh segment) stays."""
        seg, p = pk.seg, pk.p
        if (pk._rows is not None or seg is None or p is None or seg.zi is None or seg.n < 1
                or pk.trig_k is not None or pk.status["flat"]):
            return
        rows = groups.get((seg.dt, p))
        if rows is None:
            rows = groups[(seg.dt, p)] = PickerRows(seg.dt, p, seg.sos)
        valid = min(seg.n, rows.keep)
        if len(seg.buf_f) != valid:  # pragma: no cover - the buffers keep the last samples
            return
        if not rows.free:
            rows._grow(2 * len(rows.pickers))
        r = rows.free.pop()
        rows.zi[r] = seg.zi
        rows.sta[r], rows.lta[r], rows.n[r] = seg.sta, seg.lta, seg.n
        rows.flat_run[r], rows.last_raw[r] = seg.flat_run, seg.last_raw
        rows.last_t[r], rows.seg_t0[r] = pk.last_t, seg.t0
        rows.head[r], rows.cf_len[r] = 0, -1  # -1: cf is still the picker's own
        rows.hist_f[r, rows.keep - valid:] = seg.buf_f
        rows.hist_r[r, rows.keep - valid:] = seg.buf_r
        rows.pickers[r] = pk
        pk._rows, pk._row = rows, r

    def release(self, pk: StaLtaPicker) -> None:
        """Give the picker its state back (its segment object) and free its row."""
        r, seg = pk._row, pk.seg
        assert seg is not None and self.pickers[r] is pk
        pk.cf = pk.cf.copy()
        seg.zi = self.zi[r].copy()
        seg.sta, seg.lta = float(self.sta[r]), float(self.lta[r])
        seg.n, seg.flat_run = int(self.n[r]), int(self.flat_run[r])
        seg.last_raw = float(self.last_raw[r])
        pk.last_t, seg.t0 = float(self.last_t[r]), float(self.seg_t0[r])
        valid = min(seg.n, self.keep)
        h = int(self.head[r])
        seg.buf_f = np.concatenate([self.hist_f[r, h:], self.hist_f[r, :h]])[self.keep - valid:]
        seg.buf_r = np.concatenate([self.hist_r[r, h:], self.hist_r[r, :h]])[self.keep - valid:]
        seg.buf_k0 = seg.n - valid
        self.pickers[r] = None
        self.free.append(r)
        pk._rows, pk._row = None, -1

    def advance(self, calls: Sequence[tuple[StaLtaPicker, float, float, FloatArray]]
                ) -> np.ndarray:
        """One packet of equal length for each of these rows' pickers. Rows with nothing
        to decide are advanced and marked True; the others are left untouched, for the
        one-channel path."""
        m, k, dt = len(calls), len(calls[0][3]), self.dt
        idx = np.fromiter(map(attrgetter("_row"), map(itemgetter(0), calls)), np.int64, m)
        t0 = np.fromiter(map(itemgetter(1), calls), np.float64, m)
        raw = np.concatenate(list(map(itemgetter(3), calls))).reshape(m, k)
        n0 = self.n[idx]
        ok = np.isfinite(raw).all(axis=1)
        ok &= t0 > self.last_t[idx] + 1e-6 * dt
        ok &= ~(t0 - (self.seg_t0[idx] + (n0 - 1) * dt) > 1.5 * dt)
        # flat runs: only the run at the packet's end, and only while none can reach
        # the threshold (the one-channel path decides the others)
        run0 = self.flat_run[idx]
        ok &= run0 + k < self.n_flat
        if k > 1:
            changes = raw[:, 1:] != raw[:, :-1]
            since = np.argmax(changes[:, ::-1], axis=1)
            run = np.where(changes.any(axis=1), since,
                           np.where(raw[:, 0] == self.last_raw[idx], run0 + k, k - 1))
        else:
            run = np.where(raw[:, 0] == self.last_raw[idx], run0 + 1, 0)
        # filter and STA/LTA, every row at once (the kernels of the one-channel path)
        x, zi = _sosfilt_rows(self.sos, raw, self.zi[idx])
        sq = x * x
        sta = _recursive_mean(self.cs, sq, self.sta[idx])
        lta = _recursive_mean(self.cl, sq, self.lta[idx])
        cf = sta / lta
        cols = np.arange(k)
        if (n0 < self.nlta).any():
            cf[cols[None, :] < (self.nlta - n0)[:, None]] = 0.0
        if (n0 + k > self.warm).any():
            hot = (cf > self.p.on) & (cols[None, :] >= (self.warm - n0)[:, None])
            ok &= ~hot.any(axis=1)
        if not ok.any():
            return ok
        sel = ok if not ok.all() else slice(None)
        r = idx[sel]
        self.zi[r] = zi[sel]
        self.sta[r], self.lta[r] = sta[sel, -1], lta[sel, -1]
        self.n[r] += k
        self.flat_run[r], self.last_raw[r] = run[sel], raw[sel, -1]
        self.last_t[r] = t0[sel] + (k - 1) * dt
        # the header is the time (ANCHOR_TOL): the one-channel path's rule, row by row
        t_sel, n_sel, a_sel = t0[sel], n0[sel], self.seg_t0[r]
        self.seg_t0[r] = np.where(np.abs(t_sel - (a_sel + n_sel * dt)) > ANCHOR_TOL * dt,
                                  t_sel - n_sel * dt, a_sel)
        if k > self.cf.shape[1]:
            wider = np.zeros((len(self.pickers), k))
            wider[:, :self.cf.shape[1]] = self.cf
            self.cf = wider
        self.cf[r, :k] = cf[sel]
        self.cf_len[r] = k
        # the ring: the last (up to keep) samples go in after each row's head
        w = min(k, self.keep)
        head = self.head[r]
        h0 = int(head[0])
        if h0 + k <= self.keep and (head == h0).all():
            # the usual case: rows that joined together, no wrap in this packet
            self.hist_f[r, h0 + k - w:h0 + k] = x[sel, k - w:]
            self.hist_r[r, h0 + k - w:h0 + k] = raw[sel, k - w:]
        else:
            at = (head[:, None] + (k - w) + np.arange(w)[None, :]) % self.keep
            self.hist_f[r[:, None], at] = x[sel, k - w:]
            self.hist_r[r[:, None], at] = raw[sel, k - w:]
        self.head[r] = (head + k) % self.keep
        return ok
