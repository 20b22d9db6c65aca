"""Dashboard state and HTTP API (no browser): station states, incidents, CAP and Atom."""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from lxml import etree

from dashboards.app import create_app
from dashboards.state import LiveState
from detectors.base import Detection, StationInfo
from responders.alerting import AlertPolicy, validate_cap
from streams.schemas import Forecast, IncidentRevision, ObservationPacket, SchemaError
from tocsin.settings import Settings

T = 1642220085.0


def packet(sid: str, start: float, values: list[float]) -> ObservationPacket:
    return ObservationPacket(station_id=sid, kind="barometer", channel="BDO", start=start,
                             sample_interval=60.0, values=np.array(values, dtype=float),
                             units="hPa", source="test", lat=-18.0, lon=178.0)


def fed_state() -> tuple[LiveState, IncidentRevision]:
    s = LiveState()
    for sid in ("A", "B", "C"):
        s.add_station(StationInfo(sid, "barometer", -18.0, 178.0, 0.0, "hPa"))
    s.on_packet(packet("A", T, [1010.0 + 0.01 * i for i in range(600)]))
    s.on_packet(packet("B", T, [1010.0] * 599 + [float("nan")]))
    s.on_packet(packet("C", T - 6 * 3600, [1010.0] * 10))
    s.on_detection(Detection("A", "barometer", "lamb_pulse", "1", T + 34000.0, T + 34100.0, 2.0,
                             "hPa", T + 34600.0, -18.0, 178.0))
    rev = IncidentRevision("eruption-1", "volcanic_eruption", 1, T + 3600.0, "watch", T,
                           -20.5, -175.4, 314.0, ("x",), ("A", "B", "C", "D"),
                           forecasts=(Forecast("nkfa", "tide_gauge", T + 300, 60.0, -21.1,
                                               -175.2),))
    s.on_revision(rev)
    for msg in AlertPolicy().on_revision(rev):
        s.on_alert(msg)
    return s, rev


def test_station_states_and_incidents() -> None:
    s, _ = fed_state()
    snap = s.snapshot()
    states = {st["station_id"]: st["state"] for st in snap["stations"]}
    assert states == {"A": "detecting", "B": "gap", "C": "late"}
    (inc,) = snap["incidents"]
    assert inc["forecasts"][0]["state"] == "arrived"  # ETA passed, not yet confirmed
    assert inc["alerts"] and snap["alerts"][0]["msgType"] == "Alert"
    ser = s.series("A")
    assert ser is not None and len(ser["t"]) == 600 and ser["detections"][0]["onset"] == T + 34000
    assert (inc["source_error_km"], inc["source_unbounded"]) == (None, False)  # no front


def test_an_incident_carries_its_source_error_and_whether_it_is_bounded() -> None:
    from dataclasses import replace

    s, rev = fed_state()
    s.on_revision(replace(rev, revision=2, extra={"source_error_km": 77.0}))
    (inc,) = s.snapshot()["incidents"]
    assert (inc["source_error_km"], inc["source_unbounded"]) == (77.0, False)
    s.on_revision(replace(rev, revision=3, extra={"source_error_km": None}))
    (inc,) = s.snapshot()["incidents"]
    assert (inc["source_error_km"], inc["source_unbounded"]) == (None, True)


def test_api_serves_state_series_cap_and_atom() -> None:
    s, _ = fed_state()
    client = TestClient(create_app(s))
    assert client.get("/").status_code == 200
    assert client.get("/static/vendor/leaflet/leaflet.js").status_code == 200
    assert client.get("/static/vendor/world-atlas/land-50m.json").status_code == 200
    assert client.get("/api/state").json()["incidents"][0]["id"] == "eruption-1"
    assert client.get("/api/stations/A/series").json()["station_id"] == "A"
    assert client.get("/api/stations/nope/series").status_code == 404
    # no docs page (FastAPI's loads Swagger UI from a CDN); the API's description stays
    assert client.get("/api/docs").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "tocsin dashboard"
    alerts = client.get("/api/alerts").json()
    xml = client.get(alerts[0]["cap_url"])
    assert xml.headers["content-type"].startswith("application/cap+xml")
    validate_cap(xml.content)
    feed = etree.fromstring(client.get("/feed.atom").content)
    ns = {"a": "http://www.w3.org/2005/Atom"}
    entries = feed.findall("a:entry", ns)
    assert len(entries) == len(alerts)
    cap = entries[0].find("a:content", ns)[0]
    validate_cap(etree.tostring(cap))


