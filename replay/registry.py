"""The station registry: who gets ETA forecasts (the package's stations + a registry file).

A registry is a CSV with at least ``station_id,kind,lat,lon`` (the stations.csv header
works); an optional ``gain`` column gives seismic channels' gains (counts per metre of
displacement at the picker's band centre), which the workers need for magnitudes.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from detectors.base import StationInfo
from replay.package import STATIONS_HEADER, PackageError, ReplayPackage, csv_rows, number

T = TypeVar("T")


class RegistryError(PackageError):
    """A station registry that cannot be read (a PackageError: the same checks and
    messages, but it is not a package that is bad)."""


def _registry_errors(read: Callable[[Path], T]) -> Callable[[Path], T]:
    """``read`` raising :class:`RegistryError` for the PackageError of a bad file."""

    @functools.wraps(read)
    def wrapped(path: Path) -> T:
        try:
            return read(path)
        except RegistryError:
            raise
        except PackageError as exc:
            raise RegistryError(str(exc)) from None

    return wrapped


def _rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The registry's header and its rows (line number, column -> text); PackageError
    naming the file and line for one that is not UTF-8, not CSV (:func:`csv_rows`), or has
    another number of columns than the header (a short row's missing values were None: a
    TypeError)."""
    reader = csv_rows(path)
    header = [h.strip() for h in next(reader, None) or []]

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise PackageError(f"{path}:{lineno}: {len(row)} columns, the header has "
                                   f"{len(header)} ({','.join(header)})")
            yield lineno, dict(zip(header, row, strict=True))

    return header, rows()


@_registry_errors
def read_registry(path: Path) -> list[StationInfo]:
    """A CSV with at least ``station_id,kind,lat,lon`` (the stations.csv header works)."""
    out = []
    if not path.is_file():
        raise PackageError(f"{path}: no such station registry")
    header, rows = _rows(path)
    missing = {"station_id", "kind", "lat", "lon"} - set(header)
    if missing:
        raise PackageError(f"{path}:1: registry header lacks {sorted(missing)}")
    for lineno, row in rows:
        try:
            out.append(StationInfo(row["station_id"], row["kind"], number(row["lat"]),
                                   number(row["lon"]), number(row.get("elevation_m") or "0"),
                                   row.get("units") or ""))
        except ValueError as exc:
            raise PackageError(f"{path}:{lineno}: {exc}") from None
    return out


@_registry_errors
def read_gains(path: Path) -> dict[str, float]:
    """The registry's ``gain`` column (rows that have one), station id -> counts per m."""
    out: dict[str, float] = {}
    header, rows = _rows(path)
    if "gain" not in header:
        return out
    for lineno, row in rows:
        text = (row.get("gain") or "").strip()
        if not text:
            continue
        try:
            g = number(text)
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
