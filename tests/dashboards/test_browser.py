"""The live dashboard in a real browser (Debian chromium via Playwright) during a replay.

``tocsin run`` (the demo command, on the session's Kafka broker) replays the Tonga
scenario while the page is open: the test waits for the incident on the map and in the
alert list, clicks a station, checks its time series, saves screenshots under
test-output/, and fails on any console error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import OUTPUT, free_port, missing
from tocsin.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


def _serve_demo(settings: Settings, tmp_path: Path, *args: str) -> Iterator[str]:
    """``tocsin run ARGS`` on the session's broker; yields the dashboard's URL once it
    answers, and stops the demo (Ctrl-C) afterwards."""
    port = free_port()
    env = {**os.environ, "TOCSIN_KAFKA_BOOTSTRAP": settings.bootstrap,
           "TOCSIN_HOME": str(tmp_path / "home"), "TOCSIN_HTTP_PORT": str(port),
           "TOCSIN_SESSION_TIMEOUT_MS": "6000", "TOCSIN_CACHE_DIR": str(settings.cache_dir)}
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tocsin", "run", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/api/state", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not come up: {(tmp_path / 'demo.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture()
def demo(kafka_settings: Settings, tmp_path: Path) -> Iterator[str]:
    yield from _serve_demo(kafka_settings, tmp_path, "--duration", "60")


@pytest.fixture()
def quake_demo(kafka_settings: Settings, quake_pkg: Any, tmp_path: Path) -> Iterator[str]:
    yield from _serve_demo(kafka_settings, tmp_path, "--package", str(quake_pkg.root),
                           "--duration", "40")


SHOTS = OUTPUT / "dashboard"


@contextlib.contextmanager
def _page(url: str, errors: list[str]) -> Iterator[Any]:
    """Debian chromium on the dashboard at ``url`` once its stations are on the map;
    console errors and page errors go to ``errors``."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        missing("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 850})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#map path.leaflet-interactive[data-station]", timeout=30_000)
        try:
            yield page
        finally:
            browser.close()


def test_dashboard_shows_the_incident_live(demo: str) -> None:
    errors: list[str] = []
    with _page(demo, errors) as page:
        page.screenshot(path=str(SHOTS / "1-start.png"))
        # the incident on the map (its source marker) and in the alert list
        page.wait_for_selector("#map [data-incident]", timeout=120_000)
        page.wait_for_selector("#alerts li[data-alert]", timeout=120_000)
        page.screenshot(path=str(SHOTS / "2-incident.png"))
        assert "volcanic_eruption" in page.inner_text("#incidents")
        # once the front is located: how far the source may be, on the map and in words
        page.wait_for_selector("#map [data-source-error]", state="attached", timeout=120_000)
        assert "km (95 %)" in page.inner_text("#incidents")
        # a station opens its time series
        # the station marker sits under the incident's source marker at this zoom: send the
        # click to the marker itself (Leaflet dispatches it from the map container)
        page.dispatch_event("#map path[data-station='BARO.NUKU']", "click")
        page.wait_for_selector("#series[data-station='BARO.NUKU'] polyline", timeout=30_000)
        # detection onsets are marked (zero-width SVG lines: attached, not 'visible')
        page.wait_for_selector("#series line.detection", state="attached", timeout=60_000)
        page.screenshot(path=str(SHOTS / "3-station.png"))
        # the feed-health table selects a station too
        page.click("#feed tr[data-station]:not(.selected) td")
        page.wait_for_function("document.querySelector('#series').dataset.station !== "
                               "'BARO.NUKU'", timeout=30_000)
        # consumer lag of the workers' group, from Kafka
        page.wait_for_selector("#lag[data-total]", timeout=30_000)
        lag_text = page.inner_text("#lag")
        state = page.evaluate("window.tocsinState()")
    assert state["incidents"] and state["alerts"]
    assert "consumer lag:" in lag_text and "observations" in lag_text
    assert state["health"]["consumer_lag"]["group"].startswith("tocsin-")
    assert errors == [], errors


