"""The station registry: who gets ETA forecasts (the package's stations + a registry file).

A registry is a CSV with at least ``station_id,kind,lat,lon`` (the stations.csv header
works); an optional ``gain`` column gives seismic channels' gains (counts per metre of
displacement at the picker's band centre), which the workers need for magnitudes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from detectors.base import StationInfo
from replay.package import STATIONS_HEADER, PackageError, ReplayPackage


def read_registry(path: Path) -> list[StationInfo]:
    """A CSV with at least ``station_id,kind,lat,lon`` (the stations.csv header works)."""
    out = []
    if not path.is_file():
        raise PackageError(f"{path}: no such station registry")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"station_id", "kind", "lat", "lon"} - set(reader.fieldnames or [])
        if missing:
            raise PackageError(f"{path}:1: registry header lacks {sorted(missing)}")
        for lineno, row in enumerate(reader, start=2):
            try:
                out.append(StationInfo(row["station_id"], row["kind"], float(row["lat"]),
                                       float(row["lon"]), float(row.get("elevation_m") or 0),
                                       row.get("units") or ""))
            except ValueError as exc:
                raise PackageError(f"{path}:{lineno}: {exc}") from None
    return out


def read_gains(path: Path) -> dict[str, float]:
    """The registry's ``gain`` column (rows that have one), station id -> counts per m."""
    out: dict[str, float] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if "gain" not in (reader.fieldnames or []):
            return out
        for lineno, row in enumerate(reader, start=2):
            text = (row.get("gain") or "").strip()
            if not text:
                continue
            try:
                g = float(text)
            except ValueError:
                g = math.nan
            if not (g > 0 and math.isfinite(g)):
                raise PackageError(f"{path}:{lineno}: gain {text!r} of {row['station_id']} is "
                                   "not a positive number (counts per metre)")
            out[row["station_id"]] = g
    return out


def worker_gains(registry: Path | None, inventory: Path | None, at: float
                 ) -> dict[str, float]:
    """A worker's seismic gains: the inventory's responses at time ``at`` (StationXML or
    RESP), overridden by the registry's gain column."""
    gains: dict[str, float] = {}
    if inventory is not None:
        from replay.package import read_channels

        chans = read_channels(inventory, at, f"--inventory {inventory}")
        gains = {sid: ch.gain_m for sid, ch in chans.items() if math.isfinite(ch.gain_m)}
    if registry is not None:
        gains |= read_gains(registry)
    return gains


def build_registry(pkg: ReplayPackage | None, extra: Path | None) -> list[StationInfo]:
    stations: dict[str, StationInfo] = {}
    if extra is not None:
        for s in read_registry(extra):
            stations[s.station_id] = s
    if pkg is not None:
        for s in pkg.station_infos():
            stations[s.station_id] = s
    return sorted(stations.values(), key=lambda s: s.station_id)


def write_registry(stations: list[StationInfo], path: Path,
                   gains: dict[str, float] | None = None) -> None:
    gains = gains or {}
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*STATIONS_HEADER, "gain"])
        for s in stations:
            g = gains.get(s.station_id)
            w.writerow([s.station_id, s.kind, s.lat, s.lon, s.elevation_m, s.units, "", "",
                        "" if g is None else repr(g)])
