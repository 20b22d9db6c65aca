// tocsin duty dashboard: live state over server-sent events, drawn with Leaflet.
"use strict";

const COLORS = { ok: "#2a7d2e", detecting: "#c0392b", late: "#e67e22", gap: "#7d3c98",
                 waiting: "#95a5a6" };
const EARTH_R = 6371008.8;
const map = L.map("map", { worldCopyJump: false, preferCanvas: false })
  .setView([0, 180], 2);
const stationLayer = L.layerGroup().addTo(map);
const incidentLayer = L.layerGroup().addTo(map);
const markers = new Map();
let selected = null;
let last = null;

// every longitude is drawn within 180 degrees of the map's central meridian, chosen when
// the stations first come so that the cut (center +- 180) falls in the widest stretch of
// longitude without a station: a network around Greenwich is not torn in two as the Pacific
// would be by [-180, 180), and the incidents and forecasts sit next to their stations
let center = null;
const wrap = (lon) => {
  const c = center === null ? 180 : center;
  return c - 180 + ((((lon - c + 180) % 360) + 360) % 360);
};

let centerFrom = 0;  // how many stations the meridian was chosen from

function chooseCenter(stations) {
  // again whenever stations come that it has not seen (a live feed, read back station by
  // station): a meridian chosen from the first few could tear the rest apart
  if (!stations.length || stations.length === centerFrom) return;
  centerFrom = stations.length;
  const lons = stations.map((s) => ((s.lon % 360) + 360) % 360).sort((a, b) => a - b);
  let cut = 0, widest = -1;
  for (let i = 0; i < lons.length; i++) {
    const next = i + 1 < lons.length ? lons[i + 1] : lons[0] + 360;
    if (next - lons[i] > widest) { widest = next - lons[i]; cut = lons[i] + widest / 2; }
  }
  const chosen = ((cut + 180) % 360 + 360) % 360;
  if (center !== null && Math.abs(((chosen - center + 540) % 360) - 180) < 1) return;
  center = chosen;
  for (const s of stations) {  // markers already drawn move to the new meridian
    const m = markers.get(s.station_id);
    if (m) m.setLatLng([s.lat, wrap(s.lon)]);
  }
  map.setView([map.getCenter().lat, center], map.getZoom());
}

fetch("/static/vendor/world-atlas/land-50m.json")
  .then((r) => r.json())
  .then((topo) => {
    const land = topojson.feature(topo, topo.objects.land);
    const style = { color: "#7a8a78", weight: 0.6, fillColor: "#eef0e6", fillOpacity: 1 };
    for (const shift of [-360, 0, 360]) {
      L.geoJSON(land, { style, interactive: false,
        coordsToLatLng: (c) => L.latLng(c[1], c[0] + shift) }).addTo(map).bringToBack();
    }
  });

// a time as month-day and time of day (UTC): the view holds a week, and the time of day
// alone made two alerts a day apart look the same
function fmt(iso) { return iso ? `${iso.slice(5, 10)} ${iso.slice(11, 19)}` : "-"; }

function circlePoints(lat, lon, radiusM) {
  // a great circle of the given radius around (lat, lon), as a polyline
  const pts = [], d = radiusM / EARTH_R, la = lat * Math.PI / 180, lo = lon * Math.PI / 180;
  for (let i = 0; i <= 180; i++) {
    const b = (2 * Math.PI * i) / 180;
    const la2 = Math.asin(Math.sin(la) * Math.cos(d) + Math.cos(la) * Math.sin(d) * Math.cos(b));
    const lo2 = lo + Math.atan2(Math.sin(b) * Math.sin(d) * Math.cos(la),
                                Math.cos(d) - Math.sin(la) * Math.sin(la2));
    pts.push([la2 * 180 / Math.PI, lo2 * 180 / Math.PI]);
  }
  // unwrap: the first point within 180 degrees of the source as drawn, each next one within
  // 180 of the point before (forced within 180 of the source, a ring around a pole or the
  // antipode, the Tonga front from about 7 h on, jumped 360 degrees: a line across the map)
  let prev = wrap(lon);
  return pts.map(([a, b]) => { prev += ((((b - prev + 180) % 360) + 360) % 360) - 180;
                               return [a, prev]; });
}

