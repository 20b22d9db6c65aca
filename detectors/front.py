"""Locate a moving pressure front: source latitude, longitude, origin time and speed.

Each pick says the front reached station ``i`` at ``onset_i``. The model is
``onset_i = t0 + dist(source, station_i) / v`` with great-circle distances. For a given
source the model is linear in (t0, slowness), so the solver grid-searches the source over
the whole globe (coarse to fine) and fits (t0, slowness) at every node in closed form,
with one robust re-weighting (picks further than ``cutoff_s`` from the first fit get no
weight). The best node is then cleaned by iterative outlier rejection (a residual beyond
``max(3 * 1.4826 * MAD, min_cutoff_s)`` is rejected) and solved again.

How well the picks fix the source is ``FrontSolution.error_km``: the farthest edge of the
95 % confidence region of the position, searched along rays from the solution. A network of
small aperture far from the source (a dense grid 300 km away) fixes the front's direction,
not its distance: its region has no edge within ``ERROR_SEARCH_KM`` and the bound is inf.

Deterministic: picks are sorted by station id first, so any order of the same set gives the
same solution. One pick per station (the earliest) is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

# np.median imports numpy.ma on its first call (~10 ms, on a fresh worker's first incident)
import numpy.ma  # noqa: F401

from detectors.base import FloatArray, StationInfo
from detectors.geo import great_circle_km


class Pick(Protocol):
    """Anything with a station position and an onset time (a detection, a FrontPick)."""

    @property
    def station_id(self) -> str: ...
    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def onset(self) -> float: ...


@dataclass(frozen=True)
class FrontPick:
    station_id: str
    lat: float
    lon: float
    onset: float


@dataclass(frozen=True)
class FrontSolution:
    lat: float
    lon: float
    origin_time: float
    speed_m_s: float
    n_used: int
    used: tuple[str, ...]
    rejected: tuple[str, ...]
    rms_s: float
    #: 95 % bound on the distance (km) of the source from (lat, lon); inf: not bounded
    #: within ``ERROR_SEARCH_KM`` (a network of small aperture far from the source)
    error_km: float = math.inf

    def predicted(self, lat: float, lon: float) -> float:
        return self.origin_time + float(great_circle_km(self.lat, self.lon, lat, lon)) * (
            1000.0 / self.speed_m_s)


def _grid(lat_c: float, lon_c: float, half: float, step: float) -> tuple[FloatArray, FloatArray]:
    lats = np.arange(max(-90.0, lat_c - half), min(90.0, lat_c + half) + step / 2, step)
    lons = np.arange(lon_c - half, lon_c + half + step / 2, step)
    la, lo = np.meshgrid(lats, lons, indexing="ij")
    lo = (lo + 180.0) % 360.0 - 180.0
    return la.ravel(), lo.ravel()


def _patch(lat_c: float, lon_c: float, half: float, step: float
           ) -> tuple[FloatArray, FloatArray]:
    """Nodes every ``step`` degrees of arc north-south and east-west of (``lat_c``,
    ``lon_c``), out to ``half`` degrees each way: the same span in km at any latitude,
    over a pole too. A patch in degrees of longitude narrowed with the latitude (3 degrees
    at 87 N are 17 km) and stopped at the pole: sources above about 85 degrees came out
    tens of km off."""
    k = np.radians(np.arange(-half, half + step / 2, step))
    north, east = np.meshgrid(k, k, indexing="ij")
    return _toward(lat_c, lon_c, np.hypot(north, east).ravel(),
                   np.arctan2(east, north).ravel())


def _toward(lat_c: float, lon_c: float, d: FloatArray, az: FloatArray
            ) -> tuple[FloatArray, FloatArray]:
    """The points ``d`` radians of arc from (``lat_c``, ``lon_c``) at azimuths ``az``
    (radians east of north)."""
    lat1 = math.radians(min(max(lat_c, -89.9999), 89.9999))  # the azimuths need a north
    sin_lat2 = np.clip(math.sin(lat1) * np.cos(d) + math.cos(lat1) * np.sin(d) * np.cos(az),
                       -1.0, 1.0)
    dlon = np.arctan2(np.sin(az) * np.sin(d) * math.cos(lat1),
                      np.cos(d) - math.sin(lat1) * sin_lat2)
    lon = (lon_c + np.degrees(dlon) + 180.0) % 360.0 - 180.0
    return np.degrees(np.arcsin(sin_lat2)), lon


#: how far (km) :func:`source_error_km` looks for the edge of the confidence region
ERROR_SEARCH_KM = 8000.0
_ERROR_AZ = np.radians(np.arange(0.0, 360.0, 10.0))
_ERROR_KM = np.geomspace(2.0, ERROR_SEARCH_KM, 60)


def _source_error_km(la: FloatArray, lo: FloatArray, yy: FloatArray, lat_b: float,
                     lon_b: float, smin: float, smax: float, cutoff: float, prior: _Prior,
                     pick_sigma_s: float) -> float:
    """How far the source may be from (``lat_b``, ``lon_b``): the largest distance, over
    36 azimuths, to the edge of the 95 % confidence region of the position (misfit within
    5.99 ``pick_sigma_s``^2 of the best, origin time and speed fitted at every node:
    chi-square of two degrees of freedom), or inf when some azimuth has no edge within
    ``ERROR_SEARCH_KM``: the picks fix the front's direction, not the source's distance."""
    az = np.repeat(_ERROR_AZ, len(_ERROR_KM))
    d = np.tile(_ERROR_KM, len(_ERROR_AZ)) / 6371.0088
    ring = _toward(lat_b, lon_b, d, az)
    nodes = (np.concatenate([[lat_b], ring[0]]), np.concatenate([[lon_b], ring[1]]))
    _, _, _, cost = _search(la, lo, yy, nodes, smin, smax, cutoff, prior)
    out = (cost[1:] > cost[0] + 5.99 * pick_sigma_s ** 2).reshape(len(_ERROR_AZ), -1)
    if not out.any(axis=1).all():
        return math.inf
    return float(_ERROR_KM[out.argmax(axis=1)].max())


@dataclass(frozen=True)
class _Prior:
    """Gaussian priors in the units of the pick-time misfit: on slowness, and optionally on
    the source position (an eruption plume seen from space)."""

    s0: float
    weight: float  # (pick_sigma / slowness_sigma)^2
    lat: float = math.nan
    lon: float = math.nan
    loc_weight: float = 0.0  # (pick_sigma / position_sigma_km)^2, per km^2

    def position_cost(self, lat: FloatArray, lon: FloatArray) -> FloatArray | float:
        if self.loc_weight == 0.0:
            return 0.0
        return self.loc_weight * great_circle_km(lat, lon, self.lat, self.lon) ** 2


def _fit(dist_m: FloatArray, y: FloatArray, w: FloatArray, smin: float, smax: float,
         prior: _Prior) -> tuple[FloatArray, FloatArray]:
    """Weighted LSQ of y = t0 + s*d per column (node) with a slowness prior, s clamped.
    Arrays are (station, node): the sums run down the few stations, across all nodes at
    once (a sum along a short row costs numpy ten times as much per element)."""
    sw = w.sum(axis=0)
    sd = (w * dist_m).sum(axis=0)
    sy = (w * y).sum(axis=0)
    sdd = (w * dist_m * dist_m).sum(axis=0) + prior.weight
    sdy = (w * dist_m * y).sum(axis=0) + prior.weight * prior.s0
    den = sw * sdd - sd * sd
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(np.abs(den) > 1e-30, (sw * sdy - sd * sy) / den, prior.s0)
    s = np.clip(np.nan_to_num(s, nan=smin), smin, smax)
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = np.where(sw > 0, (sy - s * sd) / sw, 0.0)
    return t0, s


@lru_cache(maxsize=1)
def _coarse_grid() -> tuple[FloatArray, FloatArray]:
    """The global search's coarse grid: every 2 degrees, the poles left out."""
    g = _grid(0.0, 0.0, 180.0, 2.0)
    keep = np.abs(g[0]) <= 89.0
    return g[0][keep], g[1][keep]


