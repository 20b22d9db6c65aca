from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from detectors.base import StationInfo
from replay.package import (
    PackageError,
    Series,
    load_package,
    read_ndbc_series,
    series_to_packets,
)
from streams.schemas import ObservationPacket

HEADER = "station_id,kind,lat,lon,elevation_m,units,file,format\n"


def make_package(root: Path, rows: str, event: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "event.toml").write_text(event or (
        '[event]\nid = "t"\ntitle = "test"\nstart = "2022-01-15T00:00:00Z"\n'
        'end = "2022-01-15T02:00:00Z"\n'))
    (root / "stations.csv").write_text(HEADER + rows)
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z,1000.0\n"
                                "2022-01-15T00:01:00Z,1000.1\n")
    return root


def test_good_package(tmp_path: Path) -> None:
    pkg = load_package(make_package(tmp_path / "p", "A,barometer,-21.1,-175.2,10,hPa,a.csv,csv\n"))
    assert pkg.event_id == "t" and len(pkg.stations) == 1
    pkts = pkg.packets(pkg.stations[0], 600)
    assert len(pkts) == 1 and pkts[0].values.tolist() == [1000.0, 1000.1]


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path: Path) -> None:
    """Notepad and spreadsheet exports start files with one: event.toml was 'not valid
    TOML' and a CSV's header did not match ['time', 'value']."""
    root = make_package(tmp_path / "p", "A,barometer,-21.1,-175.2,10,hPa,a.csv,csv\n")
    for name in ("event.toml", "stations.csv", "a.csv"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    pkg = load_package(root)
    assert pkg.event_id == "t"
    assert pkg.packets(pkg.stations[0], 600)[0].values.tolist() == [1000.0, 1000.1]


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ("A,volcano,-21,-175,0,hPa,a.csv,csv\n", "stations.csv:2: kind 'volcano'"),
        ("A,barometer,-121,-175,0,hPa,a.csv,csv\n", "lat -121.0"),
        ("A,barometer,x,-175,0,hPa,a.csv,csv\n", "stations.csv:2: lat 'x' is not a number"),
        ("A,barometer,-21,-175,0,hPa,missing.csv,csv\n", "file 'missing.csv' does not exist"),
        ("A,barometer,-21,-175,0,hPa,a.csv,xlsx\n", "format 'xlsx'"),
        ("A,barometer,-21,-175,0,hPa,a.csv,csv\nA,barometer,-21,-175,0,hPa,a.csv,csv\n",
         "stations.csv:3: station_id 'A' appears twice"),
        ("A,barometer,-21,-175\n", "stations.csv:2: 4 columns"),
    ],
)
def test_bad_stations_name_file_line_value(tmp_path: Path, rows: str, needle: str) -> None:
    root = make_package(tmp_path / "p", rows)
    with pytest.raises(PackageError) as info:
        load_package(root)
    assert needle in str(info.value)


def test_bad_event_and_csv(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n",
                        event='[event]\nid = "t"\ntitle = "x"\nstart = "2022-01-15T00:00:00Z"\n'
                              'end = "2022-01-14T00:00:00Z"\n')
    with pytest.raises(PackageError, match="end 2022-01-14T00:00:00Z is not after start"):
        load_package(root)
    root = make_package(tmp_path / "q", "A,barometer,-21,-175,0,hPa,a.csv,csv\n")
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z,1000.0\n"
                                "2022-01-15T00:01:00Z,ten\n")
    pkg = load_package(root)
    with pytest.raises(PackageError, match=r"a.csv:3: value 'ten' is not a number"):
        pkg.series(pkg.stations[0])


def test_packets_cover_the_record_and_align(tmp_path: Path) -> None:
    t = 1642204800.0 + np.concatenate([np.arange(0, 3600, 60.0), np.arange(7200, 9000, 15.0)])
    t = np.delete(t, [5])  # a one-sample hole becomes NaN inside a packet
    v = np.sin(t / 1000.0)
    info = StationInfo("S", "tide_gauge", 0, 0, 0, "m")
    pkts = list(series_to_packets(info, Series(t, v), 600))
    got_t = np.concatenate([p.start + np.arange(len(p.values)) * p.sample_interval
                            for p in pkts])
    got_v = np.concatenate([p.values for p in pkts])
    finite = np.isfinite(got_v)
    np.testing.assert_allclose(got_t[finite], t)
    np.testing.assert_allclose(got_v[finite], v)
    assert (~finite).sum() == 1
    # boundaries on multiples of 600 s of event time, so every run cuts the same packets
    assert all(round(p.start) % 600 == 0 for p in pkts[1:] if p.sample_interval == 60.0)
    assert {p.sample_interval for p in pkts} == {60.0, 15.0}
    assert [p.seq for p in pkts] == list(range(len(pkts)))


def test_ndbc_real_file_newest_first(shared_data: Path) -> None:
    s = read_ndbc_series(shared_data / "tohoku2011" / "dart_ndbc_raw" / "21413.txt")
    assert np.all(np.diff(s.times) > 0)
    assert np.all(s.values < 9000)  # 9999 rows dropped
    assert 5800 < float(np.median(s.values)) < 5850


def test_ndbc_bad_row(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("#YY  MM DD hh mm ss T   HEIGHT\n2011 03 15 00 00 00 7 5825.0\n")
    with pytest.raises(PackageError, match="x.txt:2: measurement type 7"):
        read_ndbc_series(f)


def test_constant_interval_runs_match_a_sample_by_sample_scan() -> None:
    """``_run_end`` (numpy, in chunks) finds the same runs as the plain per-sample scan."""
    from replay.package import _run_end

    def scan(t: np.ndarray, i: int, dt: float) -> int:
        j = i + 1
        while j < len(t):
            k = (t[j] - t[j - 1]) / dt
            r = round(k)
            if abs(k - r) > 1e-3 or r < 1 or r > 3:
                break
            j += 1
        return j

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 3000))
        steps = rng.choice([1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 15.0, 60.0, 0.5, 1.0005, 2.5], size=n)
        t = 1.3e9 + np.cumsum(steps)
        for i in {0, n - 1, *rng.integers(0, n, size=10).tolist()}:
            for dt in (0.5, 1.0, 2.0):
                assert _run_end(t, i, dt) == scan(t, i, dt)


