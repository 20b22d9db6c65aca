"""``tocsin map INCIDENT --out map.html``: a standalone folium map of one incident.

The map is one HTML file that opens with no network (an ops room, an e-mail attachment):
Leaflet's JS and CSS are inlined from the dashboard's vendored copies and the coastline is
Natural Earth 1:50m land (the vendored world-atlas TopoJSON), decoded and simplified here.
Folium's default CDN scripts (jQuery, Bootstrap, awesome-markers) are not used; if any
remote script or stylesheet were left in the page, :func:`incident_map` raises instead of
writing a map that would be blank offline.

It shows, from the incident's stored revisions: the source of every revision (the track of
the solution as stations arrived) and the last one, pressure-front isochrones every hour
from the origin at the solved speed (geodesic circles), the stations used and rejected with
their onsets, and the forecast gauges coloured by state (watch, arrived, confirmed).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import folium
import numpy as np
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.base import BaseGeometry

from responders.alerting import is_number
from responders.stage import newness

VENDOR = Path(__file__).parent / "static" / "vendor"
EARTH_RADIUS_KM = 6371.0

COLOURS = {"source": "#c0392b", "track": "#7f8c8d", "front": "#e67e22", "used": "#2471a3",
           "rejected": "#7d3c98", "watch": "#f39c12", "arrived": "#d35400",
           "confirmed": "#1e8449", "seismic": "#17202a"}


class MapError(ValueError):
    """The incident cannot be mapped (unknown id, no located revision)."""


# ---------------------------------------------------------------------- geometry
def destination(lat: float, lon: float, bearing_deg: float,
                distance_km: float) -> tuple[float, float]:
    """The point ``distance_km`` from (lat, lon) along ``bearing_deg`` on a sphere."""
    p1, l1, b = map(math.radians, (lat, lon, bearing_deg))
    d = distance_km / EARTH_RADIUS_KM
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1),
                         math.cos(d) - math.sin(p1) * math.sin(p2))
    return math.degrees(p2), math.degrees(l2)


def geodesic_circle(lat: float, lon: float, radius_km: float,
                    n: int = 180) -> list[tuple[float, float]]:
    """Closed ring of (lat, lon) with longitudes continuous around ``lon`` (no wrap)."""
    ring = []
    for k in range(n + 1):
        la, lo = destination(lat, lon, 360.0 * k / n, radius_km)
        ring.append((la, near(lo, lon)))
    return ring


def near(lon: float, ref: float) -> float:
    """``lon`` shifted by multiples of 360 to lie within 180 degrees of ``ref``."""
    return lon - 360.0 * round((lon - ref) / 360.0)


# ---------------------------------------------------------------------- coastline
def _decode_topojson(topo: dict[str, Any], name: str) -> BaseGeometry:
    """The geometry of ``objects[name]`` of a quantised TopoJSON topology."""
    sx, sy = topo["transform"]["scale"]
    tx, ty = topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        q = np.cumsum(np.asarray(arc, dtype=np.float64), axis=0)
        arcs.append(np.column_stack([q[:, 0] * sx + tx, q[:, 1] * sy + ty]))

    def ring(indices: list[int]) -> np.ndarray:
        parts = [arcs[i] if i >= 0 else arcs[~i][::-1] for i in indices]
        return np.vstack([parts[0]] + [p[1:] for p in parts[1:]])

    polys: list[Polygon] = []

    def add(geom: dict[str, Any]) -> None:
        if geom["type"] == "GeometryCollection":
            for g in geom["geometries"]:
                add(g)
        elif geom["type"] == "Polygon":
            rings = [ring(r) for r in geom["arcs"]]
            polys.append(Polygon(rings[0], rings[1:]))
        elif geom["type"] == "MultiPolygon":
            for p in geom["arcs"]:
                rings = [ring(r) for r in p]
                polys.append(Polygon(rings[0], rings[1:]))

    add(topo["objects"][name])
    return MultiPolygon([p for p in polys if p.is_valid and not p.is_empty])


@cache
def land(tolerance_deg: float = 0.05) -> BaseGeometry:
    topo = json.loads((VENDOR / "world-atlas" / "land-50m.json").read_text())
    return _decode_topojson(topo, "land").simplify(tolerance_deg, preserve_topology=True)


def coastline_geojson(lon_min: float, lon_max: float) -> dict[str, Any]:
    """Land polygons covering longitudes [lon_min, lon_max] (copies shifted by 360)."""
    from shapely import affinity
    from shapely.geometry import box

    features = []
    base = land()
    for shift in (-360.0, 0.0, 360.0):
        window = box(lon_min - shift, -90.0, lon_max - shift, 90.0)
        part = base.intersection(window)
        if part.is_empty:
            continue
        features.append({"type": "Feature", "properties": {},
                         "geometry": mapping(affinity.translate(part, xoff=shift))})
    return {"type": "FeatureCollection", "features": features}


# ---------------------------------------------------------------------- the map
def _iso(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "unknown"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _located(rev: dict[str, Any]) -> bool:
    return rev.get("lat") is not None and rev.get("lon") is not None


def incident_map(revisions: list[dict[str, Any]], detections: list[dict[str, Any]],
                 alerts: list[dict[str, Any]] | None = None) -> folium.Map:
    """The folium map of one incident from its stored revision bodies (oldest first)."""
    live = [r for r in revisions if r.get("status") != "retracted"]
    located = [r for r in live if _located(r)]
    if not located:
        raise MapError("the incident has no revision with a source position")
    last = live[-1] if _located(live[-1]) else located[-1]
    inc_id = last["incident_id"]
    lat0, lon0 = float(last["lat"]), float(last["lon"])
    m = folium.Map(location=[lat0, lon0], zoom_start=3, tiles=None, world_copy_jump=False,
                   prefer_canvas=False, control_scale=True)
    # only Leaflet: no jQuery/Bootstrap/awesome-markers (each would be a CDN request)
    m.default_js = [("leaflet", "https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js")]
    m.default_css = [("leaflet_css",
                      "https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.css")]

    points: list[tuple[float, float]] = [(lat0, lon0)]
    forecasts = last.get("forecasts", [])
    for f in forecasts:
        if f.get("lat") is not None:
            points.append((float(f["lat"]), near(float(f["lon"]), lon0)))
    lons = [p[1] for p in points]
    pad = max(0.0, (360.0 - (max(lons) - min(lons))) / 2.0)  # the whole world, once
    folium.GeoJson(coastline_geojson(min(lons) - pad, max(lons) + pad), name="coastline",
                   style_function=lambda _: {"color": "#5d6d7e", "weight": 0.8,
                                             "fillColor": "#d5d8dc", "fillOpacity": 0.6},
                   interactive=False).add_to(m)

    # pressure-front isochrones, every hour up to the furthest forecast gauge
    speed = last.get("speed_m_s")
    origin = last.get("origin_time_s")
    fronts = folium.FeatureGroup(name="pressure front (hourly)")
    if speed and origin is not None:
        far_s = max((float(f["eta_s"]) - float(origin) for f in forecasts), default=3 * 3600.0)
        for h in range(1, int(math.ceil(far_s / 3600.0)) + 1):
            radius_km = float(speed) * h * 3600.0 / 1000.0
            if radius_km >= math.pi * EARTH_RADIUS_KM:
                break
            ring = geodesic_circle(lat0, lon0, radius_km)
            folium.PolyLine(ring, color=COLOURS["front"], weight=1.5, opacity=0.8,
                            dash_array="6 4",
                            tooltip=_tip(f"front at origin + {h} h "
                                         f"({_iso(float(origin) + h * 3600)})")
                            ).add_to(fronts)
    fronts.add_to(m)

    # the solution track, revision by revision
    track = [(float(r["lat"]), near(float(r["lon"]), lon0)) for r in located]
    if len(track) > 1:
        folium.PolyLine(track, color=COLOURS["track"], weight=2).add_to(m)
    for r in located[:-1]:
        folium.CircleMarker((float(r["lat"]), near(float(r["lon"]), lon0)), radius=4,
                            color=COLOURS["track"], fill=True, fill_opacity=0.8,
                            tooltip=_tip(f"revision {r['revision']} issued "
                                         f"{_iso(r['issued_s'])}")
                            ).add_to(m)

    # stations: used (blue), rejected (purple), with their onsets
    keys = set(last.get("detections", []))
    by_station = {d["station_id"]: d for d in detections if d["key"] in keys}
    stations = folium.FeatureGroup(name="stations")
    for sid in [*last.get("stations_used", []), *last.get("rejected", [])]:
        d = by_station.get(sid)
        if d is None or d.get("lat") is None:
            continue
        used = sid in last.get("stations_used", [])
        folium.CircleMarker(
            (float(d["lat"]), near(float(d["lon"]), lon0)), radius=6,
            color=COLOURS["used" if used else "rejected"], fill=True, fill_opacity=0.9,
            tooltip=_tip(f"{sid} ({d['kind']}): onset {_iso(d['onset'])}, "
                         f"{d['amplitude']:.3g} {d['units']}"
                         + ("" if used else " - rejected as an outlier")),
        ).add_to(stations)
    stations.add_to(m)

    # forecast gauges: watch / arrived (ETA passed at the last revision) / confirmed
    gauges = folium.FeatureGroup(name="ETA watches")
    confirmed = set(last.get("confirmed", []))
    for f in forecasts:
        if f.get("lat") is None:
            continue
        state = ("confirmed" if f["station_id"] in confirmed
                 else "arrived" if float(f["eta_s"]) <= float(last["issued_s"]) else "watch")
        folium.CircleMarker(
            (float(f["lat"]), near(float(f["lon"]), lon0)), radius=5,
            color=COLOURS[state], fill=True, fill_opacity=0.9,
            tooltip=_tip(f"{f['station_id']} ({f['kind']}): {state}, "
                         f"Lamb-wave ETA {_iso(f['eta_s'])}, "
                         f"{f['distance_km']:.0f} km"),
        ).add_to(gauges)
    gauges.add_to(m)

    # the seismic event that joined the incident: epicentre and its 68 % uncertainty
    seis = (last.get("extra") or {}).get("seismic")
    if seis and seis.get("lat") is not None:
        slat, slon = float(seis["lat"]), near(float(seis["lon"]), lon0)
        herr = seis.get("herr_km")  # null on the wire when unknown (NaN)
        known = isinstance(herr, int | float) and math.isfinite(herr)
        tip = _tip(f"seismic event {seis['event_id']} (revision {seis['revision']}): "
                   f"origin {_iso(seis['origin_time'])}, depth {seis['depth_km']} km, "
                   + (f"± {herr} km, " if known else "error unknown, ")
                   + f"{len(seis.get('stations', []))} stations")
        layer = folium.FeatureGroup(name="seismic event")
        folium.PolyLine(geodesic_circle(slat, slon, max(float(herr), 1.0) if known else 1.0),
                        color=COLOURS["seismic"], weight=1, tooltip=tip).add_to(layer)
        # (a CircleMarker: folium's RegularPolygonMarker needs a plugin from a CDN)
        folium.CircleMarker((slat, slon), radius=7, color=COLOURS["seismic"], weight=3,
                            fill=True, fill_color="#ffffff", fill_opacity=1.0,
                            tooltip=tip).add_to(layer)
        layer.add_to(m)

    # where the source may be (95 %), or a warning that the stations do not bound it
    extra = last.get("extra") or {}
    err = extra.get("source_error_km")
    # free JSON off the topic: text stopped the map, NaN drew no circle but "within nan km"
    bound = ""
    if is_number(err):
        folium.PolyLine(geodesic_circle(lat0, lon0, float(err)), color=COLOURS["source"],
                        weight=1, tooltip=_tip(f"source within {err:.0f} km (95 %)")).add_to(m)
        bound = f"<br>source within {err:.0f} km (95 %)"
    elif "source_error_km" in extra and err is None:
        bound = "<br>source NOT bounded: the stations fix the front's direction only"
    # the source of the last revision, on top
    popup = (f"<b>{html.escape(inc_id)}</b><br>{html.escape(last['type'])}, "
             f"{html.escape(last['status'])}, revision {last['revision']}<br>"
             f"origin {_iso(origin)}<br>{lat0:.3f}, {lon0:.3f}"
             + (f"<br>speed {float(speed):.1f} m/s" if speed else "")
             + f"<br>{len(last.get('stations_used', []))} stations used, "
             f"{len(forecasts)} ETA watches" + bound)
    # a tooltip, not a folium.Popup: folium builds popups with jQuery (a CDN script)
    folium.CircleMarker((lat0, lon0), radius=9, color=COLOURS["source"], fill=True,
                        fill_opacity=1.0, tooltip=folium.Tooltip(_js_safe(popup))).add_to(m)

    root: Any = m.get_root()  # a branca Figure
    root.html.add_child(folium.Element(_legend(last, alerts or [])))
    folium.LayerControl(collapsed=True).add_to(m)
    m.fit_bounds([[min(p[0] for p in points) - 5, min(lons) - 5],
                  [max(p[0] for p in points) + 5, max(lons) + 5]])
    return m


def _legend(last: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<div><span style="display:inline-block;width:10px;height:10px;border-radius:5px;'
        f'background:{COLOURS[k]};margin-right:6px"></span>{label}</div>'
        for k, label in (("source", "source (last revision)"), ("track", "earlier solutions"),
                         ("front", "pressure front, hourly"), ("used", "station used"),
                         ("rejected", "station rejected"), ("watch", "ETA watch"),
                         ("arrived", "ETA passed"), ("confirmed", "sea level confirmed"),
                         ("seismic", "seismic epicentre")))
    sent = ""
    if alerts:
        kinds: dict[str, int] = {}
        for a in alerts:
            kinds[a["msg_type"]] = kinds.get(a["msg_type"], 0) + 1
        sent = (f"<div>{', '.join(f'{n} {k}' for k, n in kinds.items())}</div>"
                f"<div>first {html.escape(_iso(alerts[0]['sent']))}</div>"
                f"<div>last {html.escape(_iso(alerts[-1]['sent']))} "
                f"({html.escape(alerts[-1]['identifier'])})</div>")
    return (
        '<div id="tocsin-legend" style="position:fixed;bottom:28px;right:12px;z-index:1000;'
        'background:white;padding:8px 10px;border:1px solid #999;font:12px sans-serif">'
        f'<b>{html.escape(last["incident_id"])}</b><br>{html.escape(last["type"])} - '
        f'{html.escape(last["status"])} (revision {last["revision"]}, issued '
        f'{html.escape(_iso(last["issued_s"]))})<hr style="margin:4px 0">{rows}'
        + (f'<hr style="margin:4px 0"><b>CAP alerts</b>{sent}' if sent else "")
        + "</div>"
    )


def _js_safe(markup: str) -> str:
    """``markup`` (HTML) safe inside the JavaScript template literal folium puts tooltips
    in: a station id with a backtick, ``${...}`` or a backslash ran as script there, or
    left the map blank; ``html.escape`` does not touch them."""
    return markup.replace("\\", "&#92;").replace("`", "&#96;").replace("$", "&#36;")


def _tip(text: str) -> str:
    """Plain ``text`` as a tooltip: escaped for HTML, and for the template literal."""
    return _js_safe(html.escape(text))


_REMOTE = re.compile(r'<(script|link)\b[^>]*(?:src|href)="(https?:)?//[^"]+"[^>]*>(</script>)?')


def standalone_html(m: folium.Map) -> str:
    """The map's HTML with Leaflet inlined; raises if anything would load from the net."""
    page = m.get_root().render()
    css = re.sub(r"url\((images/[\w.-]+\.png)\)", lambda u: "url(data:image/png;base64,"
                 + base64.b64encode((VENDOR / "leaflet" / u.group(1)).read_bytes()).decode()
                 + ")", (VENDOR / "leaflet" / "leaflet.css").read_text())
    vendor = {"leaflet.js": (VENDOR / "leaflet" / "leaflet.js").read_text(), "leaflet.css": css}

    def inline(match: re.Match[str]) -> str:
        tag = match.group(0)
        name = re.search(r'(?:src|href)="[^"]*/([^"/]+)"', tag)
        asset = vendor.get(name.group(1) if name else "")
        if asset is None:
            raise MapError(f"the map would load {tag!r} from the network")
        if match.group(1) == "script":
            return f"<script>{asset}</script>"
        return f"<style>{asset}</style>"

    # every remote <script>/<link> is replaced (or refused) before any asset goes in
    return _REMOTE.sub(inline, page)


