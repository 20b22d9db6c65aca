"""The NOAA DART tsunami detection algorithm (Mofjeld 1997), as a reference baseline.

The DART bottom-pressure recorder predicts the water-column height with a cubic polynomial
fitted to the previous ``window_s`` (3 h) of its own samples, and compares each new sample
with the prediction; two consecutive samples more than ``threshold`` (30 mm) away put it in
event mode. This is that rule on whatever samples the record holds (15-s, 1-min or 15-min),
one sample at a time, with no other filtering. Event mode lasts ``event_s`` (4 h), during
which no new trigger is raised.

Mofjeld, H. O. (1997), Tsunami detection algorithm, NOAA/PMEL technical note.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from detectors.base import Detection, FloatArray, StationInfo
from detectors.bins import check_packet


class MofjeldDetector:
    name = "mofjeld"
    version = "1"

    def __init__(self, station: StationInfo, *, threshold: float = 0.03,
                 window_s: float = 3 * 3600.0, consecutive: int = 2,
                 event_s: float = 4 * 3600.0, min_points: int = 8) -> None:
        self.station = station
        self.threshold = threshold
        self.window_s = window_s
        self.consecutive = consecutive
        self.event_s = event_s
        self.min_points = min_points
        self._t: deque[float] = deque()
        self._v: deque[float] = deque()
        self._run: list[tuple[float, float]] = []
        self._quiet_until = -math.inf
        self._last_t = -math.inf

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "window_s": self.window_s,
                "consecutive": self.consecutive, "event_s": self.event_s}

    def feed(self, t0: float, dt: float, values: FloatArray) -> list[Detection]:
        last = check_packet(self.station.station_id, t0, dt, values, self._last_t)
        out = []
        for i, v in enumerate(values.tolist()):
            t = t0 + i * dt
            if math.isfinite(v):
                det = self._sample(t, v)
                if det is not None:
                    out.append(det)
        self._last_t = last
        return out

    def _sample(self, t: float, v: float) -> Detection | None:
        while self._t and self._t[0] < t - self.window_s:
            self._t.popleft()
            self._v.popleft()
        det = None
        if len(self._t) >= self.min_points and self._t[-1] - self._t[0] >= 0.5 * self.window_s:
            tt = (np.asarray(self._t) - t) / 3600.0
            coef = np.polyfit(tt, np.asarray(self._v), 3)
            r = v - float(coef[-1])
            if abs(r) > self.threshold and t >= self._quiet_until:
                self._run.append((t, r))
                if len(self._run) >= self.consecutive:
                    det = self._detect(t)
            else:
                self._run.clear()
        self._t.append(t)
        self._v.append(v)
        return det

    def _detect(self, t: float) -> Detection:
        onset = self._run[0][0]
        peak_t, peak_v = max(self._run, key=lambda x: abs(x[1]))
        self._run.clear()
        self._quiet_until = t + self.event_s
        st = self.station
        return Detection(station_id=st.station_id, kind=st.kind, detector=self.name,
                         detector_version=self.version, onset=onset, peak_time=peak_t,
                         amplitude=peak_v, units=st.units, declared=t, lat=st.lat, lon=st.lon,
                         params=self.params(), extra={"trigger": t})


def mofjeld_reference(times: FloatArray, values: FloatArray, station: StationInfo,
                      **params: Any) -> list[Detection]:
    """Slow, obvious reference of the same rule on a whole record (the tests compare it
    with :class:`MofjeldDetector` fed in packets of any size): for every finite sample the
    window is re-selected from the whole record and the cubic is fitted by least squares on
    a Vandermonde matrix (``numpy.linalg.lstsq``, not ``polyfit``)."""
    p = {"threshold": 0.03, "window_s": 3 * 3600.0, "consecutive": 2, "event_s": 4 * 3600.0,
         "min_points": 8, **params}
    ok = np.isfinite(values)
    t_all, v_all = times[ok], values[ok]
    out: list[Detection] = []
    run: list[tuple[float, float]] = []
    quiet_until = -math.inf
    for k in range(len(t_all)):
        t, v = float(t_all[k]), float(v_all[k])
        win = (t_all[:k] >= t - p["window_s"])
        tw, vw = t_all[:k][win], v_all[:k][win]
        if len(tw) < p["min_points"] or tw[-1] - tw[0] < 0.5 * p["window_s"]:
            continue
        x = (tw - t) / 3600.0
        coef = np.linalg.lstsq(np.vander(x, 4), vw, rcond=None)[0]
        r = v - float(coef[-1])  # the cubic at x = 0
        if abs(r) > p["threshold"] and t >= quiet_until:
            run.append((t, r))
            if len(run) >= p["consecutive"]:
                peak_t, peak_v = max(run, key=lambda e: abs(e[1]))
                out.append(Detection(
                    station_id=station.station_id, kind=station.kind, detector="mofjeld",
                    detector_version="1", onset=run[0][0], peak_time=peak_t,
                    amplitude=peak_v, units=station.units, declared=t, lat=station.lat,
                    lon=station.lon, extra={"trigger": t},
                    params={k: p[k] for k in ("threshold", "window_s", "consecutive",
                                              "event_s")}))
                run = []
                quiet_until = t + p["event_s"]
        else:
            run = []
    return out