def _cut(t: np.ndarray, kind: str = "seismic") -> list[ObservationPacket]:
    info = StationInfo("XX.A.00.LHZ", kind, 0, 0, 0, "counts" if kind == "seismic" else "m")
    pkts = list(series_to_packets(info, Series(t, np.arange(len(t), dtype=float)), 600))
    got = np.concatenate([p.values for p in pkts])
    assert np.array_equal(got[np.isfinite(got)], np.arange(len(t)))  # every sample, in order
    return pkts


@pytest.mark.parametrize("at", [0, 1, 1800, 3590])
def test_a_stray_sample_off_the_grid_is_a_packet_of_its_own(at: int) -> None:
    """One sample 0.5 s after another in a 1-Hz record: the record stays 1 Hz with no NaN
    added, the stray sample a packet of one at 1 s. The shorter of the first two steps made
    the interval 0.5 s, every other sample of the whole record NaN, and the picker found
    nothing in it (each finite sample began a new segment)."""
    t = 1642204800.0 + np.arange(3600.0)
    t = np.insert(t, at + 1, t[at] + 0.5)
    pkts = _cut(t)
    assert {p.sample_interval for p in pkts} == {1.0}
    assert sum(int(np.isnan(p.values).sum()) for p in pkts) == 0
    stray = [p for p in pkts if p.start == t[at] + 0.5]
    assert len(stray) == 1 and len(stray[0].values) == 1


def test_a_lone_sample_after_a_gap_takes_the_interval_of_its_neighbours() -> None:
    """A last sample 20 s after a 1-Hz record, a lone first sample before it, a record of
    one sample: a packet of one at the interval of the run before it (else after it, else
    60 s), not the gap (a 20-s packet, which the picker refused)."""
    t = 1642204800.0 + np.arange(3600.0)
    last = _cut(np.append(t, t[-1] + 20.0))[-1]
    assert (len(last.values), last.sample_interval, last.start) == (1, 1.0, t[-1] + 20.0)
    first = _cut(np.insert(t, 0, t[0] - 30.0))[0]
    assert (len(first.values), first.sample_interval) == (1, 1.0)
    assert [p.sample_interval for p in _cut(t[:1])] == [60.0]
    # 15-min, then 1-min samples (NDBC): the change of interval is no lone sample
    ndbc = t[0] + np.concatenate([np.arange(0, 7200, 900.0), 7200 + np.arange(0, 3600, 60.0)])
    assert [p.sample_interval for p in _cut(ndbc, "bottom_pressure")][:2] == [900.0, 900.0]
    assert {p.sample_interval for p in _cut(ndbc, "bottom_pressure")} == {900.0, 60.0}


NDBC_HEAD = "#YY  MM DD hh mm ss T   HEIGHT\n#yr  mo dy hr mn  s -      m\n"


def test_ndbc_1_min_and_15_min_samples_win_over_15_s_at_the_same_instant(
        tmp_path: Path) -> None:
    # newest first, as NDBC writes them; the 15-s row comes first or last in the file
    f = tmp_path / "x.txt"
    f.write_text(NDBC_HEAD
                 + "2011 03 11 06 00 00 3 5662.300\n"
                 + "2011 03 11 06 00 00 1 5662.400\n"
                 + "2011 03 11 05 49 00 2 5662.463\n"
                 + "2011 03 11 05 49 00 3 5662.366\n"
                 + "2011 03 11 05 48 45 3 5662.347\n"
                 + "2011 03 11 05 48 00 3 5662.100\n"
                 + "2011 03 11 05 48 00 2 5662.317\n")
    s = read_ndbc_series(f)
    assert s.values.tolist() == [5662.317, 5662.347, 5662.463, 5662.400]


@pytest.mark.parametrize(("row", "needle"), [
    ("2011 13 11 05 49 00 2 5662.463", "month must be in 1..12"),
    ("2011 03 11 05 49 75 2 5662.463", "second must be in 0..59"),
    ("2011 02 30 05 49 00 2 5662.463", "day is out of range for month"),
    ("11 03 11 05 49 00 2 5662.463", "year 11 is not a 4-digit year"),
    # a bad date on a missing (9999) row is still a bad row
    ("2011 03 11 24 00 00 2 9999.000", "hour must be in 0..23"),
])
def test_ndbc_bad_date_names_file_line_and_row(tmp_path: Path, row: str, needle: str) -> None:
    f = tmp_path / "x.txt"
    f.write_text(NDBC_HEAD + "2011 03 11 05 50 00 2 5662.000\n" + row + "\n")
    with pytest.raises(PackageError) as info:
        read_ndbc_series(f)
    msg = str(info.value)
    assert f"{f}:4: " in msg and needle in msg and repr(row) in msg, msg


@pytest.mark.parametrize(("row", "needle"), [
    ("2022-01-15T00:01:00Z,inf", "a.csv:3: value 'inf' is not finite"),
    ("2022-01-15T00:01:00Z,-Infinity", "a.csv:3: value '-Infinity' is not finite"),
    ("2022-01-15T00:01:00Z,1e400", "a.csv:3: value '1e400' is not finite"),
    ("2022-01-15T00:01:00Z,1000.1,7", "a.csv:3: 3 columns, expected 2 (time,value)"),
    ("2022-01-15T00:01:00Z,1000.1,", "a.csv:3: 3 columns, expected 2 (time,value)"),
])
def test_csv_infinite_value_or_extra_column_names_file_line(tmp_path: Path, row: str,
                                                             needle: str) -> None:
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n")
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z,1000.0\n" + row + "\n")
    pkg = load_package(root)
    with pytest.raises(PackageError) as info:
        pkg.series(pkg.stations[0])
    assert needle in str(info.value)


