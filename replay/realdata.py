"""Replay packages built at test time from the real recordings in ../shared/data.

Nothing is copied into the repository: the packages are written to pytest's tmp folders.
Coordinates are facts from the PROVENANCE.md files.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

HEADER = "station_id,kind,lat,lon,elevation_m,units,file,format\n"

TONGA_EVENT = """[event]
id = "tonga2022-real"
title = "Hunga Tonga-Hunga Ha'apai 2022: real barometers (AGBOM Tonga, II.MSVF Fiji), MSVF LHZ"
start = "2022-01-15T00:00:00Z"
end = "2022-01-16T00:00:00Z"

[truth]
origin_time = "2022-01-15T04:14:45Z"
lat = -20.546
lon = -175.390
"""

TOHOKU_EVENT = """[event]
id = "tohoku2011-real"
title = "Tohoku-oki 2011: real NDBC DART records and the Nuku'alofa tide gauge"
start = "2011-03-01T00:00:00Z"
end = "2011-03-12T06:00:00Z"

[truth]
origin_time = "2011-03-11T05:46:24Z"
lat = 38.297
lon = 142.373
"""

# DART positions from tohoku2011/dart_residual_ptha/dart_locations.csv (PROVENANCE.md)
TOHOKU_ORIGIN = 1299822384.0  # 2011-03-11T05:46:24Z (USGS)

DARTS = {"21401": (42.617, 152.583), "21413": (30.554, 152.131),
         "21418": (38.670, 148.760), "21419": (44.398, 155.698)}


def _csv_two_columns(src: Path, dst: Path, time_col: str, value_col: str) -> None:
    with src.open(newline="") as fin, dst.open("w", newline="") as fout:
        w = csv.writer(fout)
        w.writerow(["time", "value"])
        for row in csv.DictReader(fin):
            t = row[time_col].strip()
            if "T" not in t:
                t = t.replace(" ", "T")
            if not t.endswith("Z"):
                t += "Z"
            w.writerow([t, row[value_col]])


def build_tonga(shared: Path, out: Path) -> Path:
    baro = shared / "tonga2022" / "barometer"
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "event.toml").write_text(
        TONGA_EVENT + '\n[seismic]\ninventory = "data/RESP.II.MSVF.10.LHZ"\n')
    _csv_two_columns(baro / "tonga_bp_AGBOM_1min_hPa.csv", out / "data" / "agbom.csv",
                     "time_utc", "pressure_hPa")
    shutil.copy(baro / "Tonga_2022-01-15_II.MSVF.00.LDI.mseed", out / "data" / "msvf.mseed")
    seis = shared / "tonga2022" / "seismic"
    shutil.copy(seis / "Tonga_2022-01-15_II.MSVF.10.LHZ.mseed", out / "data" / "msvf_lhz.mseed")
    shutil.copy(seis / "RESP.II.MSVF.10.LHZ", out / "data" / "RESP.II.MSVF.10.LHZ")
    (out / "stations.csv").write_text(
        HEADER
        + "AGBOM.TONGA,barometer,-21.14,-175.18,5,hPa,data/agbom.csv,csv\n"
        + "II.MSVF.00.LDI,barometer,-17.745,178.053,800,counts,data/msvf.mseed,mseed\n"
        + "II.MSVF.10.LHZ,seismic,-17.745,178.053,800,counts,data/msvf_lhz.mseed,mseed\n")
    return out


def build_tohoku(shared: Path, out: Path) -> Path:
    root = shared / "tohoku2011"
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "event.toml").write_text(TOHOKU_EVENT)
    rows = []
    for dart, (lat, lon) in DARTS.items():
        shutil.copy(root / "dart_ndbc_raw" / f"{dart}.txt", out / "data" / f"{dart}.txt")
        rows.append(f"{dart},bottom_pressure,{lat},{lon},0,m,data/{dart}.txt,ndbc_dart\n")
    _csv_two_columns(root / "tide_gauge" / "nukualofa_tohoku_tsunami_detided.csv",
                     out / "data" / "nkfa.csv", "time", "height")
    rows.append("nkfa,tide_gauge,-21.138,-175.1815,0,m,data/nkfa.csv,csv\n")
    (out / "stations.csv").write_text(HEADER + "".join(rows))
    return out


def build_tonga_plume(shared: Path, out: Path) -> Path:
    """The Himawari-8 plume-top height frames (04:26-12:56 UTC) as a grid_index package."""
    frames = sorted((shared / "tonga2022" / "geostationary_derived" / "Height_Out").glob(
        "height_*.tif"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "event.toml").write_text(TONGA_EVENT.replace("tonga2022-real", "tonga2022-plume"))
    # copied in like the other builders' files (52 frames, 1.1 MB): a package's frames
    # must be inside it
    (out / "frames").mkdir(exist_ok=True)
    with (out / "plume_index.csv").open("w") as fh:
        fh.write("time,file\n")
        for f in frames:
            shutil.copy(f, out / "frames" / f.name)
            _, day, hms = f.stem.split("_")
            fh.write(f"{day[:4]}-{day[4:6]}-{day[6:]}T{hms[:2]}:{hms[2:4]}:{hms[4:]}Z,"
                     f"frames/{f.name}\n")
    # the 'station' of a geostationary product is its sub-satellite point
    (out / "stations.csv").write_text(
        HEADER + "HIMAWARI8.PLUME,plume,0.0,140.7,35785863,m,plume_index.csv,grid_index\n")
    return out
