"""Explosive-eruption flag from geostationary plume-top height grids.

Input: one frame at a time (event time, and the pixels that hold a plume: latitude,
longitude, plume-top height in metres; pixels without a plume are simply absent or NaN).
A frame in which at least ``min_pixels`` pixels reach ``threshold_km`` (default 15 km, the
rule the Japan Meteorological Agency adopted after Hunga Tonga) declares an eruption:

* ``onset`` = ``peak_time`` = ``declared`` = the frame time (the flag is raised on the
  first frame; it is not revised: later frames only re-arm the detector);
* ``amplitude`` = the ``min_pixels``-th highest height in km (a robust plume-top height:
  a few hot or noisy pixels cannot make it);
* location = the median latitude/longitude of the pixels within ``core_km`` of that
  height (the overshooting top sits over the vent, before the plume drifts); longitudes
  are taken within 180 degrees of the first such pixel, so a plume across the antimeridian
  stays there, and the result is in [-180, 180).

After a flag the detector stays quiet until ``rearm_s`` of event time pass with no frame
above the threshold. Pure: no files, no clock; frames must come in time order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from detectors.base import Detection, FloatArray, PacketError, StationInfo
from detectors.geo import wrap_lon


class PlumeDetector:
    name = "plume_height"
    version = "1"

    def __init__(self, station: StationInfo, *, threshold_km: float = 15.0,
                 min_pixels: int = 4, core_km: float = 3.0, rearm_s: float = 6 * 3600.0
                 ) -> None:
        if threshold_km <= 0 or min_pixels < 1 or core_km < 0 or rearm_s < 0:
            raise ValueError(
                f"plume detector: threshold_km={threshold_km}, min_pixels={min_pixels}, "
                f"core_km={core_km}, rearm_s={rearm_s}: all must be positive "
                "(min_pixels >= 1)")
        self.station = station
        self.threshold_km = threshold_km
        self.min_pixels = min_pixels
        self.core_km = core_km
        self.rearm_s = rearm_s
        self.horizon_s = rearm_s  # what determines its state: the re-arm time
        self._last_t = -math.inf
        self._last_above = -math.inf
        self._armed = True

    def params(self) -> dict[str, Any]:
        return {"threshold_km": self.threshold_km, "min_pixels": self.min_pixels,
                "core_km": self.core_km, "rearm_s": self.rearm_s}

    def feed_frame(self, t: float, lat: FloatArray, lon: FloatArray,
                   height_m: FloatArray) -> list[Detection]:
        if not math.isfinite(t):  # nan passed the order check and made a nan detection
            raise PacketError(f"plume frame time {t!r} is not finite")
        if t <= self._last_t:
            raise PacketError(f"plume frame at {t} is not after the previous frame at "
                              f"{self._last_t}")
        if not (lat.shape == lon.shape == height_m.shape):
            raise PacketError(f"plume frame at {t}: lat {lat.shape}, lon {lon.shape} and "
                              f"height {height_m.shape} differ in shape")
        off = (np.abs(lat) > 90.0) | (np.abs(lon) > 360.0)
        if off.any():  # a detection at lat 95 was made from them
            i = int(np.flatnonzero(off)[0])
            raise PacketError(f"plume frame at {t}: pixel {i} at lat {float(lat[i])!r}, lon "
                              f"{float(lon[i])!r} is not on the globe")
        self._last_t = t
        ok = np.isfinite(height_m) & np.isfinite(lat) & np.isfinite(lon)
        h_km = height_m[ok] / 1000.0
        above = h_km >= self.threshold_km
        if int(above.sum()) < self.min_pixels:
            if not self._armed and t - self._last_above >= self.rearm_s:
                self._armed = True
            return []
        self._last_above = t
        if not self._armed:
            return []
        self._armed = False
        order = np.sort(h_km)[::-1]
        robust_top = float(order[self.min_pixels - 1])
        core = h_km >= robust_top - self.core_km
        plat = float(np.median(lat[ok][core]))
        core_lon = lon[ok][core]
        # unwrapped around the first core pixel (179.9 and -179.9 are 0.2 degrees apart)
        unwrapped = core_lon - 360.0 * np.round((core_lon - core_lon[0]) / 360.0)
        plon = wrap_lon(float(np.median(unwrapped)))
        return [Detection(
            station_id=self.station.station_id, kind="plume", detector=self.name,
            detector_version=self.version, onset=t, peak_time=t, amplitude=robust_top,
            units="km", declared=t, lat=plat, lon=plon, params=self.params(),
            extra={"pixels_above": int(above.sum()), "max_km": float(order[0])},
        )]


def plume_reference(frames: list[tuple[float, FloatArray, FloatArray, FloatArray]],
                    station: StationInfo, **params: Any) -> list[Detection]:
    """Slow, obvious reference of the same rule over a whole sequence of frames (time,
    lat, lon, height in m): plain Python lists, ``sorted`` and ``statistics.median`` (the
    tests compare it with :class:`PlumeDetector`)."""
    import statistics

    p = {"threshold_km": 15.0, "min_pixels": 4, "core_km": 3.0, "rearm_s": 6 * 3600.0,
         **params}
    out: list[Detection] = []
    armed, last_above = True, -math.inf
    for t, lat, lon, height in frames:
        pix = [(la, lo, h / 1000.0) for la, lo, h in zip(lat.tolist(), lon.tolist(),
                                                         height.tolist(), strict=True)
               if math.isfinite(la) and math.isfinite(lo) and math.isfinite(h)]
        n_above = sum(1 for _, _, h in pix if h >= p["threshold_km"])
        if n_above < p["min_pixels"]:
            if not armed and t - last_above >= p["rearm_s"]:
                armed = True
            continue
        last_above = t
        if not armed:
            continue
        armed = False
        heights = sorted((h for _, _, h in pix), reverse=True)
        top = heights[p["min_pixels"] - 1]
        core = [(la, lo) for la, lo, h in pix if h >= top - p["core_km"]]
        lon0 = core[0][1]
        lons = [lo - 360.0 * round((lo - lon0) / 360.0) for _, lo in core]
        out.append(Detection(
            station_id=station.station_id, kind="plume", detector="plume_height",
            detector_version="1", onset=t, peak_time=t, amplitude=top, units="km",
            declared=t, lat=statistics.median(la for la, _ in core),
            lon=wrap_lon(statistics.median(lons)), params=dict(p),
            extra={"pixels_above": n_above, "max_km": heights[0]}))
    return out
