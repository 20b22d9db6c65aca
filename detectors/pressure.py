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

Many barometers are advanced together by :meth:`LambPulseDetector.feed_many` /
:meth:`LambPulseDetector.feed_block` (a frame: the same stretch of time at many stations):
quiet stations keep their state as rows of :class:`LambRows` and every bin is processed
for all of them at once, with results identical to feeding each station alone (tested).

After a detection the station stays quiet for ``refractory_s``. A gap longer than
``max_gap_s`` re-warms the detector: it needs ``warmup_s`` of data again before it can
trigger, so the edge of a gap cannot be mistaken for a pulse.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from detectors.base import Detection, DetectorError, FloatArray, StationInfo, feed_guarded
from detectors.bins import (
    Binner,
    bin_of,
    bins_of,
    check_packet,
    median,
    run_onset,
    whole_record_bins,
)


def line_fit(x: FloatArray, y: FloatArray) -> tuple[float, float]:
    """Least-squares line ``y = slope * x + icpt`` (closed form: a fraction of the cost of
    ``numpy.polyfit``, which solves the same problem by SVD). Sums are numpy's pairwise
    sums, not BLAS dot products, so :class:`LambRows` gets the same bits row by row."""
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    sxx = float((dx * dx).sum())
    slope = float((dx * (y - ym)).sum()) / sxx if sxx > 0 else 0.0
    return slope, ym - slope * xm


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

    @property
    def horizon_s(self) -> float:
        """How much record before its newest sample determines the detector's state (see
        ``detectors.base.StreamDetector``): a warm-up, the baseline window and the onset
        look-back of a trigger, its declaration and the refractory time after it, twice
        (a pulse within the refractory time of an earlier one is not declared: a detector
        that missed the earlier one, in its warm-up, would declare it)."""
        return (self.warmup_s + self.baseline_s + self.guard_s + self.onset_lookback_s
                + self.declare_after_s + 2 * self.refractory_s)

    @property
    def declare_lag_s(self) -> float:
        """At most how long after its onset a pulse is declared (a trigger's onset is found
        up to ``onset_lookback_s`` back; the declaration waits ``declare_after_s``, and for
        the next bin, which a gap of up to ``max_gap_s`` may hold back): an associator must
        take detections that late."""
        return self.onset_lookback_s + self.declare_after_s + self.max_gap_s + self.bin_s

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
        self.horizon_s = self.p.horizon_s
        self._binner = Binner(self.p.bin_s)
        self._s = _State()
        self._last_t = -math.inf
        # while nothing happens at the station its state may live in a row of a LambRows
        self._rows: LambRows | None = None
        self._row = -1

    def params(self) -> dict[str, Any]:
        return {**self.p.__dict__, "min_amplitude": self.floor}

    def leave_group(self) -> None:
        """Take its state back from the LambRows it shares, if it is in one (before it is
        dropped: the row is freed)."""
        if self._rows is not None:
            self._rows.release(self)

    def feed(self, t0: float, dt: float, values: FloatArray) -> list[Detection]:
        if self._rows is not None:
            self._rows.release(self)
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

    # ------------------------------------------------------------------ many stations
    @classmethod
    def feed_many(cls, calls: Sequence[tuple[LambPulseDetector, float, float, FloatArray]],
                  groups: dict[LambParams, list[LambRows]],
                  ) -> list[Sequence[Detection] | DetectorError]:
        """One packet for each of many detectors (each at most once), as
        ``[det.feed(t0, dt, values) for det, t0, dt, values in calls]`` would, with an
        error in place of the detections of a packet that raised one. Packets sharing a
        start, an interval and a length (a frame: the same stretch of time at many stations)
        go through the rows of ``groups`` together (keep the dict from call to call)."""
        dets = list(map(itemgetter(0), calls))
        if len(set(map(id, dets))) != len(calls):
            raise ValueError("feed_many takes at most one packet per detector")
        out: list[Sequence[Detection] | DetectorError] = [()] * len(calls)
        frames: dict[tuple[float, float, int], list[int]] = {}
        for i, (d, t0, dt, v) in enumerate(calls):
            if isinstance(v, np.ndarray) and v.dtype == np.float64 and v.ndim == 1:
                frames.setdefault((t0, dt, len(v)), []).append(i)
                continue
            # the one-detector path names what is wrong with it
            out[i] = feed_guarded(d, d.station.station_id, t0, dt, v)
        for (t0, dt, _n), items in frames.items():
            block = np.stack([calls[i][3] for i in items])
            found = cls.feed_block([dets[i] for i in items], t0, dt, block, groups)
            for i, res in zip(items, found, strict=True):
                out[i] = res
        return out

    @classmethod
    def feed_block(cls, dets: Sequence[LambPulseDetector], t0: float, dt: float,
                   block: FloatArray, groups: dict[LambParams, list[LambRows]],
                   ) -> list[Sequence[Detection] | DetectorError]:
        """A frame: ``block[i]`` (float64) is the packet of ``dets[i]``, all from ``t0``
        every ``dt``. Detectors in one group's rows advance together; the others one by
        one, then join a group if their state allows."""
        out: list[Sequence[Detection] | DetectorError] = [()] * len(dets)
        alone: list[int] = []
        by_rows: dict[int, list[int]] = {}
        rows_of = list(map(attrgetter("_rows"), dets))
        if None in rows_of:
            # detectors never fed share their (initial) state: they start in rows too
            for d in dets:
                if d._rows is None and d._last_t == -math.inf:
                    LambRows.attach(d, groups)
            rows_of = list(map(attrgetter("_rows"), dets))
        first = rows_of[0] if rows_of else None
        if first is not None and rows_of.count(first) == len(rows_of):
            by_rows[id(first)] = list(range(len(dets)))  # the usual case
        else:
            for i, r in enumerate(rows_of):
                if r is None:
                    alone.append(i)
                else:
                    by_rows.setdefault(id(r), []).append(i)
        for items in by_rows.values():
            rows = dets[items[0]]._rows
            assert rows is not None
            if len(items) != rows.members:
                # part of a group: the part goes on in a group of its own (the rest can
                # catch up and merge back)
                rows = rows.split([dets[i] for i in items], groups[rows.p])
            if len(items) == len(dets):
                left = rows.feed_frame(dets, t0, dt, block)
            else:
                left = rows.feed_frame([dets[i] for i in items], t0, dt, block[items])
            # rows that left the group before the frame take it on their own
            alone.extend(items[j] for j in left)
        for i in sorted(alone):
            d = dets[i]
            out[i] = feed_guarded(d, d.station.station_id, t0, dt, block[i])
            LambRows.attach(d, groups)
        for plist in groups.values():
            if len(plist) > 1 and any(g.closed for g in plist):
                LambRows.merge(plist)
        return out