def test_csv_empty_or_nan_value_is_a_missing_sample(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n")
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z,1000.0\n"
                                "2022-01-15T00:01:00Z,\n2022-01-15T00:02:00Z,nan\n"
                                "2022-01-15T00:03:00Z,1000.3\n")
    pkg = load_package(root)
    s = pkg.series(pkg.stations[0])
    assert len(s.times) == 4
    assert np.isnan(s.values).tolist() == [False, True, True, False]


@pytest.mark.parametrize(("row", "value", "allowed"), [
    ("A,barometer,-21,-175,0,Pa,a.csv,csv", "units 'Pa'", "('hPa', 'mbar', 'counts')"),
    ("A,barometer,-21,-175,0,m,a.csv,csv", "units 'm'", "('hPa', 'mbar', 'counts')"),
    ("A,tide_gauge,-21,-175,0,furlongs,a.csv,csv", "units 'furlongs'", "('m',)"),
    ("A,bottom_pressure,-21,-175,0,dbar,a.csv,csv", "units 'dbar'", "('m',)"),
    ("A,seismic,-21,-175,0,m/s,a.csv,csv", "units 'm/s'", "('counts',)"),
    ("A,seismic,-21,-175,0,,a.csv,ndbc_dart", "format 'ndbc_dart'", "('csv', 'mseed')"),
    ("A,tide_gauge,-21,-175,0,m,a.csv,ndbc_dart", "format 'ndbc_dart'", "('csv', 'mseed')"),
    ("A,barometer,-21,-175,0,hPa,a.csv,grid_index", "format 'grid_index'", "('csv', 'mseed')"),
    ("A,plume,-21,-175,0,m,a.csv,csv", "format 'csv'", "('grid_index',)"),
])
def test_units_and_format_must_be_the_kinds(tmp_path: Path, row: str, value: str,
                                            allowed: str) -> None:
    """The detectors' fixed thresholds assume the documented units, and each format holds
    one kind of record: a station giving others is refused, naming file, line, station,
    value and the allowed ones."""
    root = make_package(tmp_path / "p", "B,barometer,-21,-175,0,hPa,a.csv,csv\n" + row + "\n")
    with pytest.raises(PackageError) as info:
        load_package(root)
    msg = str(info.value)
    assert msg.startswith(f"{root / 'stations.csv'}:3: A (") and value in msg, msg
    assert f"is not one of {allowed}" in msg or f"are not one of {allowed}" in msg, msg


def test_the_kinds_units_and_formats_load(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "d.txt").write_text(NDBC_HEAD + "2022 01 15 00 00 00 2 5662.000\n")
    rows = ("A,barometer,-21,-175,0,hPa,a.csv,csv\nB,barometer,-21,-175,0,mbar,a.csv,csv\n"
            "C,barometer,-21,-175,0,counts,a.csv,csv\nD,barometer,-21,-175,0,,a.csv,csv\n"
            "E,tide_gauge,-21,-175,0,m,a.csv,csv\nF,bottom_pressure,-21,-175,0,,d.txt,ndbc_dart\n"
            "G,seismic,-21,-175,0,counts,a.csv,csv\n")
    pkg = load_package(make_package(tmp_path / "p", rows))
    assert [s.info.units for s in pkg.stations] == ["hPa", "mbar", "counts", "hPa", "m", "m",
                                                    "counts"]
    assert all(pkg.packets(s, 600) for s in pkg.stations)


@pytest.mark.parametrize(("data", "span"), [
    ("time,value\n2021-01-15T00:00:00Z,1000.0\n2021-01-15T00:01:00Z,1000.1\n",
     "its samples run from 2021-01-15T00:00:00.000Z to 2021-01-15T00:01:00.000Z"),
    ("time,value\n", "it has none"),
    ("time,value\n2022-01-15T00:00:00Z,\n2022-01-15T00:01:00Z,nan\n", "it has none"),
])
def test_a_station_with_no_sample_in_the_window_is_an_error(tmp_path: Path, data: str,
                                                             span: str) -> None:
    """Not a station silently without data: the error names the station, its line and the
    window, when its record is read."""
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n"
                                        "B,barometer,-21,-175,0,hPa,b.csv,csv\n")
    (root / "b.csv").write_text(data)
    pkg = load_package(root)
    assert pkg.packets(pkg.stations[0], 600)
    with pytest.raises(PackageError) as info:
        pkg.packets(pkg.stations[1], 600)
    assert str(info.value) == (
        f"{root / 'stations.csv'}:3: B: {root / 'b.csv'} has no sample in the replay window "
        f"2022-01-15T00:00:00.000Z .. 2022-01-15T02:00:00.000Z ({span})")


def test_a_grid_station_with_no_frame_in_the_window_is_an_error(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n"
                                        "P,plume,0,140.7,0,m,index.csv,grid_index\n")
    (root / "frame.tif").write_bytes(b"")  # never read: its time is outside the window
    (root / "index.csv").write_text("time,file\n2022-01-16T00:00:00Z,frame.tif\n")
    pkg = load_package(root)
    with pytest.raises(PackageError) as info:
        pkg.packets(pkg.stations[1], 600)
    assert str(info.value) == (
        f"{root / 'stations.csv'}:3: P: {root / 'index.csv'} has no frame in the replay window "
        "2022-01-15T00:00:00.000Z .. 2022-01-15T02:00:00.000Z")


