"""The command line: the live commands' station registry, and errors that name the path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tocsin.cli import build_parser, main, seedlink_stations, worker_stations
from tocsin.settings import Settings

LHZ = "II.MSVF.10.LHZ"


@pytest.fixture
def registry_csv(tmp_path: Path) -> Path:
    path = tmp_path / "registry.csv"
    path.write_text("station_id,kind,lat,lon,gain\n"
                    "NZ.GAUGE,tide_gauge,-36.8,174.8,\n"
                    f"{LHZ},seismic,-17.745,178.053,2.5e9\n")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """main() reads Settings() from the environment: a home of the test's own."""
    monkeypatch.setenv("TOCSIN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TOCSIN_STATION_REGISTRY", raising=False)
    return tmp_path / "home"


def test_worker_reads_tocsin_station_registry_without_registry_option(
        registry_csv: Path, tmp_path: Path) -> None:
    """TOCSIN_STATION_REGISTRY is the live worker's registry unless --registry names one
    (detect and replay used it; the worker ignored it)."""
    settings = Settings(home=tmp_path, station_registry=registry_csv)
    registry, gains = worker_stations(build_parser().parse_args(["worker"]), settings, 0.0)
    assert sorted(s.station_id for s in registry) == [LHZ, "NZ.GAUGE"]
    assert gains == {LHZ: 2.5e9}

    other = tmp_path / "other.csv"
    other.write_text("station_id,kind,lat,lon\nXX.DART,bottom_pressure,-20,-170\n")
    args = build_parser().parse_args(["worker", "--registry", str(other)])
    registry, gains = worker_stations(args, settings, 0.0)
    assert [s.station_id for s in registry] == ["XX.DART"] and gains == {}  # --registry wins

    registry, gains = worker_stations(build_parser().parse_args(["worker"]),
                                      Settings(home=tmp_path), 0.0)
    assert registry == [] and gains == {}


def test_seedlink_reads_tocsin_station_registry_without_registry_option(
        registry_csv: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, station_registry=registry_csv)
    args = build_parser().parse_args(["seedlink", "127.0.0.1:18000", LHZ])
    stations = seedlink_stations(args, settings)
    assert stations[LHZ].lat == pytest.approx(-17.745)
    assert stations[LHZ].lon == pytest.approx(178.053)


@pytest.mark.parametrize("argv", [["quakeml", "{report}", "--out", "{out}"],
                                  ["evaluate", "{report}", "--truth", "tonga2022"]])