def test_the_atom_feed_links_never_come_from_the_host_header() -> None:
    """A client's ``Host`` header must not become the feed's links (a cache or proxy would
    hand that feed, pointing at any host, to every reader)."""
    s, _ = fed_state()

    def links(app: object) -> list[str]:
        xml = TestClient(app).get("/feed.atom", headers={"Host": "evil.example"}).content
        return [e.get("href") for e in etree.fromstring(xml).iter(
            "{http://www.w3.org/2005/Atom}link")]

    relative = links(create_app(s))
    assert relative[0] == "/feed.atom" and len(relative) == 1 + len(s.alerts())
    assert all(h.startswith("/") and "evil" not in h for h in relative), relative
    absolute = links(create_app(s, base_url="https://tocsin.example.org/"))
    assert absolute[0] == "https://tocsin.example.org/feed.atom"
    assert all(h.startswith("https://tocsin.example.org/") for h in absolute), absolute
    assert Settings(public_url="https://ops.example/tocsin/").public_url == (
        "https://ops.example/tocsin")


def test_feed_links_are_escaped_and_quoted() -> None:
    """The hrefs were escaped for text, not for a double-quoted attribute, and the
    identifier went into the URL unquoted: a '"' made the feed unreadable XML."""
    from dataclasses import replace

    from dashboards.app import atom_feed

    s, _ = fed_state()
    alerts = [replace(s.alerts()[0], identifier="tocsin#1%2")]
    feed = etree.fromstring(atom_feed(alerts, 'https://ops.example/a"b').encode())
    hrefs = [e.get("href") for e in feed.iter("{http://www.w3.org/2005/Atom}link")]
    assert hrefs == ['https://ops.example/a"b/feed.atom',
                     'https://ops.example/a"b/api/alerts/tocsin%231%252.xml']
    s.on_alert(alerts[0])
    client = TestClient(create_app(s))
    (listed,) = [a for a in client.get("/api/alerts").json() if a["identifier"] == "tocsin#1%2"]
    assert listed["cap_url"] == "/api/alerts/tocsin%231%252.xml"  # '#' began a fragment
    assert client.get(listed["cap_url"]).text == alerts[0].cap_xml
    for bad in ('x"y', "a b", "a,b", "a<b", "a/b", "a\x0bb", ""):
        with pytest.raises(SchemaError, match="identifier"):
            replace(s.alerts()[0], identifier=bad)


def test_sse_stream_sends_the_state() -> None:
    s, _ = fed_state()
    client = TestClient(create_app(s, push_interval=0.01))
    with client.stream("GET", "/api/stream") as r:
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                break
    assert "event: state" in lines
    assert '"eruption-1"' in lines[-1]


