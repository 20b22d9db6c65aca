"""Webhook delivery through the real pipeline: the receiver is down for the first part of
the replay and still gets every alert, each exactly once by idempotency key, signed."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from replay.package import load_package
from replay.scenario import build_tonga2022
from replay.streaming import replay_package
from responders.alerting import CAP_NS, validate_cap
from responders.delivery import Outbox, Subscription
from responders.store import Store
from tests.responders.receivers import WebhookReceiver
from tocsin.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
# the western Pacific on both sides of the antimeridian: Japan to Tonga
PACIFIC = {"type": "MultiPolygon", "coordinates": [
    [[[120, -50], [180, -50], [180, 50], [120, 50], [120, -50]]],
    [[[-180, -50], [-160, -50], [-160, 50], [-180, 50], [-180, -50]]]]}


def test_webhook_down_then_up_receives_each_incident_as_it_stands(kafka_settings: Settings,
                                                                  tmp_path: Path) -> None:
    settings = kafka_settings.model_copy(update={
        "home": tmp_path / "home", "delivery_backoff_s": 0.3, "delivery_backoff_max_s": 2.0,
        "delivery_max_attempts": 50})
    pkg = load_package(build_tonga2022(tmp_path / "tonga2022"))
    store = Store(settings.db_url)
    box = Outbox(store)
    rx = WebhookReceiver("agency-secret", up=False)
    sub = Subscription.create("Pacific agency", PACIFIC, "Minor", [
        {"type": "webhook", "url": rx.url, "secret": "agency-secret"}], exercises=True)
    box.add_subscription(sub)
    # an agency that takes live alerts only: a replay of recorded data sends it nothing
    live_only = WebhookReceiver("live-secret")
    box.add_subscription(Subscription.create("Live-only agency", PACIFIC, "Minor", [
        {"type": "webhook", "url": live_only.url, "secret": "live-secret"}]))

    async def run() -> dict:  # type: ignore[type-arg]
        replay = asyncio.create_task(replay_package(
            pkg, settings, speed=(pkg.end - pkg.start) / 40.0, progress_stream=None,
            run_dir=tmp_path / "run", timeout=600, drain_timeout=60))
        while rx.refused == 0 and not replay.done():
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # a few more refusals, then the agency comes back
        rx.up = True
        return await replay

    report = asyncio.run(run())
    rx.close()
    live_only.close()
    assert live_only.received == []
    assert rx.refused >= 2, "the receiver was never down while alerts were due"
    deliveries = box.deliveries()
    assert deliveries and {d["status"] for d in deliveries} <= {"delivered", "superseded"}
    assert report["run"]["deliveries_pending"] == 0
    # every alert of the run was queued for the agency; what the outage held back is
    # superseded by a later message of its incident, and each incident's last message
    # reached it
    alerts = report["alerts"]
    assert {d["alert_identifier"] for d in deliveries} == {a["identifier"] for a in alerts}
    status = {d["alert_identifier"]: d for d in deliveries}
    for inc in {a["incident_id"] for a in alerts}:
        ids = [a["identifier"] for a in alerts if a["incident_id"] == inc]
        assert status[ids[-1]]["status"] == "delivered", status[ids[-1]]
        for i, a in enumerate(ids):
            if status[a]["status"] == "superseded":
                by = status[a]["last_error"].split()[2]
                assert by in ids[i + 1:], status[a]["last_error"]
    # each key delivered exactly once, correctly signed
    counts = Counter(r.key for r in rx.received)
    assert set(counts) == {d["key"] for d in deliveries if d["status"] == "delivered"}
    assert set(counts.values()) == {1}
    assert all(r.signature_ok for r in rx.received)
    for r in rx.received:
        doc = validate_cap(r.body)
        assert doc.findtext(f"{{{CAP_NS}}}status") == "Exercise"
    # some were held up by the outage: failed attempts, then delivered or superseded
    assert any(a["ok"] == 0 for d in deliveries for a in d["attempt_log"])
    store.close()