// a ring's line with its copies a turn east and west (as the coastline), since an unwrapped
// ring may run past the map's edge; the copy in place is returned
function ringLine(pts, options) {
  let here = null;
  for (const shift of [-360, 0, 360]) {
    const line = L.polyline(pts.map(([a, b]) => [a, b + shift]), options).addTo(incidentLayer);
    if (shift === 0) here = line;
  }
  return here;
}

function drawStations(stations) {
  for (const s of stations) {
    let m = markers.get(s.station_id);
    if (!m) {
      m = L.circleMarker([s.lat, wrap(s.lon)], { radius: 5, weight: 1, color: "#222",
                                                 fillOpacity: 0.9 })
        .bindTooltip(tip(s.station_id)).addTo(stationLayer);
      m.on("click", () => selectStation(s.station_id));
      markers.set(s.station_id, m);
    }
    m.setStyle({ fillColor: COLORS[s.state] || "#999" });
    m.options.stationState = s.state;
    const el = m.getElement();
    if (el) { el.setAttribute("data-station", s.station_id);
              el.setAttribute("data-state", s.state); }
  }
}

function drawIncidents(state) {
  incidentLayer.clearLayers();
  const now = state.event_time_s;
  for (const inc of state.incidents) {
    if (inc.lat === null) continue;
    const src = L.circleMarker([inc.lat, wrap(inc.lon)], { radius: 9, color: "#b00020",
      weight: 3, fillColor: "#ffdd00", fillOpacity: 1 })
      .bindTooltip(tip(`${inc.type} ${inc.id}`)).addTo(incidentLayer);
    const el = src.getElement();
    if (el) el.setAttribute("data-incident", inc.id);
    if (inc.source_error_km) {  // where the source may be (95 %)
      const ring = ringLine(circlePoints(inc.lat, inc.lon, inc.source_error_km * 1000),
        { color: "#b00020", weight: 1, interactive: false });
      const re = ring.getElement();
      if (re) re.setAttribute("data-source-error", inc.id);
    }
    if (inc.speed_m_s && inc.origin_time_s !== null && now > inc.origin_time_s) {
      const r = inc.speed_m_s * (now - inc.origin_time_s);
      if (r < Math.PI * EARTH_R) {
        ringLine(circlePoints(inc.lat, inc.lon, r), { color: "#b00020", weight: 2,
          dashArray: "6 4", interactive: false });
      }
    }
    for (const f of inc.forecasts) {
      if (f.lat === null) continue;
      const color = f.state === "confirmed" ? "#b00020" : f.state === "arrived" ? "#e67e22"
                                                                               : "#f1c40f";
      L.circleMarker([f.lat, wrap(f.lon)], { radius: 8, color, weight: 2, fill: false })
        .bindTooltip(tip(`${f.station_id}: ${f.state}, ETA ${f.eta.slice(0, 19)}Z`))
        .addTo(incidentLayer);
    }
  }
}

function drawSeismic(state) {
  for (const ev of state.seismic_events || []) {
    const mag = ev.magnitude === null ? "" : `M${ev.magnitude.toFixed(1)}, `;
    if (ev.herr_km !== null) {  // unknown: no ring (a 1-km one looked precise)
      ringLine(circlePoints(ev.lat, ev.lon, Math.max(ev.herr_km, 1) * 1000),
        { color: "#17202a", weight: 1, interactive: false });
    }
    const m = L.circleMarker([ev.lat, wrap(ev.lon)], { radius: 7, color: "#17202a", weight: 3,
      fillColor: "#ffffff", fillOpacity: 1 })
      .bindTooltip(tip(`seismic ${ev.event_id} rev ${ev.revision}: ${mag}depth ` +
                       `${ev.depth_km} km, origin ${fmt(ev.origin_time)}, ${ev.stations} stations`))
      .addTo(incidentLayer);
    const e = m.getElement();
    if (e) e.setAttribute("data-seismic", ev.event_id);
  }
}

// a tooltip's content as a text node: Leaflet puts a string into innerHTML, and station ids
// and incident fields come from feeds and packages
function tip(text) {
  return el("span", {}, text);
}

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
}

const REVISIONS_SHOWN = 5;  // an incident's newest revisions in its box; the rest fold
const openOlder = new Set();  // incidents whose earlier revisions the user unfolded

