"""Shared fixtures: real data from ../shared/data and a real Kafka broker.

In CI (``CI=true``) a missing dataset or service is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tocsin.settings import Settings

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
OUTPUT = REPO / "test-output"


def missing(what: str) -> None:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing dataset or service is a failure)")
    pytest.skip(what)


@pytest.fixture(scope="session", autouse=True)
def travel_times() -> None:
    """The seismic locator's iasp91 table from the usual cache (computed there once)."""
    from tocsin.tables import prime_travel_times

    prime_travel_times(Settings().cache_dir)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings (../shared/data, or ``TOCSIN_SHARED_DATA``): both events' folders
    must be there (a file missing inside one fails the test that reads it)."""
    root = Path(os.environ.get("TOCSIN_SHARED_DATA", REPO.parent / "shared" / "data"))
    absent = [name for name in ("tonga2022", "tohoku2011") if not (root / name).is_dir()]
    if absent:
        missing(f"real data folder(s) {', '.join(absent)} not found in {root}")
    return root


# the synthetic earthquake on real MSVF noise (tests/replay/test_seismic_scenario.py and the
# browser test): real station sites, obspy.taup arrivals
ERUPTION = 1642220085.0
T0 = 1_700_000_000.0


def _quake() -> Any:
    from replay.seismic_scenario import Quake

    return Quake(lat=-20.0, lon=-174.5, depth_km=35.0, time=T0 + 1200.0, magnitude=6.0)


QUAKE = _quake()


@pytest.fixture(scope="session")
def quiet_noise(shared_data: Path) -> Any:
    """The quiet hours of the real II.MSVF.10.LHZ record (before the eruption)."""
    import numpy as np
    from obspy import read

    tr = read(str(shared_data / "tonga2022" / "seismic"
                  / "Tonga_2022-01-15_II.MSVF.10.LHZ.mseed"))[0]
    n_quiet = int(ERUPTION - tr.stats.starttime.timestamp) - 600
    return tr.data[:n_quiet].astype(np.float64)


@pytest.fixture(scope="session")
def quake_pkg(quiet_noise: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A replay package of the earthquake: 45 min of six real sites' LHZ."""
    from replay.package import load_package
    from replay.seismic_scenario import record, write_package

    traces = record(QUAKE, quiet_noise, T0, seconds=2700.0, seed=1)
    return load_package(write_package(QUAKE, traces, T0, tmp_path_factory.mktemp("quake")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real single-node KRaft broker for the whole session, on free loopback ports.

    Jars come from the usual cache (fetched with Maven on first use). When
    TOCSIN_TEST_KAFKA_BOOTSTRAP names a running cluster, that one is used instead.
    """
    from deploy.broker import Broker, BrokerError

    home = tmp_path_factory.mktemp("tocsin-home")
    external = os.environ.get("TOCSIN_TEST_KAFKA_BOOTSTRAP")
    settings = Settings(
        home=home,
        kafka_bootstrap=external or None,
        broker_port=free_port(),
        controller_port=free_port(),
        partitions=4,
        session_timeout_ms=15000,
        packet_seconds=600.0,
    )
    if external:
        yield settings
        return
    broker = Broker(settings)
    try:
        broker.start(timeout=120)
    except BrokerError as exc:
        missing(f"the Kafka broker could not start: {exc}")
    try:
        yield settings
    finally:
        broker.stop()


PG_ROLE = "tocsin_test"


def _local_postgres() -> str:
    """Start the Debian PostgreSQL cluster if it is down; return a URL for a test role."""
    import shutil
    import subprocess

    if shutil.which("pg_lsclusters") is None:
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    lines = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    clusters = [ln.split() for ln in lines if ln.strip()]
    if not clusters:
        missing("no PostgreSQL cluster (pg_createcluster)")
    version, name, port, status = clusters[0][:4]
    if status != "online":
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True)
    sql = (f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_ROLE}') "
           f"THEN CREATE ROLE {PG_ROLE} LOGIN SUPERUSER PASSWORD '{PG_ROLE}'; END IF; END$$;")
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-p", port, "-q", "-c", sql],
                   check=True, capture_output=True)
    return f"postgresql+psycopg://{PG_ROLE}:{PG_ROLE}@127.0.0.1:{port}/postgres"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of a real PostgreSQL server's maintenance database (the tests make their own)."""
    url = os.environ.get("TOCSIN_TEST_DATABASE_URL")
    if not url:
        try:
            url = _local_postgres()
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            missing(f"PostgreSQL could not be started: {exc}")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite and on a fresh database of a real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tocsin.db'}"
        return
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_server")
    dbname = f"tocsin_test_{uuid.uuid4().hex[:10]}"
    plain = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    try:
        yield server.rsplit("/", 1)[0] + "/" + dbname
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def same_reports(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    """Two reports equal apart from how they were made (mode, run), with a readable diff."""
    import difflib
    import json

    from replay.report import comparable

    ja = json.dumps(comparable(a), indent=1, sort_keys=True).splitlines()
    jb = json.dumps(comparable(b), indent=1, sort_keys=True).splitlines()
    diff = list(difflib.unified_diff(ja, jb, "first", "second", lineterm="", n=2))
    assert not diff, "reports differ:\n" + "\n".join(diff[:200])


def detect_and_replay(pkg, settings: Settings, run_dir: Path,  # type: ignore[no-untyped-def]
                      partitions: int = 3) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """The package's report in-process (``tocsin detect``) and through the real broker."""
    import asyncio

    from replay.run import detect_package
    from replay.streaming import replay_package

    expected = detect_package(pkg, packet_seconds=settings.packet_seconds)
    got = asyncio.run(replay_package(pkg, settings, speed=None, partitions=partitions,
                                     progress_stream=None, run_dir=run_dir, timeout=600))
    return expected, got
