"""Shared fixtures: real data from ../shared/data and a real Kafka broker.

In CI (``CI=true``) a missing dataset or service is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("TOCSIN_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "tonga2022").is_dir():
        missing(f"real data folder {root} not found")
    return root


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
        session_timeout_ms=6000,
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
