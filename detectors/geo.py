"""Great-circle geometry on a sphere of radius 6371.0 km (numpy-vectorised)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_KM = 6371.0

ArrayLike = float | npt.NDArray[np.float64]


def great_circle_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike,
                    lon2: ArrayLike) -> npt.NDArray[np.float64]:
    """Haversine distance in km; any argument may be an array (broadcast)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))),
                      dtype=np.float64)


def wrap_lon(lon: float) -> float:
    """``lon`` in [-180, 180) (unchanged when it already is)."""
    return lon if -180.0 <= lon < 180.0 else (lon + 180.0) % 360.0 - 180.0


def around(lat0: float, lon0: float, x_deg: npt.NDArray[np.float64],
           y_deg: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64],
                                                    npt.NDArray[np.float64]]:
    """The points at ``(x_deg, y_deg)`` of arc east and north of ``(lat0, lon0)`` in its
    azimuthal equidistant frame (the distance from the centre is exact): a search grid
    that keeps its shape at any latitude and crosses a pole. Longitudes are continuous
    with ``lon0`` (they may leave [-180, 180))."""
    p0, l0 = np.radians(lat0), np.radians(lon0)
    d = np.radians(np.hypot(x_deg, y_deg))
    az = np.arctan2(x_deg, y_deg)
    sin_lat = np.sin(p0) * np.cos(d) + np.cos(p0) * np.sin(d) * np.cos(az)
    lat = np.arcsin(np.clip(sin_lat, -1.0, 1.0))
    dlon = np.arctan2(np.sin(az) * np.sin(d) * np.cos(p0), np.cos(d) - np.sin(p0) * sin_lat)
    return np.degrees(lat), np.degrees(l0 + dlon)