function drawPanels(state) {
  document.getElementById("event-time").textContent =
    state.event_time ? state.event_time.replace("T", " ").slice(0, 19) + " UTC" : "-";
  document.getElementById("title").textContent = state.title || "";
  const h = state.health, parts = Object.entries(h.states).map(([k, v]) => `${v} ${k}`);
  document.getElementById("health").textContent =
    `${h.stations} stations (${parts.join(", ")}), ${h.detections} detections` +
    (h.unplaced_stations && h.unplaced_stations.length
      ? `; not on the map (no coordinates): ${h.unplaced_stations.join(", ")}` +
        (h.unplaced_count > h.unplaced_stations.length
          ? ` and ${h.unplaced_capped ? "at least " : ""}` +
            `${h.unplaced_count - h.unplaced_stations.length} more` : "")
      : "");

  const incs = document.getElementById("incidents");
  incs.replaceChildren();
  if (!state.incidents.length) incs.append(el("p", { class: "empty" }, "none"));
  for (const inc of state.incidents) {
    const box = el("div", { class: "incident", "data-incident": inc.id });
    box.append(el("h3", { class: `status-${inc.status}` },
      `${inc.type} [${inc.status}] ${inc.id}`));
    const where = inc.lat === null ? "" :
      `${inc.lat.toFixed(2)}, ${inc.lon.toFixed(2)}` +
      (inc.origin_time ? `, origin ${fmt(inc.origin_time)}` : "") +
      (inc.speed_m_s ? `, ${inc.speed_m_s.toFixed(0)} m/s` : "") +
      (inc.source_error_km ? `, source within ${inc.source_error_km.toFixed(0)} km (95 %)`
                           : "");
    box.append(el("div", {}, where));
    if (inc.source_unbounded) {
      box.append(el("div", { class: "warning" }, "The stations fix the direction of the " +
        "front, not the distance of its source: position and ETAs may be far off."));
    }
    const watches = inc.forecasts.filter((f) => f.state === "watch").length;
    box.append(el("div", {}, `${inc.forecasts.length} ETA watches (${watches} pending), ` +
      `${inc.confirmed.length} confirmed, evidence: ${inc.evidence.join(", ")}`));
    // the newest revisions first: the Tonga run has 79, and oldest first pushed the
    // latest and the alert list a screen down; the older ones fold away
    const revs = inc.revisions.slice().sort((a, b) => b.revision - a.revision);
    const table = (rows) => {
      const t = el("table", { class: "revisions" });
      t.append(el("tr", {}, ""));
      t.firstChild.append(el("th", {}, "rev"), el("th", {}, "issued"),
                          el("th", {}, "status"), el("th", {}, "stations"));
      for (const r of rows) {
        const tr = el("tr", { "data-revision": String(r.revision) });
        tr.append(el("td", {}, String(r.revision)), el("td", {}, fmt(r.issued)),
                  el("td", {}, r.status), el("td", {}, String(r.stations_used)));
        t.append(tr);
      }
      return t;
    };
    box.append(table(revs.slice(0, REVISIONS_SHOWN)));
    if (revs.length > REVISIONS_SHOWN) {
      const more = el("details", { class: "older" });
      if (openOlder.has(inc.id)) more.open = true;  // the page redraws every few seconds
      more.addEventListener("toggle", () => {
        if (more.open) openOlder.add(inc.id); else openOlder.delete(inc.id);
      });
      more.append(el("summary", {}, `${revs.length - REVISIONS_SHOWN} earlier revisions`),
                  table(revs.slice(REVISIONS_SHOWN)));
      box.append(more);
    }
    incs.append(box);
  }

  const al = document.getElementById("alerts");
  al.replaceChildren();
  if (!state.alerts.length) al.append(el("li", { class: "empty" }, "none"));
  for (const a of state.alerts.slice().reverse()) {
    const li = el("li", { "data-alert": a.identifier });
    const link = el("a", { href: `/api/alerts/${encodeURIComponent(a.identifier)}.xml` },
                    `CAP ${a.msgType}`);
    li.append(link, document.createTextNode(
      ` ${fmt(a.sent)} ${a.severity}/${a.urgency}: ${a.headline}`));
    al.append(li);
  }

  const lag = state.health.consumer_lag;
  if (lag) {
    const parts = Object.entries(lag.topics).map(([t, n]) => `${t} ${n}`).join(", ");
    const p = document.getElementById("lag");
    p.textContent = `consumer lag: ${lag.total} messages (${parts}), ` +
      `${lag.age_s} s ago`;
    p.dataset.total = String(lag.total);
  }

  const body = document.querySelector("#feed tbody");
  body.replaceChildren();
  const rows = state.stations.slice().sort((a, b) => (b.behind_s || 0) - (a.behind_s || 0));
  for (const s of rows.slice(0, 40)) {  // the one shown stays, marked (it dropped out)
    const tr = el("tr", { "data-station": s.station_id, title: "show its time series" });
    if (s.station_id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => selectStation(s.station_id));
    tr.append(el("td", {}, s.station_id), el("td", { class: `state-${s.state}` }, s.state),
              el("td", {}, s.behind_s === null ? "-" : `${Math.round(s.behind_s / 60)} min`),
              el("td", {}, String(s.missing)));
    body.append(tr);
  }
}