class LambRows:
    """Lamb-pulse detectors of many barometers that have been fed the same frames (the
    same stretches of time), advanced together: one row each.

    While nothing happens at its station, a detector's state differs from the others'
    only in its samples: the open bin's count, the baseline window's bin times, the count
    of recent residuals and the onset history's bin times are the same for every row and
    kept once. Every bin is processed for all rows at once with the arithmetic of
    :meth:`LambPulseDetector._bin` (sums are pairwise sums along each row, the same bits
    as on one row). A row whose bin has anything to decide (a missing bin, a flat
    baseline, a residual over the trigger threshold) leaves: its detector gets its state
    as it was before the frame and takes the frame alone, as do rows not in a frame.
    """

    def __init__(self, p: LambParams) -> None:
        self.p = p
        self.dets: list[LambPulseDetector | None] = []
        self.free: list[int] = []
        self.members = 0
        self.closed = False  # a bin closed since the last merge
        # shared state
        self.last_t = -math.inf
        self.bidx: int | None = None   # the open bin
        self.pc = 0                    # samples in the open bin
        self.wt = np.empty(0)          # baseline window: bin times
        self.rc = 0                    # recent residuals
        self.ht = np.empty(0)          # onset history: bin times
        self.last_bin_t = -math.inf
        self.warm_since = -math.inf
        self.t_ref = 0.0
        # one row each
        self.pend = np.zeros((0, 1))
        self.win = np.zeros((0, 0))
        self.recent = np.zeros((0, 3))
        self.hz = np.zeros((0, 0))
        self.quiet_until = np.zeros(0)
        self.floor = np.zeros(0)

    # ------------------------------------------------------------------ membership
    def _shared_matches(self, d: LambPulseDetector) -> bool:
        s, b = d._s, d._binner
        if s.frozen is not None or s.above != 0:
            return False
        if not self.members:
            return True  # an empty group takes the first one's state
        return (d._last_t == self.last_t and b.index == self.bidx
                and sum(len(a) for a in b.pending) == self.pc
                and len(s.times) == len(self.wt) and list(s.times) == self.wt.tolist()
                and len(s.recent) == self.rc
                and len(s.history) == len(self.ht)
                and [h[0] for h in s.history] == self.ht.tolist()
                and s.last_bin_t == self.last_bin_t and s.warm_since == self.warm_since)

    @staticmethod
    def attach(d: LambPulseDetector, groups: dict[LambParams, list[LambRows]]) -> None:
        """Give a quiet detector a row in a group whose state it shares (a new group if
        none does)."""
        if d._rows is not None or d._s.frozen is not None or d._s.above != 0:
            return
        for rows in groups.setdefault(d.p, []):
            if rows._shared_matches(d):
                rows._take(d)
                return
        rows = LambRows(d.p)
        groups[d.p].append(rows)
        rows._take(d)

    def _key(self) -> tuple[Any, ...]:
        return (self.last_t, self.bidx, self.pc, self.wt.tobytes(), self.rc, self.ht.tobytes(),
                self.last_bin_t, self.warm_since)

    @staticmethod
    def merge(plist: list[LambRows]) -> None:
        """Move the rows of groups whose shared state has become the same (stations whose
        histories realigned after a detection, a gap leaving the window) into one."""
        for g in plist:
            g.closed = False
        by_key: dict[tuple[Any, ...], LambRows] = {}
        for g in sorted(plist, key=lambda g: -g.members):
            if not g.members:
                continue
            into = by_key.setdefault(g._key(), g)
            if into is not g:
                g._move([d for d in g.dets if d is not None], into)
        plist[:] = [g for g in plist if g.members] or plist[:1]

    def split(self, dets: Sequence[LambPulseDetector], plist: list[LambRows]) -> LambRows:
        """A new group (in ``plist``) with this group's shared state and these rows."""
        new = LambRows(self.p)
        new.last_t, new.bidx, new.pc = self.last_t, self.bidx, self.pc
        new.wt, new.rc, new.ht = self.wt, self.rc, self.ht  # never changed in place
        new.last_bin_t, new.warm_since, new.t_ref = self.last_bin_t, self.warm_since, self.t_ref
        new.win, new.hz = np.zeros((0, len(self.wt))), np.zeros((0, len(self.ht)))
        self._move(dets, new)
        plist.append(new)
        return new

    def _move(self, dets: Sequence[LambPulseDetector], into: LambRows) -> None:
        """Move these rows (their samples) to ``into``, whose shared state is this one's."""
        k = len(dets)
        src = np.fromiter(map(attrgetter("_row"), dets), np.int64, k)
        if len(into.free) < k:
            into._grow(max(16, 2 * len(into.dets), len(into.dets) + k))
        dst = np.array([into.free.pop() for _ in range(k)], dtype=np.int64)
        if self.pc > into.pend.shape[1]:
            into._widen_pending(self.pc)
        into.pend[dst, :self.pc] = self.pend[src, :self.pc]
        into.win[dst], into.recent[dst], into.hz[dst] = (
            self.win[src], self.recent[src], self.hz[src])
        into.quiet_until[dst], into.floor[dst] = self.quiet_until[src], self.floor[src]
        for d, a, b in zip(dets, src.tolist(), dst.tolist(), strict=True):
            self.dets[a] = None
            self.free.append(a)
            into.dets[b] = d
            d._rows, d._row = into, b
        self.members -= k
        into.members += k

    def _take(self, d: LambPulseDetector) -> None:
        s, b = d._s, d._binner
        if not self.members:
            self.last_t, self.bidx = d._last_t, b.index
            self.pc = sum(len(a) for a in b.pending)
            self.wt = np.array(s.times, dtype=np.float64)
            self.rc = len(s.recent)
            self.ht = np.array([h[0] for h in s.history], dtype=np.float64)
            self.last_bin_t, self.warm_since, self.t_ref = s.last_bin_t, s.warm_since, s.t_ref
            self.win = np.zeros((len(self.dets), len(self.wt)))
            self.hz = np.zeros((len(self.dets), len(self.ht)))
        if not self.free:
            self._grow(max(16, 2 * len(self.dets)))
        r = self.free.pop()
        if self.pc > self.pend.shape[1]:
            self._widen_pending(self.pc)
        if self.pc:
            self.pend[r, :self.pc] = np.concatenate(b.pending)
        self.win[r] = np.fromiter(s.values, np.float64, len(s.values))
        self.recent[r, 3 - self.rc:] = np.fromiter(s.recent, np.float64, self.rc)
        self.hz[r] = [h[1] for h in s.history]
        self.quiet_until[r] = s.quiet_until
        self.floor[r] = d.floor
        self.dets[r] = d
        self.members += 1
        d._rows, d._row = self, r

    def _grow(self, cap: int) -> None:
        old = len(self.dets)

        def more(a: np.ndarray) -> np.ndarray:
            new = np.zeros((cap, *a.shape[1:]))
            new[:old] = a
            return new

        self.pend, self.win, self.recent, self.hz = (more(a) for a in (
            self.pend, self.win, self.recent, self.hz))
        self.quiet_until, self.floor = more(self.quiet_until), more(self.floor)
        self.dets.extend([None] * (cap - old))
        self.free.extend(range(cap - 1, old - 1, -1))

    def _widen_pending(self, width: int) -> None:
        new = np.zeros((len(self.dets), max(width, 2 * self.pend.shape[1])))
        new[:, :self.pend.shape[1]] = self.pend
        self.pend = new

    def release(self, d: LambPulseDetector) -> None:
        """Give the detector its own state back (as of the last frame) and free its row."""
        r = d._row
        assert self.dets[r] is d
        s, b = d._s, d._binner
        d._last_t, b.index = self.last_t, self.bidx
        b.pending = [self.pend[r, :self.pc].copy()] if self.pc else []
        s.times = deque(self.wt.tolist())
        s.values = deque(self.win[r].tolist())
        s.recent = deque(self.recent[r, 3 - self.rc:].tolist())
        s.history = deque(zip(self.ht.tolist(), self.hz[r].tolist(), strict=True))
        s.above, s.frozen = 0, None
        s.last_bin_t, s.warm_since, s.t_ref = self.last_bin_t, self.warm_since, self.t_ref
        s.quiet_until = float(self.quiet_until[r])
        self.dets[r] = None
        self.members -= 1
        self.free.append(r)
        d._rows, d._row = None, -1

    # ------------------------------------------------------------------ a frame
    def feed_frame(self, dets: Sequence[LambPulseDetector], t0: float, dt: float,
                   block: FloatArray) -> list[int]:
        """``block[i]``, from ``t0`` every ``dt``, for ``dets[i]`` (rows of this group).
        Returns the positions ``i`` of the rows that left the group instead (their
        detectors hold the state before the frame: feed them the frame alone); the others
        declared nothing."""
        m, n = block.shape
        idx = np.fromiter(map(attrgetter("_row"), dets), np.int64, m)
        # rows of the group that are not in the frame leave it first
        if m != self.members:
            fed = np.zeros(len(self.dets), dtype=bool)
            fed[idx] = True
            for row, d in enumerate(self.dets):
                if d is not None and not fed[row]:
                    self.release(d)
        if (not (dt > 0 and math.isfinite(dt)) or not math.isfinite(t0)
                or not t0 > self.last_t + 1e-6 or n == 0):
            for d in dets:  # the one-detector path raises (or ignores) it
                self.release(d)
            return list(range(m))
        p = self.p
        w = p.bin_s
        last = t0 + dt * (n - 1)
        b_first = bin_of(t0, w)
        if self.bidx is not None and b_first == self.bidx and bin_of(last, w) == self.bidx:
            # the frame falls in the open bin: the common case for short packets
            if self.pc + n > self.pend.shape[1]:
                self._widen_pending(self.pc + n)
            self.pend[idx, self.pc:self.pc + n] = block
            self.pc += n
            self.last_t = last
            return []
        # bins closed by this frame, on working copies (committed if the rows stay)
        t = t0 + dt * np.arange(n)
        bins = bins_of(t, w)
        uniq, start = np.unique(bins, return_index=True)
        ends = [*start[1:].tolist(), n]
        pend = self.pend[idx, :self.pc]
        win, recent, hz = self.win[idx], self.recent[idx], self.hz[idx]
        quiet, floor = self.quiet_until[idx], self.floor[idx]
        st = _Shared(self.bidx, self.wt, self.rc, self.ht, self.last_bin_t, self.warm_since,
                     self.t_ref)
        bad = np.zeros(m, dtype=bool)
        for b, a, e in zip(uniq.tolist(), start.tolist(), ends, strict=True):
            seg = block[:, a:e]
            if st.bidx is not None and b == st.bidx:
                pend = np.concatenate([pend, seg], axis=1)
                continue
            if st.bidx is not None:
                v = _row_means(pend)
                win, recent, hz = _bins(p, st, st.bidx * w, v, win, recent, hz, quiet, floor,
                                        bad)
            st.bidx, pend = b, seg
        self.closed = True
        keep = ~bad
        left = np.flatnonzero(bad).tolist()
        for j in left:
            self.release(dets[j])
        r = idx[keep]
        self.bidx, self.wt, self.rc, self.ht = st.bidx, st.wt, st.rc, st.ht
        self.last_bin_t, self.warm_since, self.t_ref = st.last_bin_t, st.warm_since, st.t_ref
        self.last_t = last
        self.pc = pend.shape[1]
        if self.pc > self.pend.shape[1]:
            self._widen_pending(self.pc)
        self.pend[r, :self.pc] = pend[keep]
        cap = len(self.dets)
        if win.shape[1] != self.win.shape[1]:
            self.win = np.zeros((cap, win.shape[1]))
        if hz.shape[1] != self.hz.shape[1]:
            self.hz = np.zeros((cap, hz.shape[1]))
        self.win[r], self.recent[r], self.hz[r] = win[keep], recent[keep], hz[keep]
        return left