@lru_cache(maxsize=256)
def _coarse_km(lat: float, lon: float) -> FloatArray:
    """km from every node of the coarse grid to a station (the stations stay put: each
    new set of picks would compute them again; shared, do not modify)."""
    g = _coarse_grid()
    return great_circle_km(g[0], g[1], lat, lon)


def _search(lat_s: FloatArray, lon_s: FloatArray, y: FloatArray,
            nodes: tuple[FloatArray, FloatArray], smin: float, smax: float, cutoff: float,
            prior: _Prior, coarse: bool = False
            ) -> tuple[int, FloatArray, FloatArray, FloatArray]:
    """The best node; ``coarse``: ``nodes`` begin with the coarse grid."""
    if coarse:
        n = len(_coarse_grid()[0])
        d = np.concatenate([
            np.stack([_coarse_km(float(a), float(b)) for a, b in zip(lat_s, lon_s,
                                                                    strict=True)]),
            great_circle_km(nodes[0][None, n:], nodes[1][None, n:], lat_s[:, None],
                            lon_s[:, None])], axis=1) * 1000.0
    else:
        d = great_circle_km(nodes[0][None, :], nodes[1][None, :], lat_s[:, None],
                            lon_s[:, None]) * 1000.0  # (station, node)
    y = y[:, None]
    w = np.ones_like(d)
    t0, s = _fit(d, y, w, smin, smax, prior)
    r = y - (t0 + s * d)
    w = (np.abs(r) <= cutoff).astype(float)
    w[:, w.sum(axis=0) < 2] = 1.0
    t0, s = _fit(d, y, w, smin, smax, prior)
    r = y - (t0 + s * d)
    cost = (np.minimum(r * r, cutoff * cutoff).sum(axis=0) + prior.weight * (s - prior.s0) ** 2
            + prior.position_cost(nodes[0], nodes[1]))
    best = int(np.argmin(cost))
    return best, t0, s, cost


