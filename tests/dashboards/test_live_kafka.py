"""The live run's dashboard (``tocsin dashboard``): the state follows the run's topics in
the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from dashboards.live import follow
from dashboards.state import LiveState
from detectors.base import Detection
from responders.alerting import AlertPolicy
from streams.schemas import IncidentRevision, ObservationPacket, encode
from streams.topics import Topics, control, create_topics
from tests.conftest import free_port
from tocsin.settings import Settings

pytestmark = pytest.mark.kafka

NOW = time.time()


def _outputs(t: float) -> list[tuple[str, bytes, bytes]]:
    """(topic kind, key, value): what workers would have published about one eruption."""
    det = Detection("BARO.A", "barometer", "lamb_pulse", "1", t - 900.0, t - 600.0, 2.1,
                    "hPa", t - 300.0, -21.1, -175.2)
    rev = IncidentRevision("eruption-live", "volcanic_eruption", 1, t - 200.0, "watch",
                           t - 3600.0, -20.5, -175.4, 314.0, (det.key,), ("BARO.A",))
    (alert,) = AlertPolicy().on_revision(rev)
    return [("detections", b"BARO.A", encode(det)),
            ("detections", b"x", b"{not json"),  # skipped (the workers dead-letter it)
            ("detections", b"control", control("watermark", time=t, partition=0,
                                               partitions=1)),
            ("incidents", b"eruption-live", encode(rev)),
            ("alerts", b"eruption-live", encode(alert))]


async def _publish(settings: Settings, topics: Topics, t: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        # a day-old packet (outside the 12 h read back) and a recent one
        for age, start in ((86400.0, t - 86400.0 - 600.0), (0.0, t - 600.0)):
            pkt = ObservationPacket("BARO.A", "barometer", "BDO", start, 60.0,
                                    np.full(10, 1010.0), "hPa", lat=-21.1, lon=-175.2)
            await producer.send_and_wait(topics.observations, encode(pkt), key=b"BARO.A",
                                         timestamp_ms=int(1000 * (t - age)))
        for kind, key, value in _outputs(t):
            await producer.send_and_wait(getattr(topics, kind), value, key=key)
    finally:
        await producer.stop()


def test_the_live_state_follows_the_run_from_its_history(kafka_settings: Settings) -> None:
    """A dashboard started in the middle of an event shows what happened (the workers'
    outputs from the earliest record) and the last 12 h of observations, then what comes;
    a record it cannot decode does not stop it."""
    topics = Topics.for_run(kafka_settings, "dash-follow", 2)
    state = LiveState()

    async def go() -> dict[str, Any]:
        await create_topics(kafka_settings.bootstrap, topics)
        await _publish(kafka_settings, topics, NOW)
        task = asyncio.create_task(follow(kafka_settings.bootstrap, topics, state))
        try:
            deadline = time.monotonic() + 30
            while not state.alerts() or not state.snapshot()["health"]["samples"]:
                assert time.monotonic() < deadline, state.snapshot()
                await asyncio.sleep(0.1)
            # what comes later comes too
            pkt = ObservationPacket("BARO.B", "barometer", "BDO", NOW, 60.0,
                                    np.full(5, 1011.0), "hPa", lat=-18.1, lon=178.4)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap)
            await producer.start()
            try:
                await producer.send_and_wait(topics.observations, encode(pkt), key=b"BARO.B")
            finally:
                await producer.stop()
            while "BARO.B" not in {s["station_id"] for s in state.snapshot()["stations"]}:
                assert time.monotonic() < deadline, state.snapshot()
                await asyncio.sleep(0.1)
            return state.snapshot()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    snap = asyncio.run(go())
    stations = {s["station_id"]: s for s in snap["stations"]}
    assert stations["BARO.A"]["packets"] == 1  # the day-old one was not read back
    assert stations["BARO.A"]["state"] == "detecting"
    assert [i["id"] for i in snap["incidents"]] == ["eruption-live"]
    assert [a["incident_id"] for a in snap["alerts"]] == ["eruption-live"]
    assert snap["health"]["detections"] == 1


def test_the_live_state_waits_for_the_topics_and_follows_new_partitions(
        kafka_settings: Settings) -> None:
    """A dashboard may start before the workers (no topics yet), and it creates none (it
    refused to start on a topic with another partition count than its setting); a
    partition added later is read too."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    topics = Topics.for_run(kafka_settings, "dash-wait", 1)
    state = LiveState()

    async def send(station: str, partition: int) -> None:
        pkt = ObservationPacket(station, "barometer", "BDO", time.time() - 600.0, 60.0,
                                np.full(10, 1010.0), "hPa", lat=-21.1, lon=-175.2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.observations, encode(pkt),
                                         key=station.encode(), partition=partition)
        finally:
            await producer.stop()

    async def until(station: str, task: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 30
        while station not in {s["station_id"] for s in state.snapshot()["stations"]}:
            assert not task.done(), task  # following stopped
            assert time.monotonic() < deadline, state.snapshot()
            await asyncio.sleep(0.1)

    async def go() -> None:
        task = asyncio.create_task(follow(kafka_settings.bootstrap, topics, state,
                                          refresh_s=0.5))
        try:
            await asyncio.sleep(1.5)  # no topics yet: it waits (three of its refreshes)
            assert not task.done()
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
            await admin.start()
            try:  # and has created none of them
                assert not set(topics.layout()) & set(await admin.list_topics())
            finally:
                await admin.close()
            await create_topics(kafka_settings.bootstrap, topics)
            await send("BARO.P0", 0)
            await until("BARO.P0", task)
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
            await admin.start()
            try:
                await admin.create_partitions({topics.observations: NewPartitions(2)})
            finally:
                await admin.close()
            await send("BARO.P1", 1)
            await until("BARO.P1", task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())


def test_tocsin_dashboard_serves_a_live_run_and_stops_on_sigterm(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """The command a duty room runs beside the workers: before this, the dashboard only
    came with the replay demo, and a live run had none."""
    topics = Topics.for_run(kafka_settings, "dash-cli", 2)
    port = free_port()
    registry = tmp_path / "registry.csv"
    registry.write_text("station_id,kind,lat,lon,elevation_m,units\n"
                        "BARO.Z,barometer,-13.8,-171.8,2.0,hPa\n")
    env = {**os.environ, "TOCSIN_HOME": str(tmp_path / "home"),
           "TOCSIN_KAFKA_BOOTSTRAP": kafka_settings.bootstrap, "TOCSIN_HTTP_PORT": str(port),
           "TOCSIN_PARTITIONS": "3"}  # not the topic's 2: a viewer takes it as it is
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tocsin", "dashboard", "--run-id",
                             "dash-cli", "--registry", str(registry)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                if httpx.get(f"{url}/api/state", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "dashboard.log").read_text()
            time.sleep(0.2)
        asyncio.run(create_topics(kafka_settings.bootstrap, topics))  # the workers' job
        asyncio.run(_publish(kafka_settings, topics, time.time()))
        while True:
            snap = httpx.get(f"{url}/api/state", timeout=5).json()
            if snap["alerts"]:
                break
            assert time.monotonic() < deadline, snap
            time.sleep(0.2)
        assert snap["title"] == "live: dash-cli"
        assert {s["station_id"] for s in snap["stations"]} == {"BARO.A", "BARO.Z"}
        assert [i["id"] for i in snap["incidents"]] == ["eruption-live"]
        # a browser keeps the event stream open: the server waited on it for ever
        with httpx.stream("GET", f"{url}/api/stream", timeout=10) as stream:
            assert next(line for line in stream.iter_lines() if line.startswith("data: "))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, (tmp_path / "dashboard.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_the_live_state_says_when_kafka_goes_away_and_follows_it_back(
        kafka_settings: Settings, tmp_path: Path) -> None:
    """The dashboard's reading ended when the broker went away: the command exited with
    status 0 and the page stayed as it was, looking live. Now the state says Kafka does
    not answer (the page shows it), the reading goes on trying, and what comes once the
    broker is back comes through. A broker of the test's own, stopped and started."""
    from deploy.broker import Broker
    from tests.conftest import missing

    if kafka_settings.kafka_bootstrap:
        missing("external cluster (TOCSIN_TEST_KAFKA_BOOTSTRAP): no local broker to stop")
    own = Settings(home=tmp_path, broker_port=free_port(), controller_port=free_port(),
                   cache_dir=kafka_settings.cache_dir)
    broker = Broker(own)
    topics = Topics.for_run(own, "dash-outage", 1)
    state = LiveState(clock=time.time)

    def names() -> set[str]:
        return {s["station_id"] for s in state.snapshot()["stations"]}

    def answers() -> bool | None:
        src = state.snapshot()["health"]["source"]
        return None if src is None else src["ok"]

    async def until(what: str, cond: Any, task: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 60
        while not cond():
            assert not task.done(), f"following stopped ({what}): {task}"
            assert time.monotonic() < deadline, (what, state.snapshot()["health"])
            await asyncio.sleep(0.1)

    async def send(station: str) -> None:
        pkt = ObservationPacket(station, "barometer", "BDO", time.time() - 600.0, 60.0,
                                np.full(10, 1010.0), "hPa", lat=-21.1, lon=-175.2)
        producer = AIOKafkaProducer(bootstrap_servers=own.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topics.observations, encode(pkt),
                                         key=station.encode())
        finally:
            await producer.stop()

    async def go() -> None:
        task = asyncio.create_task(follow(own.bootstrap, topics, state, refresh_s=0.5,
                                          retry_max_s=1.0))
        try:
            await until("nothing listens yet", lambda: answers() is False, task)
            await asyncio.to_thread(broker.start, 120)
            await create_topics(own.bootstrap, topics)
            await send("BARO.A")
            await until("the broker is up", lambda: "BARO.A" in names() and answers(), task)
            await asyncio.to_thread(broker.stop)
            await until("the broker is gone", lambda: answers() is False, task)
            detail = state.snapshot()["health"]["source"]["detail"]
            assert f"Kafka at {own.bootstrap} does not answer" in detail, detail
            await asyncio.to_thread(broker.start, 120)
            await send("BARO.B")
            await until("the broker is back", lambda: "BARO.B" in names() and answers(),
                        task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(go())
    finally:
        broker.stop()
    assert names() == {"BARO.A", "BARO.B"}