def test_dashboard_shows_a_seismic_event(quake_demo: str, quake_pkg: Any) -> None:
    """The earthquake scenario (six real LHZ sites, real MSVF noise): the located event
    appears on the map as the workers publish it, where the package's truth is."""
    from detectors.geo import great_circle_km
    from tests.conftest import QUAKE

    errors: list[str] = []
    with _page(quake_demo, errors) as page:
        marker = page.wait_for_selector("#map [data-seismic]", timeout=120_000)
        assert marker is not None
        event_id = marker.get_attribute("data-seismic")
        # the last revision uses all six stations
        page.wait_for_function("window.tocsinState().seismic_events.some("
                               "e => e.stations === 6)", timeout=120_000)
        page.screenshot(path=str(SHOTS / "4-seismic.png"))
        state = page.evaluate("window.tocsinState()")
    (ev,) = state["seismic_events"]
    assert ev["event_id"] == event_id
    assert float(great_circle_km(ev["lat"], ev["lon"], QUAKE.lat, QUAKE.lon)) < 25.0
    assert errors == [], errors


@contextlib.contextmanager
def _serving(state: Any, servers: list[Any] | None = None) -> Iterator[str]:
    """A dashboard over ``state`` on a free port, in a thread: its address (its uvicorn
    server appended to ``servers``, for a test that stops it)."""
    import threading

    import uvicorn

    from dashboards.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if servers is not None:
        servers.append(server)
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _fed(stations: list[tuple[str, float, float]]) -> Any:
    import numpy as np

    from dashboards.state import LiveState
    from detectors.base import StationInfo
    from streams.schemas import ObservationPacket

    state = LiveState()
    for sid, lat, lon in stations:
        state.add_station(StationInfo(sid, "barometer", lat, lon, 0.0, "hPa"))
        state.on_packet(ObservationPacket(sid, "barometer", "BDO", 1642220085.0, 60.0,
                                          np.full(10, 1010.0), "hPa", lat=lat, lon=lon))
    return state


def test_station_ids_are_shown_as_text_not_markup() -> None:
    """A station id (from a feed or a package) with markup in it: its tooltip shows the
    text; nothing of it runs (Leaflet puts a string tooltip into innerHTML)."""
    sid = '<img src=x onerror="document.body.dataset.pwned=1">'
    with _serving(_fed([(sid, -18.0, 178.0)])) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.hover("#map path.leaflet-interactive[data-station]", force=True)
            page.wait_for_selector(".leaflet-tooltip", timeout=10_000)
            assert page.inner_text(".leaflet-tooltip") == sid
            page.wait_for_timeout(300)
            assert page.evaluate("document.body.dataset.pwned") is None
            assert page.query_selector(".leaflet-tooltip img") is None
        assert errors == []


def test_a_station_id_with_a_slash_opens_its_series() -> None:
    """The schema allows "/" in a station id; its series route took only one path segment,
    and clicking such a station did nothing (a 404 the page dropped)."""
    with _serving(_fed([("NZ/CHIT", -43.9, -176.5)])) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.dispatch_event("#map path[data-station='NZ/CHIT']", "click")
            page.wait_for_selector("#series[data-station='NZ/CHIT'] polyline", state="attached",
                                   timeout=10_000)  # a flat line: not 'visible'
            assert page.inner_text("#series-title") == "NZ/CHIT (barometer, hPa)"
        assert errors == []


def test_an_incident_shows_its_newest_revisions_and_folds_the_rest() -> None:
    """The Tonga run's eruption has 79 revisions: listed oldest first, the latest was a
    screen below the incident's heading and the alert list further. Now the newest five
    come first and the others fold under a summary, which stays open across redraws."""
    from streams.schemas import IncidentRevision

    state = _fed([("NUKU", -21.1, -175.2)])
    rev = IncidentRevision("eruption-1", "volcanic_eruption", 1, 1642220685.0, "watch",
                           1642220085.0, -20.5, -175.4, 314.0, ("x",), ("NUKU",))
    for n in range(1, 13):
        state.on_revision(replace(rev, revision=n, issued=rev.issued + 60.0 * n))
    shown = "#incidents .incident > table.revisions tr[data-revision]"
    folded = "#incidents details.older table.revisions tr[data-revision]"
    with _serving(state) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.wait_for_selector(shown, timeout=10_000)
            revs = [r.get_attribute("data-revision") for r in page.query_selector_all(shown)]
            assert revs == ["12", "11", "10", "9", "8"]
            assert page.inner_text("#incidents details.older summary") == (
                "7 earlier revisions")
            assert not page.is_visible(folded)
            page.click("#incidents details.older summary")
            older = [r.get_attribute("data-revision")
                     for r in page.query_selector_all(folded)]
            assert older == ["7", "6", "5", "4", "3", "2", "1"]
            # a new revision redraws the panel: the fold stays open, the new one on top
            state.on_revision(replace(rev, revision=13, issued=rev.issued + 780.0))
            page.wait_for_selector(f"{shown}[data-revision='13']", timeout=15_000)
            assert page.query_selector(shown).get_attribute("data-revision") == "13"
            assert page.is_visible(f"{folded}[data-revision='8']")
        assert errors == []


