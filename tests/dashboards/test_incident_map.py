"""`tocsin map INCIDENT --out map.html`: a standalone incident map that works offline.

The Tonga scenario goes through ``tocsin detect --save`` into a SQLite store; the map of
its incident must carry no remote script or stylesheet, and must draw (in Debian chromium
with every network request refused) the coastline, the source, the hourly front circles,
the stations and the ETA watches, with no console error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dashboards.incident_map import (
    MapError,
    coastline_geojson,
    geodesic_circle,
    incident_map,
    standalone_html,
)
from detectors.geo import great_circle_km
from tests.conftest import OUTPUT, missing
from tocsin.cli import main

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def _home(home: Path) -> Iterator[None]:
    old = os.environ.get("TOCSIN_HOME")
    os.environ["TOCSIN_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOCSIN_HOME")
        else:
            os.environ["TOCSIN_HOME"] = old


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    home = tmp_path_factory.mktemp("home")
    with _home(home):
        assert main(["detect", "tonga2022", "--report", str(home / "r.json"), "--save"]) == 0
    return home, json.loads((home / "r.json").read_text())


def _map(saved: tuple[Path, dict], out: Path, incident: str | None = None) -> int:  # type: ignore[type-arg]
    home, report = saved
    with _home(home):
        return main(["map", incident or report["incidents"][0]["id"], "--out", str(out)])


def test_geodesic_circle_is_at_the_radius_across_the_antimeridian() -> None:
    ring = geodesic_circle(-20.546, -175.390, 5000.0)
    d = [great_circle_km(-20.546, -175.390, la, lo) for la, lo in ring]
    assert max(abs(x - 5000.0) for x in d) < 1.0
    lons = [lo for _, lo in ring]
    # continuous around the source: no jump of ~360 degrees between neighbours
    assert max(abs(a - b) for a, b in zip(lons, lons[1:], strict=False)) < 10.0
    assert max(lons) > -180.0 + 30 and min(lons) < -175.39 - 30


def test_coastline_covers_both_sides_of_the_antimeridian() -> None:
    gj = coastline_geojson(120.0, 200.0)  # Japan to Tonga, unwrapped
    assert gj["features"]
    text = json.dumps(gj)
    lons = [float(x) for x in re.findall(r"\[(-?\d+\.?\d*), -?\d+\.?\d*\]", text)]
    assert min(lons) >= 120.0 - 1e-6 and max(lons) <= 200.0 + 1e-6
    assert any(x > 180.0 for x in lons), "Tongan islands shifted to +185 E are missing"
    assert any(130.0 < x < 145.0 for x in lons), "Japan is missing"


def test_map_of_the_tonga_incident_is_standalone(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "map.html"
    assert _map(saved, out) == 0
    page = out.read_text()
    assert not re.search(r'<(script|link)\b[^>]*(src|href)="(https?:)?//', page)
    assert "L.map(" in page and "leafletjs.com" in page  # Leaflet itself, inlined
    report = saved[1]
    inc = report["incidents"][0]
    assert inc["id"] in page and "volcanic_eruption" in page
    # every forecast gauge and every station used by the last revision is drawn
    last = inc["revisions"][-1]["solution"]
    for sid in last["stations_used"]:
        assert f"{sid} (" in page, sid
    for f in inc["forecasts"]:
        assert f"{f['station_id']} (" in page, f["station_id"]
    assert page.count("front at origin + ") >= 6  # Japan is 7+ hours of Lamb wave away
    # the source's 95 % region, from the last revision's bound
    assert f"source within {last['error_km']:.0f} km (95 %)" in page


def test_map_unknown_incident_names_it_and_the_known_ones(saved, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          capsys) -> None:
    assert _map(saved, tmp_path / "x.html", "eruption-nope") == 2
    err = capsys.readouterr().err
    assert "eruption-nope" in err and saved[1]["incidents"][0]["id"] in err
    assert not (tmp_path / "x.html").exists()


def test_map_refuses_remote_assets() -> None:
    import folium

    m = folium.Map()  # folium's defaults: jQuery, Bootstrap... from CDNs
    with pytest.raises(MapError, match="from the network"):
        standalone_html(m)
    with pytest.raises(MapError, match="no revision with a source"):
        incident_map([{"incident_id": "x", "status": "detected", "lat": None, "lon": None}],
                     [])


def test_map_renders_offline_in_chromium(saved, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        missing("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    out = OUTPUT / "incident-map"
    out.mkdir(parents=True, exist_ok=True)
    html_file = out / "map.html"
    assert _map(saved, html_file) == 0
    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 850})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def refuse(route) -> None:  # type: ignore[no-untyped-def]
            if not route.request.url.startswith(("file:", "data:")):
                requested.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        page.route("**/*", refuse)
        page.goto(html_file.as_uri())
        page.wait_for_selector("path.leaflet-interactive", timeout=30_000)
        # coastline polygons, front circles, station and gauge markers are SVG paths
        n_paths = page.evaluate("document.querySelectorAll('path.leaflet-interactive').length")
        page.hover("#tocsin-legend")
        page.screenshot(path=str(out / "map.png"))
        legend = page.inner_text("#tocsin-legend")
        browser.close()
    inc = saved[1]["incidents"][0]
    assert n_paths >= len(inc["forecasts"]) + 6
    assert inc["id"] in legend and "Alert" in legend
    assert requested == [], requested
    assert errors == [], errors


def test_map_draws_the_seismic_event_of_the_incident() -> None:
    rev = {"incident_id": "eruption-x", "type": "volcanic_eruption", "status": "watch",
           "revision": 2, "issued_s": 1642221000.0, "lat": -20.55, "lon": -175.39,
           "origin_time_s": 1642220085.0, "speed_m_s": 315.0, "forecasts": [],
           "detections": [], "stations_used": [], "rejected": [], "confirmed": [],
           "extra": {"seismic": {"event_id": "seismic-20220115T041445-abc123", "revision": 3,
                                 "lat": -20.6, "lon": -175.3, "depth_km": 10.0,
                                 "origin_time": 1642220086.0, "rms_s": 0.4, "herr_km": 12.0,
                                 "stations": ["A", "B", "C", "D"]}}}
    page = standalone_html(incident_map([rev], []))
    assert "seismic event seismic-20220115T041445-abc123 (revision 3)" in page
    assert "seismic epicentre" in page  # in the legend
    without = standalone_html(incident_map([{**rev, "extra": {}}], []))
    assert "seismic event" not in without
    # herr_km is null on the wire when unknown: float(None) stopped the map
    seis = {**rev["extra"]["seismic"], "herr_km": None}  # type: ignore[index]
    unknown = standalone_html(incident_map([{**rev, "extra": {"seismic": seis}}], []))
    assert "depth 10.0 km, error unknown, 4 stations" in unknown


@pytest.mark.parametrize("bad", ["far", True, math.nan, math.inf],
                         ids=["text", "bool", "nan", "inf"])
def test_a_source_bound_that_is_not_a_number_is_left_off_the_map(bad: object) -> None:
    """``extra`` is free JSON off the incidents topic: a bound given as text stopped the
    map (ValueError), ``true`` drew "source within 1 km", NaN said "within nan km"."""
    rev = {"incident_id": "eruption-x", "type": "volcanic_eruption", "status": "watch",
           "revision": 2, "issued_s": 1642221000.0, "lat": -20.55, "lon": -175.39,
           "origin_time_s": 1642220085.0, "speed_m_s": 315.0, "forecasts": [],
           "detections": [], "stations_used": [], "rejected": [], "confirmed": [],
           "extra": {"source_error_km": bad}}
    page = standalone_html(incident_map([rev], []))
    assert "source within" not in page and "source NOT bounded" not in page
    assert "eruption-x" in page
    good = standalone_html(incident_map([{**rev, "extra": {"source_error_km": 42.0}}], []))
    assert "source within 42 km (95 %)" in good
    unbounded = standalone_html(incident_map([{**rev, "extra": {"source_error_km": None}}],
                                             []))
    assert "source NOT bounded" in unbounded


def test_a_hostile_station_id_is_text_in_the_map_not_script(tmp_path: Path) -> None:
    """folium puts tooltips in a JavaScript template literal: ``html.escape`` left
    backticks, ``${...}`` and backslashes alone, so a station id from a package or a
    registry ran as script when the map was opened (or, with a backslash, left it blank)."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        missing("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    evil = "X${document.title='pwned'}`\\"
    rev = {"incident_id": "eruption-${1+1}", "type": "volcanic_eruption", "status": "watch",
           "revision": 2, "issued_s": 1642221000.0, "lat": -20.55, "lon": -175.39,
           "origin_time_s": 1642220085.0, "speed_m_s": 315.0,
           "forecasts": [{"station_id": evil, "kind": "tide_gauge", "eta_s": 1642230000.0,
                          "distance_km": 3000.0, "lat": -10.0, "lon": -170.0}],
           "detections": [], "stations_used": [], "rejected": [], "confirmed": [],
           "extra": {}}
    page_file = tmp_path / "map.html"
    page_file.write_text(standalone_html(incident_map([rev], [])))
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_selector("path.leaflet-interactive", timeout=30_000)
        title = page.title()
        tips = page.evaluate("""() => {
            const out = [];
            map_layers: for (const k in window) {
              const m = window[k];
              if (m && m._layers) {
                for (const id in m._layers) {
                  const t = m._layers[id].getTooltip && m._layers[id].getTooltip();
                  if (t) out.push(t.getContent());
                }
                break map_layers;
              }
            }
            return out;
          }""")
        browser.close()
    assert errors == [] and title != "pwned", (errors, title)
    shown = [t for t in tips if "tide_gauge" in t]
    assert len(shown) == 1 and "&#36;{document.title=&#x27;pwned&#x27;}&#96;&#92;" in shown[0]


def test_the_legend_names_the_last_revision_of_alerts_sent_within_one_second(
        tmp_path: Path) -> None:
    """The map sorted the incident's alerts by (sent, identifier): as text r11 comes before
    r9, and the legend's "last" named r9, a superseded Update."""
    from dashboards.incident_map import write_incident_map
    from responders.store import Store
    from streams.schemas import AlertMessage, IncidentRevision

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    rev = IncidentRevision("eruption-1", "volcanic_eruption", 11, 1642221000.0, "watch",
                           1642220085.0, -20.55, -175.39, 314.0, ("x",), ("A", "B", "C", "D"))
    store.save_all([rev])
    store.save_all([AlertMessage(identifier=f"tocsin.eruption-1.r{n}.update", msg_type="Update",
                                 sent=1642221000.0, incident_id="eruption-1", revision=n,
                                 event="Volcanic eruption", severity="Severe",
                                 urgency="Expected", certainty="Likely", headline="h")
                    for n in (11, 9, 10)])
    store.close()
    page = write_incident_map(url, "eruption-1", tmp_path / "m.html").read_text()
    assert "(tocsin.eruption-1.r11.update)</div>" in page