@dataclass
class _Shared:
    """The state every row of a :class:`LambRows` shares (see there)."""

    bidx: int | None
    wt: FloatArray
    rc: int
    ht: FloatArray
    last_bin_t: float
    warm_since: float
    t_ref: float


def _row_means(pend: FloatArray) -> FloatArray:
    """Each row's bin mean over its finite samples (``Binner._mean`` row by row)."""
    finite = np.isfinite(pend)
    if finite.all():
        return pend.sum(axis=1) / pend.shape[1]
    out = pend.sum(axis=1) / pend.shape[1]
    for j in np.flatnonzero(~finite.all(axis=1)).tolist():
        x = pend[j][finite[j]]
        out[j] = x.sum() / len(x) if len(x) else math.nan
    return out


def _rows_median(a: FloatArray) -> FloatArray:
    """:func:`median` of each row."""
    n = a.shape[1]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=1)[:, k]
    part = np.partition(a, [k - 1, k], axis=1)
    return (part[:, k - 1] + part[:, k]) / 2.0


def _bins(p: LambParams, st: _Shared, t: float, v: FloatArray, win: FloatArray,
          recent: FloatArray, hz: FloatArray, quiet: FloatArray, floor: FloatArray,
          bad: np.ndarray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """:meth:`LambPulseDetector._bin` for every row at once (frozen is None in all of
    them); rows with anything to decide are marked in ``bad``."""
    bad |= ~np.isfinite(v)  # a missing bin: its row's window would differ
    if t - st.last_bin_t > p.max_gap_s:
        win, hz = win[:, :0], hz[:, :0]
        st.wt, st.ht, st.rc, st.warm_since = st.wt[:0], st.ht[:0], 0, t
    st.last_bin_t = t
    fit = None
    if len(st.wt):
        n = int(np.searchsorted(st.wt, t - p.guard_s, side="right"))
        if n >= max(p.min_coverage * p.baseline_s / p.bin_s, 4):
            st.t_ref = float(st.wt[n - 1])
            x = st.wt[:n] - st.t_ref
            vv = win[:, :n]
            xm = float(x.mean())
            ym = vv.mean(axis=1)
            dx = x - xm
            sxx = float((dx * dx).sum())
            slope = (dx * (vv - ym[:, None])).sum(axis=1) / sxx if sxx > 0 else np.zeros(len(v))
            icpt = ym - slope * xm
            resid = vv - (slope[:, None] * x + icpt[:, None])
            sigma = 1.4826 * _rows_median(np.abs(resid - _rows_median(resid)[:, None]))
            steps = np.abs(np.diff(vv, axis=1))
            smin = np.where(steps > 0, steps, np.inf).min(axis=1) if n > 1 else np.full(
                len(v), np.inf)
            has = np.isfinite(smin)
            sigma = np.where(has, np.maximum(sigma, 0.5 * smin), sigma)
            flat = ~has & (vv.max(axis=1) == vv.min(axis=1))
            sigma = np.where(flat, 0.0, sigma)
            fit = (slope, icpt, sigma)
    # the bin joins the window
    st.wt = np.append(st.wt, t)
    win = np.concatenate([win, v[:, None]], axis=1)
    k = 0
    while k < len(st.wt) and st.wt[k] < t - p.baseline_s - p.guard_s:
        k += 1
    if k:
        st.wt, win = st.wt[k:], win[:, k:]
    if fit is None:
        return win, recent, hz
    slope, icpt, sigma = fit
    r = v - (slope * (t - st.t_ref) + icpt)
    recent = np.concatenate([recent[:, 1:], r[:, None]], axis=1)
    st.rc = min(st.rc + 1, 3)
    if st.rc < 3:
        return win, recent, hz
    bad |= ~(sigma > 0.0)  # a flat baseline: that row's detector holds it
    with np.errstate(divide="ignore", invalid="ignore"):
        rm = np.partition(recent, 1, axis=1)[:, 1]
        z = np.abs(rm) / sigma
        st.ht = np.append(st.ht, t)
        hz = np.concatenate([hz, (np.abs(r) / sigma)[:, None]], axis=1)
    k = 0
    while k < len(st.ht) and st.ht[k] < t - p.onset_lookback_s:
        k += 1
    if k:
        st.ht, hz = st.ht[k:], hz[:, k:]
    armed = (t >= quiet) & (t - st.warm_since >= p.warmup_s)
    bad |= armed & (z > p.k_on) & (np.abs(rm) > floor)
    return win, recent, hz


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
