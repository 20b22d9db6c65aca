"""Gridded products in replay packages (format ``grid_index``).

``file`` points at a CSV index with the header ``time,file``: the frame's event time
(ISO 8601 UTC) and a GeoTIFF path relative to the index. Each GeoTIFF is read with
rioxarray into xarray; its pixel centres are projected to latitude/longitude with pyproj
using the file's own CRS (the Himawari plume products are in the geostationary projection,
central meridian 140.7 E), and the valid (non-NaN) pixels become one :class:`GridFrame`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from detectors.base import StationInfo
from streams.schemas import GridFrame, SchemaError, iso, parse_time


class GridError(ValueError):
    """A grid index or one of its frames is malformed (names file, line, value)."""


def read_index(index: Path, root: Path) -> list[tuple[float, Path]]:
    """The frames of the index ``index`` of the package at ``root``: (event time, GeoTIFF
    path), in time order. Each path must stay inside the package."""
    from replay.package import csv_rows

    rows = []
    # (read as the package's other CSV files are: a NUL, a field over csv's limit or
    # Latin-1 bytes raised csv.Error, ValueError or UnicodeDecodeError past the loader)
    reader = csv_rows(index)
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["time", "file"]:
        raise GridError(f"{index}:1: header {header} is not ['time', 'file']")
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 2:
            raise GridError(f"{index}:{lineno}: {len(row)} columns, expected 2 (time, file)")
        try:
            t = parse_time(row[0].strip(), "time")
        except SchemaError as exc:
            raise GridError(f"{index}:{lineno}: {exc}") from None
        name = row[1].strip()
        if "\0" in name:
            raise GridError(f"{index}:{lineno}: frame file {name!r} has a NUL character")
        # relative to the index, and inside the package: '../' read any file of the user's
        path = (index.parent / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(root.resolve()):
            raise GridError(f"{index}:{lineno}: frame file {name!r} is outside the package "
                            f"{root} (files are given relative to the index)")
        if not path.is_file():
            raise GridError(f"{index}:{lineno}: frame file {row[1]!r} does not exist")
        rows.append((t, path, lineno))
    rows.sort()
    for (t, _, a), (u, _, b) in itertools.pairwise(rows):
        if u - t <= 1e-6:  # which of the two frames is the product's, no one can tell
            raise GridError(f"{index}: lines {a} and {b} give {iso(t)} two frames; one frame "
                            "per instant")
    return [(t, path) for t, path, _ in rows]


def read_frame(path: Path, t: float, info: StationInfo, seq: int = 0) -> GridFrame:
    import rioxarray
    from pyproj import Transformer

    try:
        da = rioxarray.open_rasterio(path, masked=True)
    except Exception as exc:  # rasterio raises several types for a bad file
        raise GridError(f"{path}: not readable as GeoTIFF: {exc}") from exc
    band = np.asarray(np.asarray(da)[0], dtype=np.float64)
    rows, cols = np.nonzero(~np.isnan(band))  # NaN (nodata) is a missing pixel; inf is not
    xs = np.asarray(da.x.values)[cols]  # type: ignore[union-attr]
    ys = np.asarray(da.y.values)[rows]  # type: ignore[union-attr]
    crs = da.rio.crs  # type: ignore[union-attr]
    if crs is None:
        raise GridError(f"{path}: no CRS; cannot place the pixels")
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = (np.asarray(a, dtype=np.float64) for a in to_geo.transform(xs, ys))
    values = band[rows, cols]

    def pixel(i: int) -> str:
        return f"pixel (row {int(rows[i])}, column {int(cols[i])})"

    # what the detector would refuse, named here: the whole frame was dead-lettered later
    bad = np.flatnonzero(~(values >= 0) | np.isinf(values))
    if bad.size:  # an infinite one was dropped as missing; -50000 m loaded
        i = int(bad[0])
        raise GridError(f"{path}: {pixel(i)} is {float(values[i])!r}, not a height of 0 m "
                        f"or more (a missing pixel is the file's nodata or NaN; "
                        f"{bad.size} such pixels)")
    off = np.flatnonzero(~((np.abs(lat) <= 90.0) & (np.abs(lon) <= 360.0)))
    if off.size:  # off a geostationary disk (inf), or a grid past the pole
        i = int(off[0])
        raise GridError(f"{path}: {pixel(i)} at x {float(xs[i])!r}, y {float(ys[i])!r} of "
                        f"its CRS is at lat {float(lat[i])!r}, lon {float(lon[i])!r}: not on "
                        f"the globe ({off.size} such pixels with a value)")

    def f32(a: object) -> np.ndarray:
        # the wire carries float32: round here so in-process and Kafka runs see equal values
        return np.asarray(a, dtype=np.float32).astype(np.float64)

    return GridFrame(
        station_id=info.station_id, kind=info.kind, time=t, lat=f32(lat),
        lon=f32(lon), values=f32(values), units=info.units or "m",
        shape=(int(band.shape[0]), int(band.shape[1])), source=f"file:{path.name}", seq=seq,
        product_lat=info.lat, product_lon=info.lon,
    )


def read_frames(index: Path, root: Path, info: StationInfo, start: float,
                end: float) -> list[GridFrame]:
    return [read_frame(path, t, info, seq)
            for seq, (t, path) in enumerate(read_index(index, root)) if start <= t <= end]