@pytest.mark.parametrize(("index", "needle"), [
    # each escaped the loader as IndexError, ValueError or UnicodeDecodeError, or (the
    # first) read a file outside the package
    (b"time,file\n2022-01-16T00:00:00Z,../outside.tif\n",
     "index.csv:2: frame file '../outside.tif' is outside the package"),
    (b"time,file\n2022-01-16T00:00:00Z\n", "index.csv:2: 1 columns, expected 2 (time, file)"),
    (b"time,file\n2022-01-16T00:00:00Z,frame.tif,x\n", "index.csv:2: 3 columns, expected 2"),
    (b"time,file\n2022-01-16T00:00:00Z,fr\0ame.tif\n",
     "index.csv:2: frame file 'fr\\x00ame.tif' has a NUL"),
    (b"time,file\n2022-01-16T00:00:00Z,fr\xe9me.tif\n", "index.csv: not UTF-8 text"),
])
def test_a_bad_grid_index_is_a_package_error_naming_it(tmp_path: Path, index: bytes,
                                                        needle: str) -> None:
    (tmp_path / "outside.tif").write_bytes(b"")
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n"
                                        "P,plume,0,140.7,0,m,index.csv,grid_index\n")
    (root / "frame.tif").write_bytes(b"")
    (root / "index.csv").write_bytes(index)
    pkg = load_package(root)
    with pytest.raises(PackageError, match=re.escape(needle)):
        pkg.packets(pkg.stations[1], 600)


def test_samples_sharing_an_instant(tmp_path: Path) -> None:
    """The last of them was kept even when it was a NaN (the comment said the last finite
    one), and two readings of one instant that disagree went by without a word."""
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n")
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z,1000.0\n"
                                "2022-01-15T00:01:00Z,1000.5\n2022-01-15T00:01:00Z,\n"
                                "2022-01-15T00:00:00Z,1000.0\n")
    pkg = load_package(root)
    s = pkg.series(pkg.stations[0])
    assert s.values.tolist() == [1000.0, 1000.5]  # equal repeats are one sample
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z,1000.0\n"
                                "2022-01-15T00:01:00Z,1000.5\n2022-01-15T00:01:00Z,999.0\n"
                                "2022-01-15T00:01:00Z,1000.5\n")
    with pytest.raises(PackageError, match=re.escape(
            "a.csv: lines 3 and 4 give 2022-01-15T00:01:00.000Z two values, 1000.5 and 999.0")):
        pkg.series(pkg.stations[0])


def test_infinite_mseed_samples_and_huge_ndbc_fields_are_package_errors(tmp_path: Path) -> None:
    import obspy

    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.mseed,mseed\n"
                                        "D,bottom_pressure,38,148,0,m,d.txt,ndbc_dart\n")
    data = np.full(100, 1000.0)
    data[42] = np.inf  # the CSV reader refused it; the miniSEED one passed it on
    tr = obspy.Trace(data, header={"network": "XX", "station": "A", "channel": "LDI",
                                   "starttime": obspy.UTCDateTime("2022-01-15T00:00:00"),
                                   "sampling_rate": 1.0})
    tr.write(str(root / "a.mseed"), format="MSEED", encoding="FLOAT64")
    (root / "d.txt").write_text("#YY  MM DD hh mm ss T   HEIGHT\n"
                                f"{10 ** 30} 01 15 00 00 00 1 5800.000\n")
    pkg = load_package(root)
    with pytest.raises(PackageError, match=re.escape(
            "a.mseed: trace XX.A..LDI sample 42 (at 2022-01-15T00:00:42.000000Z) is inf")):
        pkg.series(pkg.stations[0])
    with pytest.raises(PackageError, match=r"d.txt:2: 1000000000000000000000000000000-01-15 "
                                           "00:00:00 is not a date and time"):
        pkg.series(pkg.stations[1])  # was OverflowError


def test_sub_second_records_are_cut_on_the_packet_grid_at_their_exact_rate() -> None:
    """20 Hz at epoch 1.64e9: one step of the times reads 0.04999995 s; the packets were
    cut at multiples of 599.9994 s (37 packets for 6 h, not 36), the first one's length was
    off by 9 samples and the start times drifted by 20 ms over the record."""
    from replay.package import Series, series_to_packets

    rate, t_start = 20, 1642204800.0 + 233.4  # not on a packet boundary
    n = 6 * 3600 * rate
    times = t_start + np.arange(n) / rate
    info = StationInfo("XX.S1..BHZ", "seismic", 0.0, 0.0, 0.0, "counts")
    pkts = list(series_to_packets(info, Series(times, np.zeros(n)), 600.0))
    assert {p.sample_interval for p in pkts} == {1.0 / rate}
    assert len(pkts) == 37  # a partial first and last, 35 whole between
    assert len(pkts[0].values) == round((1642205400.0 - t_start) * rate)
    for p in pkts[1:]:
        assert abs(p.start / 600.0 - round(p.start / 600.0)) < 1e-9, p.start
    assert sum(len(p.values) for p in pkts) == n
    assert abs(pkts[-1].start + (len(pkts[-1].values) - 1) / rate - times[-1]) < 1e-6


@pytest.mark.parametrize("file", ["../outside.csv", "{abs}"])
def test_a_station_file_outside_the_package_is_refused(tmp_path: Path, file: str) -> None:
    """``../`` or an absolute path let a package (data from elsewhere) read any file of the
    user's; the csv reader's error even printed the file's first line."""
    (tmp_path / "outside.csv").write_text("secret line\n")
    file = file.format(abs=tmp_path / "outside.csv")
    root = make_package(tmp_path / "p", f"A,barometer,-21,-175,0,hPa,{file},csv\n")
    with pytest.raises(PackageError, match=r"stations.csv:2: file .* is outside the package"):
        load_package(root)
    event = ('[event]\nid = "t"\ntitle = "x"\nstart = "2022-01-15T00:00:00Z"\n'
             'end = "2022-01-15T02:00:00Z"\n[seismic]\ninventory = "../outside.csv"\n')
    root = make_package(tmp_path / "q", "A,barometer,-21,-175,0,hPa,a.csv,csv\n", event)
    with pytest.raises(PackageError, match=r"\[seismic\] inventory '../outside.csv' is "
                                           "outside the package"):
        load_package(root)


