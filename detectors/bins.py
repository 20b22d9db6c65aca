"""Event-time bins shared by the binned detectors (pressure, sea level)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from detectors.base import FloatArray, PacketError


def median(a: FloatArray) -> float:
    """``numpy.median`` of a 1-D float array without its per-call overhead (same value)."""
    n = len(a)
    k = n // 2
    if n % 2:
        return float(np.partition(a, k)[k])
    part = np.partition(a, [k - 1, k])
    return float((part[k - 1] + part[k]) / 2.0)


#: sample times are taken on this grid (s) before they are binned. A packet's start,
#: computed as ``t0 + i * dt`` by whoever cut the record, lands an ulp or so either side of
#: the time the whole record gives its sample (at 1.6e9 s an ulp is 0.24 us), and a sample
#: at a bin's start moved to the bin before: results depended on where the packets were
#: cut (seen at 10 Hz starting at .1 s). On the grid both are the same time. It is
#: miniSEED's time resolution, so real sample times are on it or (a rate like 1/3 s) far
#: from its half-steps, where an ulp could still tip the rounding; a tolerance added
#: instead only moved the edge (a start .1 ms before a sample slot flipped again)
TIME_GRID = 1e-4
_STEPS_PER_S = 1e4  # 1 / TIME_GRID, exact: t * it and n / it round once each


def sample_time(t: float) -> float:
    """``t`` on the TIME_GRID: the time of a sample as every cut of its record gives it."""
    return float(np.rint(t * _STEPS_PER_S)) / _STEPS_PER_S


def bin_of(t: float, width: float) -> int:
    """The index of the bin of ``width`` seconds that holds time ``t`` (on TIME_GRID)."""
    return math.floor(sample_time(t) / width)


def bins_of(t: np.ndarray, width: float) -> np.ndarray:
    """:func:`bin_of` of each time in ``t``."""
    return np.floor(np.rint(t * _STEPS_PER_S) / _STEPS_PER_S / width).astype(np.int64)


def check_packet(station_id: str, t0: float, dt: float, values: FloatArray,
                 last_t: float) -> float:
    """Check a packet against the stream it continues; return its last sample's time
    (``last_t`` for an empty packet). Raises :class:`PacketError` naming the bad value."""
    if not isinstance(values, np.ndarray):
        raise PacketError(f"{station_id}: values must be a 1-D float64 array, got "
                          f"{type(values).__name__}")
    if values.dtype != np.float64 or values.ndim != 1:
        raise PacketError(f"{station_id}: values must be 1-D float64, got {values.dtype} "
                          f"{values.shape}")
    if not (dt > 0 and math.isfinite(dt)):
        raise PacketError(f"{station_id}: sample interval {dt!r} must be > 0")
    if not math.isfinite(t0):  # nan passed the order check below and turned it off
        raise PacketError(f"{station_id}: packet start {t0!r} is not finite")
    if t0 <= last_t + 1e-6:
        raise PacketError(f"{station_id}: packet starts at {t0}, not after the last sample "
                          f"of the previous one ({last_t})")
    return last_t if len(values) == 0 else t0 + dt * (len(values) - 1)


@dataclass
class Binner:
    """Averages samples into bins aligned to multiples of ``width``; emits closed bins.

    The open bin keeps its samples and sums them once, on closing, as one array: the mean
    is then bit-identical however the samples were split into packets.
    """

    width: float
    index: int | None = None  # bin being filled
    pending: list[FloatArray] = field(default_factory=list)

    def push(self, t0: float, dt: float,
             values: FloatArray) -> list[tuple[int, float, float]]:
        """Bins closed by this packet: (index, mean, time of the sample that closed it)."""
        n = len(values)
        if n == 0:
            return []
        if (self.index is not None
                and bin_of(t0, self.width) == self.index
                and bin_of(t0 + dt * (n - 1), self.width) == self.index):
            # the whole packet falls in the open bin (the common case for short packets);
            # NaN samples are dropped when the bin closes
            self.pending.append(values.copy())
            return []
        t = t0 + dt * np.arange(len(values))
        idx = bins_of(t, self.width)
        uniq, start = np.unique(idx, return_index=True)
        ends = [*start[1:].tolist(), len(values)]
        out: list[tuple[int, float, float]] = []
        for b, a, e in zip(uniq.tolist(), start.tolist(), ends, strict=True):
            seg = values[a:e].copy()
            if self.index is not None and b == self.index:
                self.pending.append(seg)
                continue
            if self.index is not None:
                out.append((self.index, self._mean(), sample_time(float(t[a]))))
            self.index, self.pending = b, [seg]
        return out

    def _mean(self) -> float:
        allv = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        allv = allv[np.isfinite(allv)]
        return float(allv.sum() / len(allv)) if len(allv) else math.nan


def run_onset(history: Sequence[tuple[float, float]], k_onset: float, bin_s: float,
              t: float) -> float:
    """Start of the run of bins whose (time, |residual|/sigma) stayed >= ``k_onset`` up to
    the last one, interpolated between the last quiet bin and the first loud one (sub-bin
    resolution); ``t`` when there is no history."""
    j = len(history) - 1
    while j > 0 and history[j - 1][1] >= k_onset:
        j -= 1
    if j <= 0:
        return history[0][0] if history else t
    (t0, z0), (t1, z1) = history[j - 1], history[j]
    if t1 - t0 > 1.5 * bin_s or z1 <= z0:
        return t1
    # at most t1: when the last bin itself stays under k_onset the interpolation went past
    # it (an onset after the trigger)
    return t0 + min(1.0, (k_onset - z0) / (z1 - z0)) * (t1 - t0)


def whole_record_bins(times: FloatArray, values: FloatArray,
                      bin_s: float) -> list[tuple[int, list[float], float]]:
    """The closed bins of a whole record, for the slow references: (bin index, its finite
    values in order, time of the first sample after it). Every bin but the last closes."""
    members: dict[int, list[float]] = {}
    first_t: dict[int, float] = {}
    for t, v in zip(times.tolist(), values.tolist(), strict=True):
        b = bin_of(t, bin_s)
        members.setdefault(b, [])
        first_t.setdefault(b, t)
        if math.isfinite(v):
            members[b].append(v)
    order = sorted(members)
    return [(b, members[b], sample_time(first_t[nxt]))
            for b, nxt in zip(order, order[1:], strict=False)]