def test_subscriptions_need_a_token_and_deliveries_are_visible(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dashboards.subscriptions import subscription_router
    from responders.delivery import Outbox
    from responders.store import Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    box = Outbox(store)
    s, _ = fed_state()
    client = TestClient(create_app(s, routers=[subscription_router(box, "tok-1,tok-2")]))
    body = {"name": "NDMO Tonga", "min_severity": "Moderate",
            "area": {"type": "Polygon", "coordinates": [[[-176, -22], [-174, -22], [-174, -20],
                                                         [-176, -20], [-176, -22]]]},
            "channels": [{"type": "webhook", "url": "http://127.0.0.1:9/x?token=t0p",
                          "secret": "zz"}]}
    assert client.post("/api/subscriptions", json=body).status_code == 401
    assert client.post("/api/subscriptions", json=body,
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/api/subscriptions", json=body, headers={"Authorization": "Bearer tok-2"})
    # neither the signing secret nor the URL's token comes back (every token holder reads it)
    assert r.status_code == 201 and r.json()["channels"][0] == {"type": "webhook",
                                                                 "url": "http://127.0.0.1"}
    bad = {**body, "channels": [{"type": "webhook", "url": "http://169.254.169.254/",
                                 "secret": "x"}]}
    r2 = client.post("/api/subscriptions", json=bad, headers={"Authorization": "Bearer tok-1"})
    assert r2.status_code == 422 and "link-local" in r2.json()["detail"]
    idna = {**body, "channels": [{"type": "webhook", "url": "http://a..b/", "secret": "x"}]}
    r3 = client.post("/api/subscriptions", json=idna, headers={"Authorization": "Bearer tok-1"})
    assert r3.status_code == 422 and "'a..b' does not resolve" in r3.json()["detail"]  # was 500
    subs = client.get("/api/subscriptions", headers={"Authorization": "Bearer tok-1"}).json()
    assert [x["name"] for x in subs] == ["NDMO Tonga"]
    assert "t0p" not in str(subs)
    for msg in s.alerts():
        with store.begin() as c:
            store.save_alert(msg, c)
            assert box.enqueue(msg, c) == 1
    assert client.get("/api/deliveries").status_code == 401  # it names who gets what
    (d,) = client.get("/api/deliveries", headers={"Authorization": "Bearer tok-2"}).json()
    assert d["status"] == "pending" and d["target"] == "http://127.0.0.1"
    assert client.delete(f"/api/subscriptions/{subs[0]['id']}",
                         headers={"Authorization": "Bearer tok-1"}).status_code == 204
    store.close()


def test_odd_ids_and_numbers_are_4xx_on_either_database(database_url: str) -> None:
    """On PostgreSQL a NUL in a path or query (text columns cannot hold one) and a NaN in a
    subscription's body (its json type has none) answered 500, where SQLite answered 404 or
    stored null; deleting a subscription already removed answered 204 each time."""
    from dashboards.subscriptions import subscription_router
    from responders.delivery import Outbox
    from responders.store import Store

    store = Store(database_url)
    box = Outbox(store)
    s, _ = fed_state()
    client = TestClient(create_app(s, routers=[subscription_router(box, "tok")], store=store),
                        raise_server_exceptions=False)
    auth = {"Authorization": "Bearer tok"}
    area = {"type": "Polygon", "coordinates": [[[-176, -22], [-174, -22], [-174, -20],
                                                [-176, -20], [-176, -22]]]}
    try:
        assert client.get("/api/alerts/abc%00def.xml").status_code == 404
        for q in ("alert=a%00b", "after=a%00b"):
            r = client.get(f"/api/deliveries?{q}", headers=auth)
            assert r.status_code == 422 and "not printable" in r.json()["detail"], r.text
        assert client.delete("/api/subscriptions/x%00y", headers=auth).status_code == 404
        # NaN and Infinity are not JSON (the body's parser took them; a NaN the model then
        # refused made FastAPI's error answer 500)
        body = ('{"name": "NEMO", "area": ' + json.dumps(area) + ', "channels": [{"type": '
                '"email", "to": "d@n.to", "priority": NaN}]}')
        for text in (body, body.replace(', "priority": NaN', "").replace(
                '"Polygon"', '"Polygon", "z": Infinity'), "NaN"):
            r = client.post("/api/subscriptions", content=text, headers={
                **auth, "Content-Type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["detail"].startswith("the body is not JSON: "), r.text
        r = client.post("/api/subscriptions", content=body.replace("NaN", "1"), headers={
            **auth, "Content-Type": "application/json"})
        assert r.status_code == 422 and "unknown field(s) ['priority']" in r.json()["detail"]
        ok = client.post("/api/subscriptions", headers=auth, json={
            "name": "NEMO", "area": area, "channels": [{"type": "email", "to": "d@n.to"}]})
        assert ok.status_code == 201
        path = f"/api/subscriptions/{ok.json()['id']}"
        assert [client.delete(path, headers=auth).status_code for _ in range(2)] == [204, 404]
    finally:
        store.close()


def test_seismic_events_keep_their_latest_revision() -> None:
    state = LiveState()
    body = {"event_id": "seismic-x", "revision": 1, "issued": 1.7e9, "lat": -20.0,
            "lon": -174.5, "depth_km": 33.0, "origin_time": 1.7e9 - 200, "herr_km": 40.0,
            "magnitude": None, "stations": ["A", "B", "C", "D"], "arrivals": []}
    state.on_seismic({**body, "revision": 2, "herr_km": 12.0, "issued": 1.7e9 + 30})
    state.on_seismic(body)  # an older revision arriving late changes nothing
    (ev,) = state.snapshot()["seismic_events"]
    assert (ev["revision"], ev["herr_km"], ev["stations"]) == (2, 12.0, 4)
    assert ev["origin_time"].startswith("2023-11-14T22:")
    # a retraction (its picks went to another event) takes it off the map
    state.on_seismic({**body, "revision": 3, "status": "retracted", "stations": [],
                      "issued": 1.7e9 + 60})
    assert state.snapshot()["seismic_events"] == []


def test_the_stream_makes_one_snapshot_per_state_version_for_all_clients() -> None:
    """Each SSE client serialised its own snapshot every half second, on the event loop
    the replay also runs on."""
    from dashboards.app import SnapshotText
    from dashboards.state import LiveState
    from detectors.base import StationInfo

    state = LiveState()
    calls = []
    real = state.snapshot

    def counted():  # type: ignore[no-untyped-def]
        calls.append(state.version)
        return real()

    state.snapshot = counted  # type: ignore[method-assign]
    pushed = SnapshotText(state)
    first = [pushed.get() for _ in range(100)]  # a hundred clients, one version
    assert len(calls) == 1 and len(set(first)) == 1
    state.add_station(StationInfo("S1", "barometer", -18.0, 178.0, 0.0, "hPa"))
    (v, _), text = pushed.get()
    assert len(calls) == 2 and v == state.version and '"S1"' in text
    pushed.max_age_s = 0.0  # and again once it is old, with no change: the lag's age grows
    assert pushed.get()[0] != pushed.get()[0] and len(calls) == 4


def test_a_month_of_feed_keeps_a_week_of_it() -> None:
    """The live view kept every detection, incident and alert it was ever fed: a worker's
    dashboard runs for months, and each half-second push rebuilt all of it (1.2 MB and
    46 ms at 30k detections). It keeps ``keep_s`` of event time (7 days)."""
    s = LiveState()
    s.add_station(StationInfo("A", "barometer", -18.0, 178.0, 0.0, "hPa"))
    policy = AlertPolicy()
    days = 30
    for h in range(days * 24):
        t = T + 3600.0 * h
        s.on_detection(Detection("A", "barometer", "lamb_pulse", "1", t, t + 60.0, 2.0,
                                 "hPa", t + 600.0, -18.0, 178.0))
        if h % 24 == 0:
            rev = IncidentRevision(f"eruption-{h // 24}", "volcanic_eruption", 1, t + 900.0,
                                   "watch", t, -20.5, -175.4, 314.0, ("x",), ("A",))
            s.on_revision(rev)
            for msg in policy.on_revision(rev):
                s.on_alert(msg)
    snap = s.snapshot()
    kept = {i["id"] for i in snap["incidents"]}
    week = {f"eruption-{d}" for d in range(days - 7, days)}
    assert week <= kept <= week | {f"eruption-{days - 8}"}, kept  # pruned once an hour
    assert {a["incident_id"] for a in snap["alerts"]} == kept
    assert 7 * 24 <= snap["health"]["detections"] <= 8 * 24
    (st,) = snap["stations"]
    assert 7 * 24 <= st["detections"] <= 8 * 24
    assert s.alert(snap["alerts"][0]["identifier"]) is not None
    # the newest stays whole: its alerts are there and it shows on the map
    assert snap["incidents"][-1]["alerts"]
    with pytest.raises(ValueError, match="keep_s"):
        LiveState(keep_s=60.0)


def test_no_nan_reaches_the_browser_and_an_unplaced_station_is_named() -> None:
    """The state's JSON could carry NaN (a 500 from /api/state, an event the browser's
    JSON.parse refuses on /api/stream); a packet of a station the view does not know and
    that has no coordinates raised in the listener (the replay's collector with it)."""
    s = LiveState()
    s.on_packet(ObservationPacket("NOWHERE", "barometer", "BDO", T, 60.0,
                                  np.full(10, 1010.0), "hPa"))
    s.add_station(StationInfo("A", "barometer", -18.0, 178.0, 0.0, "hPa"))
    s.on_detection(Detection("A", "barometer", "lamb_pulse", "1", T, T + 60.0,
                             float("nan"), "hPa", T + 600.0, -18.0, 178.0))
    s.on_seismic({"event_id": "seismic-x", "revision": 1, "issued": T, "lat": -20.0,
                  "lon": -174.5, "depth_km": 33.0, "origin_time": T - 200,
                  "herr_km": float("nan"), "magnitude": float("nan"), "stations": ["A"],
                  "arrivals": []})
    client = TestClient(create_app(s, push_interval=0.01))
    r = client.get("/api/state")
    assert r.status_code == 200
    snap = r.json()
    assert snap["health"]["unplaced_stations"] == ["NOWHERE"]
    assert snap["seismic_events"][0]["herr_km"] is None
    assert client.get("/api/stations/A/series").json()["detections"][0]["amplitude"] is None
    with client.stream("GET", "/api/stream") as stream:
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    assert "NaN" not in data and json.loads(data[6:])["seismic_events"][0]["magnitude"] is None


def test_live_stations_go_late_by_the_wall_clock_and_leave_the_unplaced_list() -> None:
    """Live, the view's time only moved with the data: a feed that stopped stayed "ok"
    for ever. With a clock it goes late. A station named unplaced (no coordinates in its
    first packet) leaves that list once it is placed."""
    clock = {"t": T + 600.0}
    s = LiveState(clock=lambda: clock["t"])
    s.on_packet(packet("A", T, [1010.0] * 10))
    assert s.snapshot()["stations"][0]["state"] == "ok"
    clock["t"] = T + 4 * 3600.0  # hours without a packet
    assert s.snapshot()["stations"][0]["state"] == "late"
    assert LiveState().snapshot()["event_time"] is None  # a replay's view: event time only
    s.on_packet(ObservationPacket("X", "barometer", "BDO", T, 60.0, np.full(3, 1.0), "hPa"))
    assert s.snapshot()["health"]["unplaced_stations"] == ["X"]
    s.on_packet(packet("X", T + 600.0, [1010.0] * 10))
    assert s.snapshot()["health"]["unplaced_stations"] == []


def test_a_cap_message_the_state_has_pruned_comes_from_the_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The state keeps a week; the Atom feed's links and those agencies were sent must go
    on working after it (they answered 404)."""
    from responders.store import Store

    s, _ = fed_state()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    old = AlertPolicy().on_revision(IncidentRevision(
        "eruption-old", "volcanic_eruption", 1, T - 30 * 86400.0, "watch", T - 30 * 86400.0,
        -20.5, -175.4, 314.0, ("x",), ("A",)))[0]
    store.save_alert(old)
    client = TestClient(create_app(s, store=store))
    r = client.get(f"/api/alerts/{old.identifier}.xml")
    assert r.status_code == 200 and r.text == old.cap_xml
    assert r.headers["content-type"].startswith("application/cap+xml")
    assert client.get("/api/alerts/nope.xml").status_code == 404
    assert TestClient(create_app(s)).get(f"/api/alerts/{old.identifier}.xml").status_code == 404
    store.close()


def test_live_one_packet_from_the_future_does_not_wipe_the_view() -> None:
    """A packet stamped in 2150 (a station's clock) moved the event time there: every
    station went late and the week kept was pruned, for good. Live, the event time goes
    no further than AHEAD_S past the clock."""
    from dashboards.state import AHEAD_S

    now = T + 86400.0
    s = LiveState(clock=lambda: now)
    s.on_packet(packet("A", now - 600.0, [1010.0] * 10))
    s.on_detection(Detection("A", "barometer", "lamb_pulse", "1", now - 900.0, now - 800.0,
                             2.0, "hPa", now - 700.0, -18.0, 178.0))
    s.on_packet(packet("B", 5_680_000_000.0, [1010.0] * 10))  # 2150
    snap = s.snapshot()
    assert snap["event_time_s"] <= now + AHEAD_S  # its samples are not taken at all now
    assert {st["station_id"]: st["state"] for st in snap["stations"]}["A"] == "detecting"
    assert snap["health"]["detections"] == 1
    s.on_packet(packet("A", now, [1010.0] * 10))
    assert s.snapshot()["event_time_s"] == now + 9 * 60.0  # A's last sample, past the clock


def test_the_source_state_is_in_the_snapshot_from_when_it_changed() -> None:
    s = LiveState()
    assert s.snapshot()["health"]["source"] is None
    s.on_source(False, "Kafka at x:1 does not answer (KafkaConnectionError)")
    first = s.snapshot()["health"]["source"]
    version = s.version
    s.on_source(False, "Kafka at x:1 does not answer (NodeNotReadyError)")  # still down
    assert s.snapshot()["health"]["source"] == first and s.version == version
    assert first["ok"] is False and first["since"].endswith("Z")
    s.on_source(True, "Kafka at x:1")
    assert s.snapshot()["health"]["source"]["ok"] is True and s.version == version + 1


def test_the_unplaced_list_is_bounded_and_so_is_what_each_push_carries() -> None:
    """200,000 packets with no coordinates and new ids: the list grew without end and went
    out whole with every push (2.4 MB each)."""
    from dashboards.state import UNPLACED_MAX, UNPLACED_SHOWN

    s = LiveState()
    for i in range(UNPLACED_MAX + 500):
        s.on_packet(ObservationPacket(f"X{i:06d}", "barometer", "BDO", T, 60.0,
                                      np.full(1, 1.0), "hPa"))
    health = s.snapshot()["health"]
    assert len(s.unplaced) == UNPLACED_MAX and health["unplaced_count"] == UNPLACED_MAX
    assert health["unplaced_capped"] is True  # the page says "at least"
    assert health["unplaced_stations"] == [f"X{i:06d}" for i in range(UNPLACED_SHOWN)]
    assert len(json.dumps(health)) < 2000


def test_alerts_sent_within_one_second_keep_their_revision_order_in_feed_and_list() -> None:
    """The Atom feed and the snapshot's alert list sorted by (sent, identifier): as text r11
    before r9, so the feed's newest entry was r9, a superseded Update."""
    from dataclasses import replace

    from dashboards.app import atom_feed

    s, _ = fed_state()
    first = s.alerts()[0]
    for n in (11, 9, 10, 8):
        s.on_alert(replace(first, identifier=f"tocsin.x.r{n}.update", msg_type="Update",
                           revision=n, sent=T + 7200.0))
    names = [a["identifier"] for a in s.snapshot()["alerts"]][1:]
    assert names == [f"tocsin.x.r{n}.update" for n in (8, 9, 10, 11)]
    feed = etree.fromstring(atom_feed(s.alerts(), "https://ops.example").encode())
    ids = [e.text for e in feed.iter("{http://www.w3.org/2005/Atom}id")][1:]
    assert ids[:4] == [f"urn:tocsin:alert:tocsin.x.r{n}.update" for n in (11, 10, 9, 8)]


def test_the_feed_and_the_list_end_with_the_restatement_after_a_withdrawal() -> None:
    """r2 withdrawn, r1 restated as r1.alert.c1 at r2's time: sorted by (sent, revision),
    the feed's newest entry and the list's last was the withdrawn Update (Extreme)."""
    from dataclasses import replace

    from dashboards.app import atom_feed
    from responders.stage import AlertStage

    _, rev = fed_state()
    s = LiveState()
    stage = AlertStage()
    r2 = replace(rev, revision=2, issued=T + 7200.0, status="confirmed", confirmed=("nkfa",))
    for r in (rev, r2, replace(r2, status="retracted")):
        for msg in stage.add(r):
            s.on_alert(msg)
    names = [a["identifier"] for a in s.snapshot()["alerts"]]
    assert names == ["tocsin.eruption-1.r1.alert", "tocsin.eruption-1.r2.update",
                     "tocsin.eruption-1.r1.alert.c1"]
    assert s.alerts()[2].sent == s.alerts()[1].sent
    feed = etree.fromstring(atom_feed(s.alerts(), "https://ops.example").encode())
    ids = [e.text for e in feed.iter("{http://www.w3.org/2005/Atom}id")][1:]
    assert ids == [f"urn:tocsin:alert:{n}" for n in reversed(names)]


@pytest.mark.parametrize("bad", [math.inf, True, "far"], ids=["inf", "bool", "text"])
def test_a_source_bound_that_is_no_finite_number_is_none_in_the_state(bad: object) -> None:
    """``extra`` is free JSON off the incidents topic: a ``true`` bound showed as a source
    within 1 km."""
    from dataclasses import replace

    s, rev = fed_state()
    s.on_revision(replace(rev, revision=2, issued=rev.issued + 60.0,
                          extra={"source_error_km": bad}))
    got = TestClient(create_app(s)).get("/api/state")
    assert got.status_code == 200
    (inc,) = got.json()["incidents"]
    assert inc["source_error_km"] is None and inc["source_unbounded"] is False


def test_a_station_series_has_each_minute_once_in_time_order() -> None:
    """A redelivered packet (Kafka delivers at least once) went into the series again, back
    in time, and into the feed-health counts; a minute split between two packets gave two
    points of partial means. Live, a packet a day past the clock is left out as the workers
    leave it, and does not hide what comes after."""
    from dashboards.state import AHEAD_S

    a = 1642204800.0  # a whole minute

    def pkt(start: float, dt: float, values: list[float]) -> ObservationPacket:
        return ObservationPacket(station_id="A", kind="barometer", channel="BDO", start=start,
                                 sample_interval=dt, values=np.array(values), units="hPa",
                                 source="test", lat=-18.0, lon=178.0)

    s = LiveState()
    first, half = pkt(a, 60.0, [1000.0, 1002.0]), pkt(a + 90.0, 30.0, [1004.0, 1006.0, 1008.0])
    for p in (first, half, half, first):  # the last two: redeliveries
        s.on_packet(p)
    got = s.series("A")
    assert got is not None
    assert (got["t"], got["v"]) == ([a, a + 60.0, a + 120.0], [1000.0, 1003.0, 1007.0])
    health = {st["station_id"]: st for st in s.snapshot()["stations"]}["A"]
    assert (health["packets"], health["samples"]) == (2, 5)
    now = a + 86400.0
    live = LiveState(clock=lambda: now)
    live.on_packet(pkt(5_680_000_000.0, 60.0, [1010.0]))  # 2150: the station's clock
    live.on_packet(pkt(now - 600.0, 60.0, [1010.0] * 5))
    got = live.series("A")
    assert got is not None and got["t"] == [now - 600.0 + 60.0 * i for i in range(5)]
    # 20 min ahead (a clock off, but within what the workers take): shown, as they use it
    live.on_packet(pkt(now + 1200.0, 60.0, [1011.0]))
    got = live.series("A")
    assert got is not None and got["t"][-1] == now + 1200.0
    assert live.snapshot()["event_time_s"] <= now + AHEAD_S  # the view moves no further


def test_a_subscription_body_is_read_after_the_token_and_checked_strictly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Found by review: a lone surrogate in an area key answered 500 after the row was
    stored, and GET /api/subscriptions answered 500 from then on; one in the name was a
    500, one in the secret was taken (every send then failed); "yes" was taken for
    exercises and a misspelt field dropped; the body was read and parsed before the token
    was checked, whatever its size, and an error echoed all of it."""
    from dashboards.subscriptions import BODY_MAX, subscription_router
    from responders.delivery import Outbox, make_url_checker
    from responders.store import Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    box = Outbox(store, check_url=make_url_checker(resolve=lambda host: ["93.184.216.34"]))
    s, _ = fed_state()
    client = TestClient(create_app(s, routers=[subscription_router(box, "tok")]),
                        raise_server_exceptions=False)
    auth = {"Authorization": "Bearer tok", "Content-Type": "application/json"}
    area = ('{"type": "Polygon", "coordinates": [[[-176, -22], [-174, -22], [-174, -20], '
            '[-176, -20], [-176, -22]]]')
    email = '[{"type": "email", "to": "d@n.to"}]'
    webhook = '[{"type": "webhook", "url": "http://example.org/x", "secret": "%s"}]'

    def post(text: str, headers: dict[str, str] = auth) -> httpx.Response:
        return client.post("/api/subscriptions", content=text.encode(), headers=headers)

    try:
        for text, needle in [
            ('{"name": "x", "area": ' + area + ', "\\ud800": 1}, "channels": ' + email + "}",
             "the body is not JSON: "),
            ('{"name": "\\ud800", "area": ' + area + '}, "channels": ' + email + "}",
             "the body is not JSON: "),
            ('{"name": "x", "area": ' + area + '}, "channels": ' + webhook % "\\udc00" + "}",
             "the body is not JSON: "),
            ('{"name": "x", "area": ' + area + '}, "channels": ' + email
             + ', "exercises": "yes"}', "exercises: Input should be a valid boolean"),
            ('{"name": "x", "area": ' + area + '}, "channels": ' + email
             + ', "min_severty": "Extreme"}', "min_severty: Extra inputs are not permitted"),
            ('{"name": " ", "area": ' + area + '}, "channels": ' + email + "}",
             "name is empty"),
        ]:
            r = post(text)
            assert r.status_code == 422 and needle in r.json()["detail"], (text, r.text)
        assert box.subscriptions() == []
        assert client.get("/api/subscriptions", headers=auth).json() == []
        # no token: 401 before the body is read; a body over the cap: 413, and no echo
        assert post("{", {"Content-Type": "application/json"}).status_code == 401
        big = '{"name": "' + "a" * BODY_MAX + '"}'
        assert post(big, {"Content-Type": "application/json"}).status_code == 401
        r = post(big)
        assert r.status_code == 413 and len(r.content) < 200, r.text[:200]
        r = client.post("/api/subscriptions", content=b'{"name": "x"}',
                        headers={"Authorization": "Bearer tok", "Content-Type": "text/plain"})
        assert r.status_code == 415
        r = post('{"name": "' + "a" * 300 + '", "area": {}, "channels": 5}')
        assert r.status_code == 422 and "a" * 100 not in r.text, r.text
        r = post('{"name": "x", "area": ' + area + '}, "channels": ' + email + "}")
        assert r.status_code == 201, r.text
        assert [x["name"] for x in client.get("/api/subscriptions", headers=auth).json()] == [
            "x"]
    finally:
        store.close()


def test_a_404_names_a_long_id_shortly_and_the_feed_answers_head() -> None:
    """A 404 repeated a 20,000-character id; HEAD /feed.atom and /api/state answered 405,
    which feed readers and monitors ask first (found by review)."""
    s, _ = fed_state()
    client = TestClient(create_app(s))
    for path in (f"/api/alerts/{'x' * 20_000}.xml", f"/api/stations/{'x' * 20_000}/series"):
        r = client.get(path)
        assert r.status_code == 404 and len(r.content) < 200, r.text[:300]
        assert r.json()["detail"].endswith("... (20000 characters)")
    assert client.get("/api/alerts/nope.xml").json()["detail"] == "no alert 'nope'"
    for path in ("/feed.atom", "/api/state"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path
        assert r.headers["content-type"] == client.get(path).headers["content-type"]