@pytest.mark.parametrize(("extra", "needle"), [
    ('truth = "x"\n', "truth = 'x' is not a table"),
    ('seismic = "x"\n', "seismic = 'x' is not a table"),
    ('[seismic]\ngains = "x"\n', "[seismic] gains = 'x' is not a table"),
    # each loaded: "abc" failed only when a worker asked for the gains, inf and true never
    ('[seismic.gains]\nA = "abc"\n', "[seismic.gains] A = 'abc' is not a finite positive"),
    ("[seismic.gains]\nA = inf\n", "[seismic.gains] A = inf is not a finite positive"),
    ("[seismic.gains]\nA = true\n", "[seismic.gains] A = True is not a finite positive"),
    ("[seismic.gains]\nA = -2.0\n", "[seismic.gains] A = -2.0 is not a finite positive"),
])
def test_event_tables_of_the_wrong_type_are_package_errors(tmp_path: Path, extra: str,
                                                            needle: str) -> None:
    """Each crashed with a traceback (ValueError, AttributeError)."""
    event = ('id = "t"\ntitle = "x"\nstart = "2022-01-15T00:00:00Z"\n'
             'end = "2022-01-15T02:00:00Z"\n')
    text = (extra + "[event]\n" + event) if not extra.startswith("[") else (
        "[event]\n" + event + extra)
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n", text)
    with pytest.raises(PackageError, match=re.escape(needle)):
        load_package(root)


def test_ids_encodings_and_mseed_overlaps_are_package_errors(tmp_path: Path) -> None:
    import obspy

    event = ('[event]\nid = "../../x y"\ntitle = "x"\nstart = "2022-01-15T00:00:00Z"\n'
             'end = "2022-01-15T02:00:00Z"\n')
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n", event)
    with pytest.raises(PackageError, match=r"\[event\] id '../../x y' is not"):
        load_package(root)
    root = make_package(tmp_path / "q", "A,B,barometer,-21,-175,0,hPa,a.csv,csv\n")
    (root / "stations.csv").write_text(HEADER + '"A,B",barometer,-21,-175,0,hPa,a.csv,csv\n')
    with pytest.raises(PackageError, match=r"stations.csv:2: station_id 'A,B' has ','"):
        load_package(root)
    # a vertical tab loaded, and then lxml refused it in every CAP alert's XML: the
    # revision was dead-lettered and no alert went out
    (root / "stations.csv").write_text(HEADER + "GA\x0bUGE,barometer,-21,-175,0,hPa,a.csv,csv\n")
    with pytest.raises(PackageError, match=r"station_id 'GA\\x0bUGE' has the non-printable"):
        load_package(root)
    (root / "stations.csv").write_bytes(HEADER.encode() + b"\xff\xfe,barometer\n")
    with pytest.raises(PackageError, match="stations.csv: not UTF-8 text"):
        load_package(root)
    # two traces of one channel overlapping off the sample grid: merge kept both, and the
    # loader cut a 0.5-s series alternating between them (a 13-hPa sawtooth)
    t0 = obspy.UTCDateTime("2022-01-15T00:00:00")
    tr1 = obspy.Trace(np.full(1000, 1000.0, dtype=np.float32),
                      {"network": "XX", "station": "A", "channel": "LDI", "delta": 1.0,
                       "starttime": t0})
    tr2 = tr1.copy()
    tr2.data[:] = 1013.0
    tr2.stats.starttime = t0 + 500.5
    obspy.Stream([tr1, tr2]).write(str(root / "a.mseed"), format="MSEED")
    (root / "stations.csv").write_text(HEADER + "A,barometer,-21,-175,0,hPa,a.mseed,mseed\n")
    pkg = load_package(root)
    with pytest.raises(PackageError, match="traces overlap"):
        pkg.series(pkg.stations[0])
    tr2.stats.sampling_rate = 2.0
    obspy.Stream([tr1, tr2]).write(str(root / "a.mseed"), format="MSEED")
    with pytest.raises(PackageError, match=r"the sampling rate changes \(\[1.0, 2.0\] Hz\)"):
        pkg.series(pkg.stations[0])


@pytest.mark.parametrize(("row", "needle"), [
    ("2011 03 11 05 46 00 1 -inf", "height '-inf' is not a water depth"),
    ("2011 03 11 05 46 00 1 nan", "height 'nan' is not a water depth"),
    ("2011 03 11 05 46 00 1 5812.341 7", "expected 8 columns, got 9"),
    # below the sea floor, or deeper than any ocean, loaded as data (found by review)
    ("2011 03 11 05 46 00 1 0.0", "height '0.0' is not a water depth (above 0, at most "
                                  "11000 m"),
    ("2011 03 11 05 46 00 1 -5.0", "height '-5.0' is not a water depth"),
    ("2011 03 11 05 46 00 1 12000.0", "height '12000.0' is not a water depth"),
    # Python's int and float read 2_011 as 2011 and Arabic-Indic digits as ASCII ones
    ("2_011 03 11 05 46 00 1 5812.341", "not an NDBC DART row: '2_011 03"),
    ("2011 03 11 05 46 00 1 5_812.341", "not an NDBC DART row"),
    ("2011 03 11 05 46 00 \u0661 5812.341", "not an NDBC DART row"),
])
def test_ndbc_infinite_heights_and_extra_columns_are_refused(tmp_path: Path, row: str,
                                                             needle: str) -> None:
    """-inf reached the packets (+inf was dropped as missing); a 9th column was ignored."""
    f = tmp_path / "d.txt"
    f.write_text("#YY  MM DD hh mm ss T   HEIGHT\n2011 03 11 05 45 00 1 5812.338\n" + row + "\n")
    with pytest.raises(PackageError, match=re.escape(needle)):
        read_ndbc_series(f)