def test_a_missing_report_is_a_clear_error(argv: list[str], home: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "nowhere" / "report.json"
    code = main([a.format(report=report, out=tmp_path / "out") for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"tocsin: {report}: no such report"
    assert "Traceback" not in err


def test_a_run_id_kafka_cannot_name_topics_after_is_a_clear_error(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--run-id", "Tonga 2022", "--no-migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tocsin: run id 'Tonga 2022' has ' '"), err


def test_a_missing_station_registry_is_a_one_line_error(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    from tocsin.cli import main

    missing_csv = tmp_path / "nope.csv"
    assert main(["worker", "--run-id", "t", "--registry", str(missing_csv)]) == 2
    err = capsys.readouterr().err
    # a registry, not a package (it said "bad package")
    assert err == f"tocsin: bad station registry: {missing_csv}: no such station registry\n"


def test_a_store_or_kafka_that_is_not_there_is_a_one_line_error(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Tracebacks before: the incident map of a fresh home (no tables), a database URL
    that is not one, a Kafka cluster that does not answer."""
    from tests.conftest import free_port

    monkeypatch.delenv("TOCSIN_DATABASE_URL", raising=False)  # the home's SQLite file

    def err_of(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    err = err_of("map", "nosuch", "--out", str(tmp_path / "m.html"))
    assert f"{home / 'tocsin.db'}: no such database file (nothing stored yet?)" in err, err
    assert not home.exists()  # nothing made to say it holds nothing
    home.mkdir()
    (home / "tocsin.db").touch()  # a database without tocsin's tables
    err = err_of("map", "nosuch", "--out", str(tmp_path / "m.html"))
    assert "holds no tocsin incidents (nothing stored there yet?)" in err, err
    monkeypatch.setenv("TOCSIN_DATABASE_URL", "postgresql+psycopg://u:secret@127.0.0.1:1/x")
    err = err_of("map", "nosuch", "--out", str(tmp_path / "m.html"))
    assert "u:***@127.0.0.1:1/x cannot be read: " in err, err
    assert "secret" not in err  # the password stays out of logs
    monkeypatch.setenv("TOCSIN_DATABASE_URL", "bogus")
    err = err_of("map", "nosuch", "--out", str(tmp_path / "m.html"))
    assert "TOCSIN_DATABASE_URL: Value error, not a database URL" in err, err
    monkeypatch.setenv("TOCSIN_DATABASE_URL", "admin:S3cretPw@db")
    assert "S3cretPw" not in err_of("map", "nosuch", "--out", str(tmp_path / "m.html"))
    monkeypatch.delenv("TOCSIN_DATABASE_URL")
    down = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("TOCSIN_KAFKA_BOOTSTRAP", down)
    err = err_of("seedlink", "127.0.0.1:1", LHZ)
    assert f"tocsin: Kafka at {down} does not answer" in err, err


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_taken_broker_port_is_a_one_line_error(tmp_path: Path, taken_port: int,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """BrokerError (and ReplayError) came out as tracebacks."""
    port = taken_port
    monkeypatch.setenv("TOCSIN_HOME", str(tmp_path))
    monkeypatch.setenv("TOCSIN_BROKER_PORT", str(port))
    monkeypatch.delenv("TOCSIN_KAFKA_BOOTSTRAP", raising=False)
    assert main(["broker", "start"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tocsin: port {port} on 127.0.0.1 is taken") and err.count("\n") == 1


def test_run_with_the_dashboard_port_taken_says_so_before_starting_anything(
        tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn sys.exit(3)-ed from its task (40 lines of 'Task exception was never
    retrieved'), after the broker had been started for nothing."""
    from tests.conftest import free_port

    port = taken_port
    monkeypatch.setenv("TOCSIN_HOME", str(tmp_path))
    monkeypatch.setenv("TOCSIN_HTTP_PORT", str(port))
    monkeypatch.delenv("TOCSIN_KAFKA_BOOTSTRAP", raising=False)  # it would start one
    monkeypatch.setenv("TOCSIN_BROKER_PORT", str(free_port()))
    monkeypatch.setenv("TOCSIN_CONTROLLER_PORT", str(free_port()))
    assert main(["run", "--exit-when-done"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is taken" in err and "TOCSIN_HTTP_PORT" in err
    assert not (tmp_path / "broker").exists()  # no broker was started


@pytest.mark.parametrize("error", ["store", "seedlink"])
def test_a_refused_alert_or_seedlink_handshake_is_a_one_line_error(
        error: str, home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both printed a traceback: an operator's error, not the program's."""
    import tocsin.cli as cli
    from responders.store import StoreConflict
    from streams.seedlink import SeedLinkError

    exc = (StoreConflict("alert tocsin.x.r1.alert is stored with other content")
           if error == "store" else SeedLinkError("host:18000 refused 'STATION X Y': 'ERROR'"))

    def dispatch(args: object, settings: object) -> int:
        raise exc

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    assert main(["detect", "tonga2022", "--report", "r.json"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"tocsin: {exc}" and "Traceback" not in err


@pytest.mark.parametrize(("var", "value", "needle"), [
    ("TOCSIN_PARTITIONS", "0", "TOCSIN_PARTITIONS = '0': Input should be greater than or "
     "equal to 1"),
    ("TOCSIN_BROKER_PORT", "99999", "TOCSIN_BROKER_PORT = '99999'"),
    ("TOCSIN_PACKET_SECONDS", "inf", "TOCSIN_PACKET_SECONDS = 'inf'"),
    ("TOCSIN_PUBLIC_URL", "tocsin.example.org", "'tocsin.example.org' is not an http(s) URL"),
    ("TOCSIN_PUBLIC_URL", "https://x.org/?a=1", "is not an http(s) URL with no query"),
    ("TOCSIN_CONTROLLER_PORT", "19092", "TOCSIN_BROKER_PORT and TOCSIN_CONTROLLER_PORT are "
     "both 19092"),
    # every Update and Cancel failed on it (a comma splits CAP's references)
    ("TOCSIN_CAP_SENDER", "NZ Tsunami Centre, Wellington", "is not a CAP sender: no spaces"),
    # every detection declared later than this after its onset was refused as late (a
    # Lamb pulse 10-40 min, a tsunami's final amplitude 4.5 h): nothing was associated
    # Faust refused to make the consumer (more than its 90-s request timeout); the broker
    # refuses a join under its 6-s group.min.session.timeout.ms
    ("TOCSIN_SESSION_TIMEOUT_MS", "100000", "TOCSIN_SESSION_TIMEOUT_MS = '100000': Input should "
     "be less than or equal to 90000"),
    ("TOCSIN_SESSION_TIMEOUT_MS", "1000", "Input should be greater than or equal to 6000"),
    ("TOCSIN_ASSOCIATION_ONSET_LAG_S", "0", "TOCSIN_ASSOCIATION_ONSET_LAG_S = '0': Value "
     "error, below 18060 s, the longest a detector declares a detection after its onset"),
])
def test_a_bad_setting_is_a_one_line_error_naming_it(
        var: str, value: str, needle: str, home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pydantic traceback (Settings() ran outside the error handling), or nonsense taken:
    inf seconds, a port above 65535, the two ports of the broker the same."""
    monkeypatch.setenv(var, value)
    assert main(["detect", "tonga2022", "--report", "r.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tocsin: bad setting: ") and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_evaluate_refuses_what_it_cannot_read_in_one_line(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tracebacks before: a report that is not JSON or not a report, a package without
    [truth] or with a truth out of range; and a truth without a speed wrote NaN tokens
    into the metrics file."""
    import json

    from tests.replay.test_package import make_package

    event = ('[event]\nid = "t"\ntitle = "x"\nstart = "2022-01-15T00:00:00Z"\n'
             'end = "2022-01-15T02:00:00Z"\n')
    row = "A,barometer,-21,-175,0,hPa,a.csv,csv\n"
    pkg = make_package(tmp_path / "p", row, event + '[truth]\norigin_time = '
                       '"2022-01-15T00:10:00Z"\nlat = -20.5\nlon = -175.4\n')
    report = tmp_path / "r.json"
    assert main(["detect", str(pkg), "--report", str(report)]) == 0
    assert json.loads(report.read_text())["event"]["start"] == "2022-01-15T00:00:00.000Z"
    out = tmp_path / "m.json"
    assert main(["evaluate", str(report), "--truth", str(pkg), "--out", str(out)]) == 0
    capsys.readouterr()
    metrics = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert metrics["truth"]["speed_m_s"] is None

    def err_of(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not a JSON report" in err_of("evaluate", str(bad), "--truth", str(pkg))
    bad.write_text('{"schema": "other/1"}')
    assert "not a tocsin.report/1 report (schema 'other/1')" in err_of(
        "evaluate", str(bad), "--truth", str(pkg))
    no_truth = make_package(tmp_path / "q", row, event)
    assert "[truth] lacks ['origin_time', 'lat', 'lon']" in err_of(
        "evaluate", str(report), "--truth", str(no_truth))
    far = make_package(tmp_path / "s", row, event + '[truth]\norigin_time = '
                       '"2022-01-15T00:10:00Z"\nlat = 95\nlon = -175.4\n')
    assert "[truth] lat = 95 is not a number in [-90, 90]" in err_of(
        "evaluate", str(report), "--truth", str(far))
    assert "is a folder" in err_of("detect", str(pkg), "--report", str(tmp_path))


def test_a_worker_holds_a_lease_on_the_broker_while_it_runs(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dashboard that had started the broker stopped it, on exit, under the workers:
    they held no lease on it."""
    import contextlib

    import streams.app
    import tocsin.cli as cli

    held: list[bool] = []
    inside = False

    @contextlib.contextmanager
    def lease(settings: Settings) -> Iterator[None]:
        nonlocal inside
        inside = True
        try:
            yield
        finally:
            inside = False

    class App:
        def main(self) -> None:
            held.append(inside)

    monkeypatch.setattr(cli, "_broker", lease)
    monkeypatch.setattr(streams.app, "create_app", lambda *a, **k: App())
    monkeypatch.setattr("sys.argv", ["tocsin"])
    assert main(["worker", "--no-migrate"]) == 0
    assert held == [True]


def test_bad_command_lines_are_one_line_errors_before_anything_starts(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each of these was a traceback (exit 1), or taken: --speed nan replayed at max speed,
    --workers 0 and --partitions 0 went on to start the broker."""
    import json

    def usage_error(*argv: str) -> str:
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        assert info.value.code == 2
        return capsys.readouterr().err

    report = str(tmp_path / "r.json")
    assert "speed 'nan' must be a finite number > 0" in usage_error(
        "replay", "tonga2022", "--speed", "nan", "--report", report)
    assert "speed 'inf' must be a finite number > 0" in usage_error(
        "replay", "tonga2022", "--speed", "inf", "--report", report)
    assert "'0' must be at least 1" in usage_error(
        "replay", "tonga2022", "--workers", "0", "--report", report)
    assert "'-2' must be at least 1" in usage_error(
        "replay", "tonga2022", "--partitions", "-2", "--report", report)
    assert "port '70000' is not in 0-65535" in usage_error(
        "seedlink-serve", "x.mseed", "--port", "70000")
    for bad in ("inf", "nan", "0"):  # inf divided by zero, nan ran at max speed
        assert f"'{bad}' must be a finite number of seconds > 0" in usage_error(
            "run", "--duration", bad, "--exit-when-done")

    def err_of(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    assert "stream 'BAD'" in err_of("seedlink", "127.0.0.1:1", "BAD")
    assert "'127.0.0.1:99999' is not HOST:PORT" in err_of("seedlink", "127.0.0.1:99999", LHZ)
    # str.isdigit() takes '\u00b2', int() does not: a ValueError traceback
    assert "'127.0.0.1:\u00b2' is not HOST:PORT" in err_of("seedlink", "127.0.0.1:\u00b2", LHZ)
    # a folder: records went out, then the first save raised IsADirectoryError
    assert f"--state {tmp_path}: is not a file" in err_of(
        "seedlink", "127.0.0.1:1", LHZ, "--state", str(tmp_path))
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("garbage")
    assert f"--inventory {garbage}: not readable as StationXML" in err_of(
        "seedlink", "127.0.0.1:1", LHZ, "--inventory", str(garbage))
    assert "--inventory nowhere.xml: no such file" in err_of(
        "seedlink", "127.0.0.1:1", LHZ, "--inventory", "nowhere.xml")
    assert "seedlink-serve: missing.mseed: no such file" in err_of(
        "seedlink-serve", "missing.mseed")
    assert "not readable as miniSEED" in err_of("seedlink-serve", str(garbage))

    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"schema": "tocsin.report/1",
                               "seismic_events": [{"revision": 1}]}))
    assert "cannot be written as QuakeML (KeyError: 'event_id')" in err_of(
        "quakeml", str(odd), "--out", str(tmp_path / "q"))
    assert "exists and is not a folder" in err_of("quakeml", str(odd), "--out", str(garbage))


def test_the_console_line_of_a_seismic_event_whose_error_is_unknown() -> None:
    """herr_km is NaN when the picks do not bound the epicentre, null on the wire: the
    console line formatted None with :.0f and the demo stopped on a TypeError."""
    import orjson

    from streams.schemas import SeismicEventMessage, decode
    from tocsin.demo import describe

    body = {"event_id": "seismic-1", "revision": 1, "issued": 1.7e9, "lat": -20.0,
            "lon": -174.5, "depth_km": 33.0, "origin_time": 1.7e9 - 300, "herr_km": None,
            "stations": ["A", "B", "C"], "arrivals": []}
    msg = decode(orjson.dumps({"schema": SeismicEventMessage.SCHEMA, **body}))
    line = describe(msg)
    assert line is not None and "(error unknown), 3 stations" in line
    line = describe(SeismicEventMessage({**body, "herr_km": 12.4}))
    assert line is not None and "+-12 km, 3 stations" in line


def test_the_console_tells_a_final_amplitude_from_a_new_detection() -> None:
    """The tsunami detector declares a detection again, hours later under the same key,
    with its final amplitude. The console printed both as DETECTION lines: in the Tonga
    run 16 gauges and DARTs seemed to detect a second tsunami 4.5 h after the first."""
    from detectors.base import Detection
    from tocsin.demo import describe

    first = Detection("DART.NZG", "bottom_pressure", "tsunami", "1", 1642221254.0,
                      1642221500.0, 0.0655, "m", 1642222260.0, extra={"final": False})
    final = replace(first, amplitude=-0.13, declared=1642237560.0, extra={"final": True})
    assert first.key == final.key
    line = describe(first)
    assert line is not None and line.startswith("DETECTION  2022-01-15T04:51:00Z  DART.NZG ")
    assert "onset 04:34:14  amplitude +0.0655 m" in line
    line = describe(final)
    assert line is not None and line.startswith("FINAL      2022-01-15T09:06:00Z  DART.NZG ")
    assert "onset 04:34:14  final amplitude -0.13 m" in line


def test_detect_sets_aside_a_packet_the_detectors_refuse(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A seismic record at one sample a minute (the picker's band is above its Nyquist
    frequency): ``tocsin detect`` ended in a PacketError traceback, where a worker
    dead-letters the packet and goes on. Now the report's run.dead_letters names it and
    the other station's packets go through."""
    import json

    from tests.replay.test_package import make_package

    rows = "A,barometer,-21,-175,0,hPa,a.csv,csv\nXX.S.00.LHZ,seismic,-21,-175,0,counts,a.csv,csv\n"
    pkg = make_package(tmp_path / "p", rows)
    report = tmp_path / "r.json"
    assert main(["detect", str(pkg), "--report", str(report)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    got = json.loads(report.read_text())
    [dead] = got["run"]["dead_letters"]
    assert dead["key"] == "XX.S.00.LHZ"
    assert dead["source"] == ("packet XX.S.00.LHZ "
                              "2022-01-15T00:00:00.000Z..2022-01-15T00:01:00.000Z")
    assert dead["reason"].startswith("PacketError: XX.S.00.LHZ: picker band") and (
        "Nyquist" in dead["reason"]), dead