@pytest.mark.parametrize(("remembered", "tail"), [(10_000, "and 5 more"),
                                                  (22, "and at least 2 more")])
def test_the_header_names_a_few_unplaced_stations_and_counts_the_rest(
        remembered: int, tail: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import dashboards.state
    from streams.schemas import ObservationPacket

    monkeypatch.setattr(dashboards.state, "UNPLACED_MAX", remembered)
    state = _fed([("NUKU", -21.1, -175.2)])
    for i in range(25):  # no coordinates: not on the map
        state.on_packet(ObservationPacket(f"X{i:02d}", "barometer", "BDO", 1642220085.0,
                                          60.0, np.full(3, 1010.0), "hPa"))
    with _serving(state) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.wait_for_function("document.getElementById('health').textContent"
                                   ".includes('more')", timeout=10_000)
            text = page.inner_text("#health")
        assert errors == []
    names = ", ".join(f"X{i:02d}" for i in range(20))
    assert text.endswith(f"not on the map (no coordinates): {names} {tail}"), text


def test_the_page_says_when_what_it_shows_is_stale() -> None:
    """The page went on looking live when the dashboard's source (Kafka) or the dashboard
    server itself had gone: it now says which, over the map, and clears it when the
    source answers again."""
    state = _fed([("NUKU", -21.1, -175.2)])
    state.on_source(False, "Kafka at 127.0.0.1:1 does not answer (KafkaConnectionError)")
    servers: list[Any] = []
    with _serving(state, servers) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.wait_for_selector("#stale[data-reason='source']", timeout=10_000)
            text = page.inner_text("#stale")
            assert text.startswith("Kafka at 127.0.0.1:1 does not answer "
                                   "(KafkaConnectionError) since "), text
            assert text.endswith("UTC: what you see stopped then"), text
            state.on_source(True, "Kafka at 127.0.0.1:1")
            page.wait_for_selector("#stale", state="hidden", timeout=15_000)
            assert page.get_attribute("#stale", "data-reason") == ""
            assert errors == []
            servers[0].should_exit = servers[0].force_exit = True  # the server goes away
            page.wait_for_selector("#stale[data-reason='server']", timeout=40_000)
            assert page.inner_text("#stale").startswith("no update from the dashboard "
                                                        "server for ")


@pytest.mark.parametrize(("stations", "center"), [
    # a network around Greenwich: the map used to cut it at 0 degrees (lon in [0, 360))
    ([("BREST", 48.4, -4.5), ("PARIS", 48.8, 2.3), ("MADRID", 40.4, -3.7),
      ("ROMA", 41.9, 12.5), ("REYKJAVIK", 64.1, -21.9)], 355.3),
    # the Pacific stays in one piece
    ([("NUKU", -21.1, -175.2), ("SUVA", -18.1, 178.4), ("APIA", -13.8, -171.8)], 183.3),
])
def test_the_map_keeps_a_network_in_one_piece(stations: list[tuple[str, float, float]],
                                              center: float) -> None:
    """Longitudes were drawn in [0, 360) whatever the network: one around Greenwich was
    torn in two, half at each edge of the map. The central meridian is now opposite the
    widest stretch of longitude without a station (its middle)."""
    with _serving(_fed(stations)) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.wait_for_function(f"document.querySelectorAll('#map path[data-station]')"
                                   f".length === {len(stations)}")
            lon = page.evaluate("window.tocsinCenter()")
            xs = [page.query_selector(f"#map path[data-station='{sid}']").bounding_box()["x"]
                  for sid, _, _ in stations]
        assert errors == []
    assert lon == pytest.approx(center, abs=0.1)
    # at zoom 2 (1024 px round the world) these markers are 35 degrees (100 px) apart at
    # most, not a map width
    assert max(xs) - min(xs) < 200, xs


def test_the_map_chooses_its_meridian_again_as_stations_come() -> None:
    """Live, stations come one by one: the meridian chosen from the first (here at 179 E)
    tore a network around Greenwich that came after it apart."""
    import numpy as np

    from detectors.base import StationInfo
    from streams.schemas import ObservationPacket

    state = _fed([("FIRST", -18.0, 179.0)])
    with _serving(state) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            later = [("BREST", 48.4, -4.5), ("PARIS", 48.8, 2.3), ("ROMA", 41.9, 12.5),
                     ("REYKJAVIK", 64.1, -21.9), ("MADRID", 40.4, -3.7)]
            for sid, lat, lon in later:
                state.add_station(StationInfo(sid, "barometer", lat, lon, 0.0, "hPa"))
                state.on_packet(ObservationPacket(sid, "barometer", "BDO", 1642220685.0, 60.0,
                                                  np.full(10, 1010.0), "hPa", lat=lat,
                                                  lon=lon))
            page.wait_for_function("document.querySelectorAll('#map path[data-station]')"
                                   ".length === 6", timeout=30_000)
            page.wait_for_timeout(300)
            xs = [page.query_selector(f"#map path[data-station='{sid}']").bounding_box()["x"]
                  for sid, _, _ in later]
        assert errors == []
    assert max(xs) - min(xs) < 200, xs


def test_rings_gaps_dates_and_the_selected_station_are_drawn_as_they_are() -> None:
    """The Lamb-wave front around Tonga from about 7 h on (a ring around the antipode)
    jumped 360 degrees between two points: a line across the map. A station's series was
    one line across a 3-h outage, a smooth change that never happened. Alert and revision
    times had no date (a week in view). The station shown left the feed-health table."""
    import numpy as np

    from detectors.base import StationInfo
    from streams.schemas import AlertMessage, ObservationPacket

    t0 = 1642220085.0
    state = _fed([("FJ", -18.1, 178.4), ("NZ", -36.8, 174.8)])
    state.add_station(StationInfo("NUKU", "barometer", -21.1, -175.2, 0.0, "hPa"))
    for start, value in ((t0, 1010.0), (t0 + 4 * 3600, 1012.0)):  # a 3-h outage between
        state.on_packet(ObservationPacket("NUKU", "barometer", "BDO", start, 60.0,
                                          np.full(60, value), "hPa", lat=-21.1, lon=-175.2))
    state.on_alert(AlertMessage(identifier="tocsin.x.r1.alert", msg_type="Alert",
                                sent=t0 + 86400.0, incident_id="x", revision=1,
                                event="Volcanic eruption", severity="Severe",
                                urgency="Expected", certainty="Likely", headline="watch"))
    with _serving(state) as url:
        errors: list[str] = []
        with _page(url, errors) as page:
            page.wait_for_selector("#alerts li[data-alert]", timeout=10_000)
            assert "01-16 04:14:45" in page.inner_text("#alerts")
            steps = page.evaluate("""() => [5, 7, 8, 10, 12, 17].map((h) => {
                const p = circlePoints(-20.55, -175.39, 314 * 3600 * h);
                let most = 0;
                for (let i = 1; i < p.length; i++) {
                  most = Math.max(most, Math.abs(p[i][1] - p[i - 1][1]));
                }
                return most; })""")
            assert max(steps) < 90, steps  # was 311.9-359.7 degrees from 7 h on
            page.dispatch_event("#map path[data-station='NUKU']", "click")
            page.wait_for_selector("#series[data-station='NUKU'] polyline", state="attached",
                                   timeout=10_000)
            assert len(page.query_selector_all("#series polyline")) == 2  # one per stretch
            page.wait_for_selector("#feed tr.selected[data-station='NUKU']", timeout=10_000)
        assert errors == []
