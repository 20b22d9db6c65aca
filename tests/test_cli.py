"""The command line: the live commands' station registry, and errors that name the path."""

from __future__ import annotations

from collections.abc import Iterator
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
    assert f"{missing_csv}: no such station registry" in capsys.readouterr().err


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