def _global_search(la: FloatArray, lo: FloatArray, yy: FloatArray, smin: float, smax: float,
                   cutoff: float, prior: _Prior) -> tuple[float, float, float, float]:
    """Coarse global grid plus a dense patch around the first-arriving station, then the
    best few basins refined coarse-to-fine; the best refined node wins."""
    g = _coarse_grid()
    first = int(np.argmin(yy))
    patches = [_patch(float(la[first]), float(lo[first]), 6.0, 0.25)]
    if prior.loc_weight > 0.0:
        patches.append(_patch(prior.lat, prior.lon, 2.0, 0.1))
    nodes = (np.concatenate([g[0], *(q[0] for q in patches)]),
             np.concatenate([g[1], *(q[1] for q in patches)]))
    _, _, _, cost = _search(la, lo, yy, nodes, smin, smax, cutoff, prior, coarse=True)
    # the best node, then the best more than 500 km from every one taken, up to four
    starts: list[tuple[float, float]] = []
    ranked = np.argsort(cost, kind="stable")
    far = np.ones(len(cost), dtype=bool)
    while len(starts) < 4:
        left = ranked[far[ranked]]
        if not len(left):
            break
        cand = (float(nodes[0][left[0]]), float(nodes[1][left[0]]))
        starts.append(cand)
        far &= great_circle_km(cand[0], cand[1], nodes[0], nodes[1]) > 500.0
    best: tuple[float, float, float, float, float] | None = None
    for lat_b, lon_b in starts:
        for half, step in ((3.0, 0.2), (0.3, 0.02), (0.03, 0.002)):
            sub = _patch(lat_b, lon_b, half, step)
            i, t0s, ss, c = _search(la, lo, yy, sub, smin, smax, cutoff, prior)
            lat_b, lon_b = float(sub[0][i]), float(sub[1][i])
        if best is None or float(c[i]) < best[0]:
            best = (float(c[i]), lat_b, lon_b, float(t0s[i]), float(ss[i]))
    assert best is not None
    return best[1], best[2], best[3], best[4]


# the front's speed is kept within these (m/s) unless a caller asks for others
SPEED_BOUNDS = (250.0, 380.0)


#: stations closer than this (km) are one site for ``min_stations``: sensors at one site
#: (channels, heights, co-located instruments) add no constraint on the source. Small:
#: a volcano observatory's network a few km around the vent must still count (at 20 km a
#: network of 12 barometers within 12 km never located a front)
SITE_KM = 1.0


def distinct_sites(lat: FloatArray, lon: FloatArray, site_km: float = SITE_KM) -> int:
    """How many sites the stations at ``lat``, ``lon`` are at: each station farther than
    ``site_km`` from the first station of every site before it starts a site."""
    heads: list[int] = []
    for i in range(len(lat)):
        if not heads or bool(np.all(great_circle_km(
                lat[i], lon[i], lat[heads], lon[heads]) > site_km)):
            heads.append(i)
    return len(heads)