def test_ndbc_two_rows_of_one_type_at_one_instant_must_agree(tmp_path: Path) -> None:
    """The lowest height was kept, whichever row came first; then the first, without a
    word, where a CSV names both lines (found by review). Two equal rows are one sample."""
    f = tmp_path / "d.txt"
    f.write_text("#YY  MM DD hh mm ss T   HEIGHT\n2011 03 11 05 46 00 1 5812.400\n"
                 "2011 03 11 05 46 00 1 5812.300\n2011 03 11 05 45 00 1 5812.338\n")
    with pytest.raises(PackageError, match=r"d\.txt: lines 2 and 3 give 2011-03-11T05:46:00"
                                           r"\.000Z two heights of type 1, 5812\.4 and "
                                           r"5812\.3; one sample per instant"):
        read_ndbc_series(f)
    f.write_text("#YY  MM DD hh mm ss T   HEIGHT\n2011 03 11 05 46 00 1 5812.400\n"
                 "2011 03 11 05 46 00 1 5812.400\n2011 03 11 05 45 00 1 5812.338\n")
    assert read_ndbc_series(f).values.tolist() == [5812.338, 5812.4]


def test_what_the_loaders_could_not_read_is_a_package_error_naming_it(tmp_path: Path) -> None:
    """Each of these was a traceback (exit 1) instead of one line naming the file, line
    and value: a time in year 0 UTC (the error message itself failed), a field longer than
    csv's limit, a NUL in a file name, a DART file that is not UTF-8, a registry row with
    fewer columns than its header."""
    from replay.registry import read_gains, read_registry

    rows = "A,barometer,-21,-175,0,hPa,a.csv,csv\n"
    root = make_package(tmp_path / "p", rows)
    (root / "a.csv").write_text("time,value\n0001-01-01T00:00:00+01:00,1\n")
    with pytest.raises(PackageError, match=r"a\.csv:2: time: '0001-01-01T00:00:00\+01:00' is "
                                           r"not a time within 1900-2200"):
        load_package(root).series(load_package(root).stations[0])
    (root / "a.csv").write_text("time,value\n2022-01-15T00:00:00Z," + "1" * 200_000 + "\n")
    with pytest.raises(PackageError, match=r"a\.csv:2: not readable as CSV \(field larger"):
        load_package(root).series(load_package(root).stations[0])
    (root / "stations.csv").write_text(HEADER + 'A,barometer,-21,-175,0,hPa,a.csv,"'
                                       + "x" * 200_000 + '"\n')
    with pytest.raises(PackageError, match=r"stations\.csv:2: not readable as CSV"):
        load_package(root)
    (root / "stations.csv").write_text(HEADER + "A,barometer,-21,-175,0,hPa,a\0.csv,csv\n")
    with pytest.raises(PackageError, match=r"stations\.csv:2: file 'a\\x00\.csv' has a NUL"):
        load_package(root)
    event = ('[event]\nid = "t"\ntitle = "x"\nstart = "2022-01-15T00:00:00Z"\n'
             'end = "9999-12-31T23:30:00-01:00"\n')
    with pytest.raises(PackageError, match=r"\[event\] end: .* is not a time within 1900-2200"):
        load_package(make_package(tmp_path / "q", rows, event))
    dart = make_package(tmp_path / "d", "D,bottom_pressure,-21,-175,0,m,d.txt,ndbc_dart\n")
    (dart / "d.txt").write_bytes(b"2022 01 15 01 00 00 1 5000.0\xff\n")
    with pytest.raises(PackageError, match=r"d\.txt: not UTF-8 text"):
        load_package(dart).series(load_package(dart).stations[0])

    registry = tmp_path / "registry.csv"
    registry.write_text("station_id,kind,lat,lon,gain\nS1,seismic\n")
    for read in (read_registry, read_gains):
        with pytest.raises(PackageError, match=r"registry\.csv:2: 2 columns, the header has 5"):
            read(registry)
    registry.write_bytes(b"station_id,kind,lat,lon\n\xff,seismic,1,2\n")
    with pytest.raises(PackageError, match=r"registry\.csv: not UTF-8 text"):
        read_registry(registry)


def _trace(values: np.ndarray, start: str = "2022-01-15T00:00:00", station: str = "A",
           rate: float = 1.0) -> object:
    import obspy

    return obspy.Trace(values, {"network": "XX", "station": station, "channel": "LDI",
                                "sampling_rate": rate,
                                "starttime": obspy.UTCDateTime(start)})


def test_a_mseed_file_is_read_as_the_file_it_names_and_as_miniseed(tmp_path: Path) -> None:
    """Given the name, ObsPy took it for a glob pattern: ``a*.mseed`` also read the sibling
    ``aX.mseed`` (or a link out of the package, which the check of the name had not seen),
    and ``a[1].mseed`` was "no file matching". And it read any format it recognised: a SAC
    file passed as ``mseed`` loaded (found by review)."""
    import os

    import obspy

    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a*.mseed,mseed\n")
    obspy.Stream([_trace(np.full(100, 1000.0))]).write(str(root / "a*.mseed"), format="MSEED")
    obspy.Stream([_trace(np.full(100, 1013.0), "2022-01-15T00:10:00")]).write(
        str(root / "aX.mseed"), format="MSEED")
    outside = tmp_path / "outside.mseed"
    obspy.Stream([_trace(np.full(100, 777.0), "2022-01-15T00:20:00")]).write(
        str(outside), format="MSEED")
    os.symlink(outside, root / "aZ.mseed")
    pkg = load_package(root)
    s = pkg.series(pkg.stations[0])
    assert len(s.times) == 100 and set(s.values.tolist()) == {1000.0}
    (root / "stations.csv").write_text(HEADER + "A,barometer,-21,-175,0,hPa,a[1].mseed,mseed\n")
    (root / "a*.mseed").rename(root / "a[1].mseed")
    pkg = load_package(root)
    assert len(pkg.series(pkg.stations[0]).times) == 100
    (root / "stations.csv").write_text(HEADER + "A,barometer,-21,-175,0,hPa,a.mseed,mseed\n")
    obspy.Stream([_trace(np.full(100, 1000.0, dtype=np.float32))]).write(
        str(root / "a.mseed"), format="SAC")
    pkg = load_package(root)
    with pytest.raises(PackageError, match=r"a\.mseed: not readable as miniSEED"):
        pkg.series(pkg.stations[0])


