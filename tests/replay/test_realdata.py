"""Real recordings through the whole chain: in-process and through the real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from replay.package import load_package
from replay.report import comparable
from replay.run import detect_package
from replay.streaming import replay_package
from streams.schemas import parse_time
from tests.realdata import build_tohoku, build_tonga_barometers
from tocsin.settings import Settings

ERUPTION = parse_time("2022-01-15T04:14:45Z")
TOHOKU = parse_time("2011-03-11T05:46:24Z")


@pytest.fixture(scope="module")
def tonga_pkg(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_package(build_tonga_barometers(shared_data, tmp_path_factory.mktemp("tonga")))


@pytest.fixture(scope="module")
def tohoku_pkg(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_package(build_tohoku(shared_data, tmp_path_factory.mktemp("tohoku")))


def test_tonga_real_barometers(tonga_pkg) -> None:  # type: ignore[no-untyped-def]
    report = detect_package(tonga_pkg)
    by_station: dict[str, list[float]] = {}
    for d in report["detections"]:
        onset = parse_time(d["onset"])
        if onset < parse_time("2022-01-16T00:00:00Z"):
            by_station.setdefault(d["station_id"], []).append(onset)
    assert sorted(by_station) == ["AGBOM.TONGA", "II.MSVF.00.LDI"]
    (tonga,) = by_station["AGBOM.TONGA"]
    (fiji,) = by_station["II.MSVF.00.LDI"]
    assert ERUPTION <= tonga <= parse_time("2022-01-15T04:40:00Z")
    assert parse_time("2022-01-15T04:40:00Z") <= fiji <= parse_time("2022-01-15T05:05:00Z")


def test_tohoku_real_sea_level(tohoku_pkg) -> None:  # type: ignore[no-untyped-def]
    report = detect_package(tohoku_pkg)
    dets = [d for d in report["detections"] if d["detector"] != "dart_mofjeld"]
    stations = {d["station_id"] for d in dets}
    assert stations == {"21401", "21413", "21418", "21419", "nkfa"}
    for d in dets:
        assert parse_time(d["onset"]) > TOHOKU, d  # nothing on the quiet days before
    # far-field and near-field sea-level detections become one tsunami incident
    tsunami = [i for i in report["incidents"] if i["type"] == "tsunami"]
    assert len(tsunami) == 1
    assert set(tsunami[0]["confirmed"]) == stations


@pytest.mark.kafka
def test_tohoku_real_through_kafka_equals_detect(tohoku_pkg, kafka_settings: Settings,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    expected = detect_package(tohoku_pkg, packet_seconds=kafka_settings.packet_seconds)
    got = asyncio.run(replay_package(tohoku_pkg, kafka_settings, speed=None, partitions=3,
                                     progress_stream=None, run_dir=tmp_path, timeout=600))
    assert expected["detections"], "an empty report would make the comparison meaningless"
    assert json.dumps(comparable(got), sort_keys=True) == json.dumps(comparable(expected),
                                                                     sort_keys=True)