def locate_front(picks: Iterable[Pick], *, min_stations: int = 4,
                 speed_bounds: tuple[float, float] = SPEED_BOUNDS,
                 speed_prior: float = 315.0, speed_prior_sigma: float = 20.0,
                 pick_sigma_s: float = 60.0,
                 cutoff_s: float = 300.0, min_cutoff_s: float = 120.0,
                 source_prior: tuple[float, float, float] | None = None,
                 ) -> FrontSolution | None:
    """The source of a front from its picks, or None with fewer than ``min_stations``
    sites among them (stations within ``SITE_KM`` of one another count once: four ids at
    two sites gave a confident solution 10,000 km from the source).

    The Lamb wave's speed is known to a few per cent (310-340 m/s), so the speed carries a
    Gaussian prior (``speed_prior`` +- ``speed_prior_sigma``) against picks of
    ``pick_sigma_s`` accuracy: four picks then over-determine (lat, lon, t0) and the
    antipodal or plane-wave mirror solutions of a small network lose.

    ``source_prior`` = (lat, lon, sigma_km) adds a Gaussian prior on the source position:
    an eruption plume located by a geostationary satellite. It matters for the first
    solutions, from a few nearby stations in a line (an island arc), whose geometry leaves
    the position along one direction weakly constrained; many stations outweigh it.
    """
    first: dict[str, Pick] = {}
    for p in sorted(picks, key=lambda p: (p.station_id, p.onset)):
        if math.isfinite(p.lat) and math.isfinite(p.lon) and math.isfinite(p.onset):
            first.setdefault(p.station_id, p)
    ids = sorted(first)
    if len(ids) < min_stations:
        return None
    lat_s = np.array([first[i].lat for i in ids])
    lon_s = np.array([first[i].lon for i in ids])
    if distinct_sites(lat_s, lon_s) < min_stations:
        return None
    ref = min(first[i].onset for i in ids)
    y = np.array([first[i].onset - ref for i in ids])
    smin, smax = 1.0 / speed_bounds[1], 1.0 / speed_bounds[0]
    s0 = 1.0 / speed_prior
    sigma_s = s0 * speed_prior_sigma / speed_prior
    if source_prior is None:
        prior = _Prior(s0, (pick_sigma_s / sigma_s) ** 2)
    else:
        plat, plon, psig = source_prior
        prior = _Prior(s0, (pick_sigma_s / sigma_s) ** 2, plat, plon, (pick_sigma_s / psig) ** 2)

    keep = np.ones(len(ids), dtype=bool)
    for _ in range(5):
        la, lo, yy = lat_s[keep], lon_s[keep], y[keep]
        lat_b, lon_b, t0, s = _global_search(la, lo, yy, smin, smax, cutoff_s, prior)
        d_all = great_circle_km(lat_b, lon_b, lat_s, lon_s) * 1000.0
        r_all = y - (t0 + s * d_all)
        r_in = r_all[keep]
        mad = 1.4826 * float(np.median(np.abs(r_in - np.median(r_in))))
        limit = max(3.0 * mad, min_cutoff_s)
        new_keep = np.abs(r_all) <= limit
        if new_keep.sum() < min_stations or distinct_sites(
                lat_s[new_keep], lon_s[new_keep]) < min_stations:
            return None
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    used = tuple(i for i, k in zip(ids, keep, strict=True) if k)
    rejected = tuple(i for i, k in zip(ids, keep, strict=True) if not k)
    rms = float(np.sqrt(np.mean(r_all[keep] ** 2)))
    error = _source_error_km(lat_s[keep], lon_s[keep], y[keep], lat_b, lon_b, smin, smax,
                             cutoff_s, prior, pick_sigma_s)
    return FrontSolution(lat=round(lat_b, 4), lon=round(lon_b, 4), origin_time=ref + t0,
                         speed_m_s=1.0 / s, n_used=len(used), used=used, rejected=rejected,
                         rms_s=rms, error_km=error)


def forecast_eta(solution: FrontSolution, stations: Iterable[StationInfo]
                 ) -> list[tuple[str, float]]:
    """Lamb-wave arrival time at each station, sorted by ETA."""
    st: Sequence[StationInfo] = list(stations)
    if not st:
        return []
    d = great_circle_km(solution.lat, solution.lon, np.array([s.lat for s in st]),
                        np.array([s.lon for s in st]))
    etas = solution.origin_time + d * 1000.0 / solution.speed_m_s
    return sorted(((s.station_id, float(e)) for s, e in zip(st, etas, strict=True)),
                  key=lambda x: (x[1], x[0]))


def picks_from(items: Iterable[Any]) -> list[FrontPick]:
    return [FrontPick(i.station_id, i.lat, i.lon, i.onset) for i in items]
