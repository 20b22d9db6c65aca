"""The built-in scenario generators write valid, deterministic replay packages."""

from __future__ import annotations

import csv
import hashlib
import math
import re
import tomllib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from replay.package import STATIONS_HEADER, load_package
from replay.scenario import (
    BUILTIN_PACKAGES,
    GENERATOR_VERSION,
    build_synthetic,
    build_tonga2022,
    ensure_builtin,
    lamb_pulse,
    read_sites,
)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ORIGIN = datetime.fromisoformat("2022-01-15T04:14:45+00:00").timestamp()
VOLCANO = (-20.546, -175.390)


def _t(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Independent of the generator's own distance function."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def _read(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["time", "value"], path
    stamps = [r[0] for r in rows[1:]]
    times = np.array([_t(s) for s in stamps])
    values = np.array([float(r[1]) for r in rows[1:]])
    return stamps, times, values


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tonga(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tonga2022(tmp_path_factory.mktemp("pkg") / "tonga2022")


def _stations(root: Path) -> list[dict[str, str]]:
    with (root / "stations.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ package structure


def test_same_seed_same_bytes_other_seed_other_bytes(tonga: Path, tmp_path: Path) -> None:
    again = build_tonga2022(tmp_path / "a")
    assert _digest(again) == _digest(tonga)
    other = _digest(build_tonga2022(tmp_path / "b", seed=7))
    assert other.keys() == _digest(tonga).keys()
    assert other["data/II.MSVF.csv"] != _digest(tonga)["data/II.MSVF.csv"]


def test_stations_header_and_files(tonga: Path) -> None:
    with (tonga / "stations.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == STATIONS_HEADER
    rows = _stations(tonga)
    units = {"barometer": "hPa", "tide_gauge": "m", "bottom_pressure": "m", "plume": "m"}
    assert len({r["station_id"] for r in rows}) == len(rows)
    for r in rows:
        assert (tonga / r["file"]).is_file(), r
        assert r["format"] == ("grid_index" if r["kind"] == "plume" else "csv")
        assert units[r["kind"]] == r["units"]
        assert "," not in r["station_id"]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("barometer") >= 40
    assert kinds.count("tide_gauge") >= 30
    assert kinds.count("bottom_pressure") == 17
    ids = {r["station_id"] for r in rows}
    assert {"abur", "hako", "kush", "ofun", "omae", "tosa", "ishig", "chij", "mera"} <= ids
    assert {"II.MSVF", "BARO.NUKU", "BARO.APIA", "BARO.PAGO", "BARO.NIUE"} <= ids


def test_every_csv_parses_with_ascending_utc_times(tonga: Path) -> None:
    start, end = _t("2022-01-15T00:00:00Z"), _t("2022-01-15T14:00:00Z")
    for r in _stations(tonga):
        if r["format"] != "csv":
            continue
        stamps, times, values = _read(tonga / r["file"])
        assert all(ISO_Z.match(s) for s in stamps), r["file"]
        assert np.all(np.diff(times) > 0), r["file"]
        assert times[0] == start and times[-1] <= end
        assert np.all(np.isfinite(values))


def test_the_project_loader_accepts_it(tonga: Path) -> None:
    pkg = load_package(tonga)
    assert pkg.event_id == "tonga2022"
    assert pkg.truth["origin_time"] == "2022-01-15T04:14:45Z"
    assert pkg.truth["speed_m_s"] == 315.0
    assert len(pkg.series(pkg.stations[0]).times) == 841
    doc = tomllib.loads((tonga / "event.toml").read_text())
    assert doc["scenario"]["seed"] == 2022
    assert doc["scenario"]["version"] == GENERATOR_VERSION


# ------------------------------------------------------------------ physics


@pytest.mark.parametrize("sid", ["II.MSVF", "BARO.APIA", "BARO.SYDN", "BARO.HNL", "BARO.KYOT",
                                 "BARO.VALP"])
def test_lamb_peak_at_distance_over_speed(tonga: Path, sid: str) -> None:
    row = next(r for r in _stations(tonga) if r["station_id"] == sid)
    d = _haversine_km(*VOLCANO, float(row["lat"]), float(row["lon"]))
    ta = ORIGIN + d * 1000.0 / 315.0
    _, t, v = _read(tonga / row["file"])
    before = (t > ta - 3600) & (t < ta - 600)
    near = (t > ta - 1800) & (t < ta + 1800)
    anomaly = v[near] - np.median(v[before])
    peak = float(t[near][np.argmax(anomaly)])
    assert abs(peak - ta) <= 6 * 60, (sid, d, (peak - ta) / 60)
    assert 1.0 < anomaly.max() < 6.0
    assert np.std(v[before] - np.median(v[before])) < 0.3


def test_tsunami_reaches_pago_after_the_lamb_wave(tonga: Path) -> None:
    _, t, v = _read(tonga / "data/pago.csv")
    d = _haversine_km(*VOLCANO, -14.2766, -170.6907)
    t_tsunami = ORIGIN + d / 0.2

    def residual_std(lo: float, hi: float) -> float:  # after removing the tide (quadratic)
        w = (t > lo) & (t < hi)
        x = (t[w] - lo) / 3600.0
        return float(np.std(v[w] - np.polyval(np.polyfit(x, v[w], 2), x)))

    assert residual_std(t_tsunami, t_tsunami + 7200) > 5 * residual_std(ORIGIN - 7200, ORIGIN)


def test_lamb_pulse_kernel() -> None:
    tau = np.arange(-600.0, 20_000.0, 1.0)
    y = lamb_pulse(tau, 300.0)
    assert np.all(y[tau < 0] == 0.0)
    assert tau[np.argmax(y)] == pytest.approx((2 - math.sqrt(2)) * 300.0, abs=1.0)
    assert y.max() == pytest.approx(1.0, abs=1e-4)
    assert abs(y.sum()) < 0.01 * np.abs(y).sum()


# ------------------------------------------------------------------ broken sensors


def test_broken_sensors_are_there(tonga: Path) -> None:
    faults = tomllib.loads((tonga / "event.toml").read_text())["scenario"]["faults"]
    by_id = {f["station_id"]: f["fault"] for f in faults}
    assert by_id == {"BARO.NAWI": "flatline", "BARO.ALAM": "spikes", "BARO.GAMB": "gap",
                     "BARO.MIDX": "late", "nkfa": "late"}

    _, t, v = _read(tonga / "data/BARO.NAWI.csv")
    assert np.ptp(v[t >= _t("2022-01-15T02:30:00Z")]) == 0.0
    assert np.ptp(v[t < _t("2022-01-15T02:30:00Z")]) > 0.0

    _, t, v = _read(tonga / "data/BARO.ALAM.csv")
    jump_in, jump_out = v[1:-1] - v[:-2], v[1:-1] - v[2:]
    spikes = (np.abs(jump_in) > 10.0) & (np.abs(jump_out) > 10.0) & (jump_in * jump_out > 0)
    assert int(np.sum(spikes)) == 6

    _, t, v = _read(tonga / "data/BARO.GAMB.csv")
    assert np.max(np.diff(t)) == 7200.0 + 60.0
    assert len(t) == 841 - 120

    _, t, _ = _read(tonga / "data/BARO.MIDX.csv")
    assert t[-1] == _t("2022-01-15T11:00:00Z")
    _, t, _ = _read(tonga / "data/nkfa.csv")
    assert t[-1] == _t("2022-01-15T04:16:00Z")


# ------------------------------------------------------------------ station tables


def test_station_tables_name_a_coordinate_source() -> None:
    known = {"ioc_labels", "ga_ptha_aus_gauges", "ga_ptha_nz_darts", "hydrocoast_darts",
             "provenance_nuku", "provenance_msvf", "reported_obs", "memory_airport"}
    readme = (Path(__file__).resolve().parents[2] / "replay/stations/README.md").read_text()
    for table, col in (("barometers", "elevation_m"), ("tide_gauges", "tsunami_height_m"),
                       ("bottom_pressure", "depth_m")):
        for site in read_sites(table, col):
            assert site.coord_source in known, site
            assert f"`{site.coord_source}`" in readme
            assert -90 <= site.lat <= 90 and -180 <= site.lon <= 180


# ------------------------------------------------------------------ synthetic


def test_build_synthetic_writes_readable_float32_mseed(tmp_path: Path) -> None:
    import obspy

    root = build_synthetic(tmp_path / "syn", n_stations=7, hours=0.1, seed=3)
    rows = _stations(root)
    assert len(rows) == 7
    for r in rows:
        assert r["format"] == "mseed" and r["kind"] == "barometer"
        st = obspy.read(str(root / r["file"]))
        assert len(st) == 1
        assert st[0].stats.npts == 360
        assert st[0].stats.sampling_rate == 1.0
        assert st[0].stats.mseed.encoding == "FLOAT32"
    pkg = load_package(root)
    assert pkg.event_id == "synthetic-7"
    assert len(pkg.series(pkg.stations[0]).times) == 360
    assert _digest(build_synthetic(tmp_path / "again", n_stations=7, hours=0.1, seed=3)) \
        == _digest(root)


def test_build_synthetic_csv_and_bad_arguments(tmp_path: Path) -> None:
    root = build_synthetic(tmp_path / "c", n_stations=3, hours=0.01, sample_rate_hz=2.0,
                           fmt="csv")
    stamps, t, _ = _read(root / _stations(root)[0]["file"])
    assert len(t) == 72 and stamps[1].endswith(".5Z")
    with pytest.raises(ValueError, match="'sac'"):
        build_synthetic(tmp_path / "d", fmt="sac")
    with pytest.raises(ValueError, match="n_stations 0"):
        build_synthetic(tmp_path / "e", n_stations=0)


def test_refuses_to_write_into_a_folder_that_is_not_a_package(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        build_synthetic(tmp_path, n_stations=2, hours=0.01)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------ built-in cache


def test_ensure_builtin_builds_once_and_rebuilds_on_version_change(tmp_path: Path) -> None:
    assert BUILTIN_PACKAGES == ("tonga2022",)
    path = ensure_builtin("tonga2022", tmp_path)
    assert path == tmp_path / "tonga2022"
    event = path / "event.toml"
    first = event.stat().st_mtime_ns
    assert ensure_builtin("tonga2022", tmp_path) == path
    assert event.stat().st_mtime_ns == first
    event.write_text(event.read_text().replace(f'version = "{GENERATOR_VERSION}"',
                                               'version = "0"'))
    ensure_builtin("tonga2022", tmp_path)
    assert f'version = "{GENERATOR_VERSION}"' in event.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tonga2022.lock", "tonga2022"]


def test_two_first_builds_at_once_build_once(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each removed the other's package (which it could be reading) or failed on
    os.replace; a crashed build's folder stayed for ever."""
    import threading
    import time

    import replay.scenario as scenario

    calls: list[int] = []

    def slow_build(out: Path) -> Path:
        calls.append(1)
        time.sleep(0.3)
        out.mkdir(parents=True)
        (out / "event.toml").write_text(f'[scenario]\nversion = "{GENERATOR_VERSION}"\n')
        return out

    monkeypatch.setitem(scenario._BUILDERS, "tonga2022", slow_build)
    (tmp_path / ".tonga2022.building-999999").mkdir()  # a crashed build's
    got: list[Path] = []
    both = threading.Barrier(2)  # the two ask at the same moment; the build takes 0.3 s

    def first_use() -> None:
        both.wait(10)
        got.append(ensure_builtin("tonga2022", tmp_path))

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == [tmp_path / "tonga2022"] * 2 and calls == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tonga2022.lock", "tonga2022"]


def test_ensure_builtin_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'tonga2021'.*\['tonga2022'\]"):
        ensure_builtin("tonga2021", tmp_path)


def test_plume_frames_grow_over_the_vent(tonga: Path) -> None:
    from replay.scenario import great_circle_km

    pkg = load_package(tonga)
    entry = next(e for e in pkg.stations if e.info.kind == "plume")
    frames = pkg.packets(entry, 600.0)
    assert len(frames) == 17  # 04:20 to 07:00 every 10 min
    sizes = [len(f.values) for f in frames]
    assert sizes == sorted(sizes) and sizes[0] > 100
    tops = [float(f.values.max()) / 1000 for f in frames]
    assert max(tops) == pytest.approx(58.2, abs=1.5)
    last = frames[-1]
    core = last.values >= last.values.max() - 500
    lat, lon = float(last.lat[core].mean()), float(last.lon[core].mean())
    assert float(great_circle_km(lat, lon, -20.546, -175.390)) < 10
