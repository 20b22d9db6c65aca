"""Gridded products in replay packages (format ``grid_index``).

``file`` points at a CSV index with the header ``time,file``: the frame's event time
(ISO 8601 UTC) and a GeoTIFF path relative to the index. Each GeoTIFF is read with
rioxarray into xarray; its pixel centres are projected to latitude/longitude with pyproj
using the file's own CRS (the Himawari plume products are in the geostationary projection,
central meridian 140.7 E), and the valid (non-NaN) pixels become one :class:`GridFrame`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detectors.base import StationInfo
from streams.schemas import GridFrame, SchemaError, parse_time


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
    if header is None or [h.strip() for h in header[:2]] != ["time", "file"]:
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
        rows.append((t, path))
    rows.sort()
    return rows


def read_frame(path: Path, t: float, info: StationInfo, seq: int = 0) -> GridFrame:
    import rioxarray
    from pyproj import Transformer

    try:
        da = rioxarray.open_rasterio(path, masked=True)
    except Exception as exc:  # rasterio raises several types for a bad file
        raise GridError(f"{path}: not readable as GeoTIFF: {exc}") from exc
    band = np.asarray(np.asarray(da)[0], dtype=np.float64)
    rows, cols = np.nonzero(np.isfinite(band))
    xs = np.asarray(da.x.values)[cols]  # type: ignore[union-attr]
    ys = np.asarray(da.y.values)[rows]  # type: ignore[union-attr]
    crs = da.rio.crs  # type: ignore[union-attr]
    if crs is None:
        raise GridError(f"{path}: no CRS; cannot place the pixels")
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_geo.transform(xs, ys)

    def f32(a: object) -> np.ndarray:
        # the wire carries float32: round here so in-process and Kafka runs see equal values
        return np.asarray(a, dtype=np.float32).astype(np.float64)

    return GridFrame(
        station_id=info.station_id, kind=info.kind, time=t, lat=f32(lat),
        lon=f32(lon), values=f32(band[rows, cols]), units=info.units or "m",
        shape=(int(band.shape[0]), int(band.shape[1])), source=f"file:{path.name}", seq=seq,
        product_lat=info.lat, product_lon=info.lon,
    )


def read_frames(index: Path, root: Path, info: StationInfo, start: float,
                end: float) -> list[GridFrame]:
    return [read_frame(path, t, info, seq)
            for seq, (t, path) in enumerate(read_index(index, root)) if start <= t <= end]