def test_mseed_records_in_integers_and_floats_merge_and_a_bad_rate_is_named(
        tmp_path: Path) -> None:
    """One channel's records in int32 and then float32 (a datalogger's encoding changed):
    ObsPy's merge raised "Data type differs" out of the loader. A rate of 0 Hz was "samples
    0 and 1 give ... two values" (found by review)."""
    import obspy

    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.mseed,mseed\n")
    obspy.Stream([_trace(np.arange(100, dtype=np.int32)),
                  _trace(np.arange(100, 200, dtype=np.float32), "2022-01-15T00:01:40")]
                 ).write(str(root / "a.mseed"), format="MSEED")
    pkg = load_package(root)
    s = pkg.series(pkg.stations[0])
    assert s.values.tolist() == [float(i) for i in range(200)]
    assert np.allclose(np.diff(s.times), 1.0)
    for rate in (0.0, 1e7):
        obspy.Stream([_trace(np.arange(100, dtype=np.int32), rate=rate)]).write(
            str(root / "a.mseed"), format="MSEED")
        with pytest.raises(PackageError, match=rf"a\.mseed: sampling rate {rate!r} Hz is not "
                                               "above 0 and at most 100000 Hz"):
            pkg.series(pkg.stations[0])


def test_an_inventory_is_read_as_the_file_it_names(tmp_path: Path) -> None:
    """``[seismic] inventory = "inv*.xml"`` was a glob for ObsPy: a link ``invZ.xml`` to a
    file outside the package gave a station its coordinates (found by review)."""
    import io
    import os

    import obspy

    example = obspy.read_inventory()  # ObsPy's example: networks GR and BW

    def xml(inv: object) -> bytes:
        b = io.BytesIO()
        inv.write(b, format="STATIONXML")  # type: ignore[attr-defined]
        return b.getvalue()

    event = ('[event]\nid = "t"\ntitle = "x"\nstart = "2012-01-15T00:00:00Z"\n'
             'end = "2012-01-15T02:00:00Z"\n[seismic]\ninventory = "inv*.xml"\n')
    root = make_package(tmp_path / "p", "BW.RJOB..EHZ,seismic,,,,counts,a.csv,csv\n", event)
    (root / "inv*.xml").write_bytes(xml(example.select(network="GR")))
    (tmp_path / "outside.xml").write_bytes(xml(example.select(network="BW")))
    os.symlink(tmp_path / "outside.xml", root / "invZ.xml")
    with pytest.raises(PackageError, match=r"stations\.csv:2: BW\.RJOB\.\.EHZ has no lat/lon "
                                           r"and the \[seismic\] inventory gives none"):
        load_package(root)
    (root / "inv*.xml").write_bytes(xml(example))
    assert load_package(root).stations[0].info.lat == pytest.approx(47.737167)


@pytest.mark.parametrize(("file", "text", "needle"), [
    ("stations.csv", HEADER + "A,barometer,1_0,-175,0,hPa,a.csv,csv\n",
     "stations.csv:2: lat '1_0' is not a number"),
    ("stations.csv", HEADER + "A,barometer,-21,-175,\u0661\u0660,hPa,a.csv,csv\n",
     "stations.csv:2: elevation_m '\u0661\u0660' is not a number"),
    ("a.csv", "time,value\n2022-01-15T00:00:00Z,1000.0\n2022-01-15T00:01:00Z,1_013\n",
     "a.csv:3: value '1_013' is not a number"),
    # a line break in a quoted field: the rows were numbered as lines, and a bad value on
    # line 4 was named on line 3
    ("a.csv", 'time,value\n2022-01-15T00:00:00Z,"1000.0\n"\n2022-01-15T00:01:00Z,x\n',
     "a.csv:2: a quoted field runs over 2 lines (no value has a line break)"),
    ("stations.csv", HEADER + '"A\n",barometer,-21,-175,0,hPa,a.csv,csv\n',
     "stations.csv:2: a quoted field runs over 2 lines"),
])
def test_numbers_are_ascii_and_a_line_is_a_row(tmp_path: Path, file: str, text: str,
                                               needle: str) -> None:
    """Python's float read ``1_0`` as 10 and Arabic-Indic digits as ASCII ones; a quoted
    line break put every later error a line off (found by review)."""
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n")
    (root / file).write_text(text)
    with pytest.raises(PackageError, match=re.escape(needle)):
        pkg = load_package(root)
        pkg.series(pkg.stations[0])


def test_a_registry_reads_numbers_as_a_package_does(tmp_path: Path) -> None:
    from replay.registry import read_registry

    f = tmp_path / "registry.csv"
    f.write_text("station_id,kind,lat,lon\nA,barometer,-21,1_75\n")
    with pytest.raises(PackageError, match=r"registry\.csv:2: .*'1_75'"):
        read_registry(f)
    f.write_text("station_id,kind,lat,lon\nA,barometer,-21,175\n")
    assert read_registry(f)[0].lon == 175.0