def shown_url(db_url: str) -> str:
    """``db_url`` with its password, if any, as ``***`` (it goes into error messages)."""
    from sqlalchemy.engine import make_url

    return make_url(db_url).render_as_string(hide_password=True)


def write_incident_map(db_url: str, incident_id: str, out: Path) -> Path:
    """Read the incident from the store and write its standalone map to ``out``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from responders.store import Store

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).is_file():
        # the store would make the file (and its folders) to say it holds nothing
        raise MapError(f"{shown_url(db_url)}: no such database file (nothing stored yet?)")
    store = Store(db_url, migrate_schema=False)
    try:
        try:
            revisions = store.revisions(incident_id)
        except (OperationalError, ProgrammingError) as exc:
            text = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            # no tables yet: SQLite's, and PostgreSQL's undefined table (not its "database
            # does not exist" or "role does not exist", which are no empty store)
            if "no such table" in text or type(exc.orig).__name__ == "UndefinedTable":
                raise MapError(f"{shown_url(db_url)} holds no tocsin incidents (nothing "
                               "stored there yet?)") from None
            raise MapError(f"{shown_url(db_url)} cannot be read: {text}") from None
        if not revisions:
            known = [i["incident_id"] for i in store.incidents()]
            raise MapError(f"no incident {incident_id!r} in {shown_url(db_url)} (known: "
                           f"{known or 'none'})")
        detections = store.detections()
        alerts = [a for a in store.alerts(limit=10_000) if a["incident_id"] == incident_id]
    finally:
        store.close()
    keys = newness((a["identifier"], a["revision"], a["sent"], a["references"]) for a in alerts)
    alerts.sort(key=lambda a: (keys[a["identifier"]], a["identifier"]))
    page = standalone_html(incident_map(revisions, detections, alerts))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