async function selectStation(id) {
  selected = id;
  await drawSeries();
}

// the series' bins are a minute; a step longer than this is a gap in the record
const SERIES_GAP_S = 90;

async function drawSeries() {
  if (!selected) return;
  const id = selected;
  const title = document.getElementById("series-title");
  const svg = document.getElementById("series");
  const r = await fetch(`/api/stations/${encodeURIComponent(id)}/series`);
  if (id !== selected) return;  // another station was chosen meanwhile: its answer wins
  if (!r.ok) {  // the last station's plot stayed, under its own title
    title.textContent = `${id}: no series (${r.status})`;
    svg.replaceChildren();
    svg.setAttribute("data-station", id);
    return;
  }
  const s = await r.json();
  if (id !== selected) return;
  title.textContent = `${s.station_id} (${s.kind}, ${s.units})`;
  svg.replaceChildren();
  svg.setAttribute("data-station", s.station_id);
  if (s.t.length < 2) return;
  // to the view's event time: a station that stopped hours ago must not look current
  const t0 = s.t[0], t1 = Math.max(s.t[s.t.length - 1], (last && last.event_time_s) || 0);
  let lo = Math.min(...s.v), hi = Math.max(...s.v);
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => ((t - t0) / (t1 - t0)) * 400, y = (v) => 150 - ((v - lo) / (hi - lo)) * 140;
  const ns = "http://www.w3.org/2000/svg";
  // a line per stretch without a gap: one line drew an outage as a smooth change
  let start = 0;
  for (let i = 1; i <= s.t.length; i++) {
    if (i < s.t.length && s.t[i] - s.t[i - 1] <= SERIES_GAP_S) continue;
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", s.t.slice(start, i)
      .map((t, k) => `${x(t).toFixed(1)},${y(s.v[start + k]).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#1f5f99");
    line.setAttribute("stroke-width", "1");
    svg.append(line);
    start = i;
  }
  for (const d of s.detections) {
    if (d.onset < t0 || d.onset > t1) continue;
    const m = document.createElementNS(ns, "line");
    for (const [k, v] of [["x1", x(d.onset)], ["x2", x(d.onset)], ["y1", 0], ["y2", 160]]) {
      m.setAttribute(k, String(v));
    }
    m.setAttribute("stroke", "#c0392b");
    m.setAttribute("class", "detection");
    svg.append(m);
  }
}

// What the page shows may be old: the dashboard server stopped sending (it sends the
// state at least every 5 s), or its source, Kafka, does not answer. Said over the map,
// looked at every second: a frozen page looked live.
const STALE_S = 15;
let heard = Date.now();

function staleness() {
  const quiet = (Date.now() - heard) / 1000;
  const src = last && last.health && last.health.source;
  let text = "", reason = "";
  if (quiet > STALE_S) {
    text = `no update from the dashboard server for ${Math.round(quiet)} s: ` +
      "what you see may be out of date";
    reason = "server";
  } else if (src && !src.ok) {
    text = `${src.detail} since ${src.since.replace("T", " ").slice(0, 19)} UTC: ` +
      "what you see stopped then";
    reason = "source";
  }
  const p = document.getElementById("stale");
  p.textContent = text;
  p.hidden = !text;
  p.dataset.reason = reason;
}

function render(state) {
  last = state;
  chooseCenter(state.stations);
  drawStations(state.stations);
  drawIncidents(state);
  drawSeismic(state);
  drawPanels(state);
  staleness();
}

fetch("/api/state").then((r) => r.json()).then(render);
const source = new EventSource("/api/stream");
source.addEventListener("state", (e) => {
  heard = Date.now();
  render(JSON.parse(e.data));
  drawSeries();
});
setInterval(staleness, 1000);
window.tocsinState = () => last;
window.tocsinCenter = () => center;
