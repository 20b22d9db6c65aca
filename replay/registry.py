"""The station registry: who gets ETA forecasts (the package's stations + a registry file)."""

from __future__ import annotations

import csv
from pathlib import Path

from detectors.base import StationInfo
from replay.package import STATIONS_HEADER, PackageError, ReplayPackage


def read_registry(path: Path) -> list[StationInfo]:
    """A CSV with at least ``station_id,kind,lat,lon`` (the stations.csv header works)."""
    out = []
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


def build_registry(pkg: ReplayPackage | None, extra: Path | None) -> list[StationInfo]:
    stations: dict[str, StationInfo] = {}
    if extra is not None:
        for s in read_registry(extra):
            stations[s.station_id] = s
    if pkg is not None:
        for s in pkg.station_infos():
            stations[s.station_id] = s
    return sorted(stations.values(), key=lambda s: s.station_id)


def write_registry(stations: list[StationInfo], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(STATIONS_HEADER)
        for s in stations:
            w.writerow([s.station_id, s.kind, s.lat, s.lon, s.elevation_m, s.units, "", ""])