@pytest.mark.parametrize(("line", "needle"), [
    ('title = {a = 1}', "[event] title = {'a': 1} is not a string"),
    ('title = 2022', "[event] title = 2022 is not a string"),
    ('id = 5', "[event] id = 5 is not a string"),
])
def test_an_event_id_and_title_are_strings(tmp_path: Path, line: str, needle: str) -> None:
    """A table became the title "{'a': 1}" of the dashboard and every alert; 5 the id "5"
    (found by review)."""
    key = line.split(" ")[0]
    fields = {"id": 'id = "t"', "title": 'title = "x"'}
    fields[key] = line
    event = (f'[event]\n{fields["id"]}\n{fields["title"]}\nstart = "2022-01-15T00:00:00Z"\n'
             'end = "2022-01-15T02:00:00Z"\n')
    root = make_package(tmp_path / "p", "A,barometer,-21,-175,0,hPa,a.csv,csv\n", event)
    with pytest.raises(PackageError, match=re.escape(needle)):
        load_package(root)


def _tif(path: Path, values: list[list[float]], crs: str, x0: float, y0: float,
         step: float) -> None:
    import rioxarray  # noqa: F401 - registers the .rio accessor
    import xarray as xr

    v = np.asarray(values, dtype=np.float32)
    xs = x0 + step * np.arange(v.shape[1])
    ys = y0 - step * np.arange(v.shape[0])
    da = xr.DataArray(v[np.newaxis], dims=("band", "y", "x"),
                      coords={"band": [1], "y": ys, "x": xs})
    da.rio.write_crs(crs).rio.write_nodata(np.nan).rio.to_raster(path)


GEOS = "+proj=geos +lon_0=140.7 +h=35785863 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +sweep=x"


@pytest.mark.parametrize(("values", "crs", "x0", "y0", "needle"), [
    # an infinite pixel was dropped as missing, where a CSV and miniSEED refuse inf
    ([[15000.0, np.inf], [np.nan, 15000.0]], "EPSG:4326", -175.4, -20.5,
     "f.tif: pixel (row 0, column 1) is inf, not a height of 0 m or more (a missing pixel "
     "is the file's nodata or NaN; 1 such pixels)"),
    ([[15000.0, -50000.0], [np.nan, 15000.0]], "EPSG:4326", -175.4, -20.5,
     "f.tif: pixel (row 0, column 1) is -50000.0, not a height of 0 m or more"),
    # pixels past the pole, and off the geostationary disk (lat, lon inf): the frame
    # loaded, and then the worker dead-lettered all of it
    ([[15000.0, 15000.0], [15000.0, 15000.0]], "EPSG:4326", 500.0, 100.0,
     "f.tif: pixel (row 0, column 0) at x 500.0, y 100.0 of its CRS is at lat 100.0, lon "
     "500.0: not on the globe (4 such pixels with a value)"),
    ([[15000.0, np.nan], [np.nan, np.nan]], GEOS, 5436000.0, 1500.0,
     "f.tif: pixel (row 0, column 0) at x 5436000.0, y 1500.0 of its CRS is at lat inf, lon "
     "inf: not on the globe (1 such pixels with a value)"),
])
def test_a_grid_frame_with_pixels_no_detector_can_take_is_a_package_error(
        tmp_path: Path, values: list[list[float]], crs: str, x0: float, y0: float,
        needle: str) -> None:
    """Found by review. Pixels off the disk with no value are missing, as in the real
    Himawari product."""
    root = make_package(tmp_path / "p", "P,plume,0,140.7,0,m,index.csv,grid_index\n")
    (root / "index.csv").write_text("time,file\n2022-01-15T01:00:00Z,f.tif\n")
    _tif(root / "f.tif", values, crs, x0, y0, 0.1 if crs.startswith("EPSG") else 2000.0)
    pkg = load_package(root)
    with pytest.raises(PackageError, match=re.escape(needle)):
        pkg.packets(pkg.stations[0], 600)
    # the same frame with those pixels missing loads
    ok = np.asarray(values, dtype=np.float64)
    if crs == GEOS:
        _tif(root / "f.tif", [[np.nan, 15000.0], [np.nan, np.nan]], crs, -2000.0, 0.0, 2000.0)
    elif x0 == 500.0:
        _tif(root / "f.tif", values, crs, -175.4, -20.5, 0.1)
    else:
        ok[0, 1] = np.nan
        _tif(root / "f.tif", ok.tolist(), crs, x0, y0, 0.1)
    (frame,) = pkg.packets(pkg.stations[0], 600)
    assert len(frame.values) >= 1 and np.all(frame.values == 15000.0)


def test_a_grid_index_has_one_frame_an_instant_and_exactly_its_header(tmp_path: Path) -> None:
    """Two frames at one instant both loaded; a third header column was ignored (found by
    review)."""
    root = make_package(tmp_path / "p", "P,plume,0,140.7,0,m,index.csv,grid_index\n")
    for name in ("f1.tif", "f2.tif"):
        _tif(root / name, [[15000.0, np.nan], [np.nan, 15000.0]], "EPSG:4326", -175.4, -20.5, 0.1)
    (root / "index.csv").write_text("time,file\n2022-01-15T01:00:00Z,f1.tif\n"
                                    "2022-01-15T00:50:00Z,f2.tif\n"
                                    "2022-01-15T01:00:00Z,f2.tif\n")
    pkg = load_package(root)
    with pytest.raises(PackageError, match=r"index\.csv: lines 2 and 4 give "
                                           r"2022-01-15T01:00:00\.000Z two frames"):
        pkg.packets(pkg.stations[0], 600)
    (root / "index.csv").write_text("time,file,x\n2022-01-15T01:00:00Z,f1.tif\n")
    with pytest.raises(PackageError, match=r"index\.csv:1: header \['time', 'file', 'x'\] "
                                           r"is not \['time', 'file'\]"):
        pkg.packets(pkg.stations[0], 600)
