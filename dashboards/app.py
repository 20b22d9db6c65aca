"""The duty dashboard: a FastAPI app over a :class:`~dashboards.state.LiveState`.

Routes (all read-only, no login):

* ``/`` - the page (Leaflet map, incident panel, alerts, station time series, feed health);
  every script, style sheet and the Natural Earth coastline come from ``/static``.
* ``/api/state`` - the whole snapshot; ``/api/stream`` - server-sent events, one
  ``state`` event whenever the snapshot changed (at most ``push_interval`` apart).
* ``/api/stations/{id}/series`` - a station's recent 1-min series and its detections.
* ``/api/alerts`` - alerts; ``/api/alerts/{identifier}.xml`` - one CAP 1.2 message;
  ``/feed.atom`` - an Atom feed of the CAP alerts. Its links start with ``base_url`` (the
  address users reach, from the settings), relative links without one: never the
  request's ``Host`` header, which any client sets (a cached feed would then send its
  readers to that host).

Extra routers (subscriptions and deliveries, which need a token) are mounted by
:func:`create_app` callers through ``routers``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from dashboards.state import LiveState
from responders.stage import in_order
from responders.store import Store, jsonable
from streams.schemas import AlertMessage

STATIC = Path(__file__).parent / "static"


def create_app(state: LiveState, *, push_interval: float = 0.5,
               routers: Iterable[APIRouter] = (), base_url: str = "",
               store: Store | None = None) -> FastAPI:
    """The app over ``state``; ``store``: where a CAP message the state no longer holds (it
    keeps a week) is found, so the Atom feed's and agencies' links keep working."""
    # no docs page: FastAPI's loads Swagger UI from a CDN (blank in an ops room with no
    # internet, and a request to the outside from every browser that opens it); the API's
    # description stays at /openapi.json
    app = FastAPI(title="tocsin dashboard", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    for r in routers:
        app.include_router(r)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    # HEAD too: feed readers and monitors ask it first (405 before)
    @app.api_route("/api/state", methods=["GET", "HEAD"])
    def api_state() -> JSONResponse:
        return JSONResponse(jsonable(state.snapshot()))

    # a station id may hold "/" (only "," is refused): the rest of the path is the id
    @app.get("/api/stations/{station_id:path}/series")
    def api_series(station_id: str) -> JSONResponse:
        s = state.series(station_id)
        if s is None:
            raise HTTPException(404, f"no station {shown(station_id)}")
        return JSONResponse(jsonable(s))

    @app.get("/api/alerts")
    def api_alerts() -> JSONResponse:
        return JSONResponse([a.to_dict() | {"cap_url": _cap_path(a.identifier)}
                             for a in state.alerts()])

    @app.get("/api/alerts/{identifier}.xml")
    def api_alert_xml(identifier: str) -> Response:
        msg = state.alert(identifier)
        if msg is not None:
            return Response(msg.cap_xml, media_type="application/cap+xml")
        row = store.alert(identifier) if store is not None else None
        if row is None:
            raise HTTPException(404, f"no alert {shown(identifier)}")
        return Response(row["cap_xml"], media_type="application/cap+xml")

    @app.api_route("/feed.atom", methods=["GET", "HEAD"])
    def feed() -> Response:
        return Response(atom_feed(state.alerts(), base_url.rstrip("/")),
                        media_type="application/atom+xml")

    pushed = SnapshotText(state)

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            last: tuple[int, float] | None = None
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                made, text = pushed.get()
                if made != last:
                    last = made
                    yield f"event: state\ndata: {text}\n\n"
                else:
                    yield ": keep-alive\n\n"
                await asyncio.sleep(push_interval)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


class SnapshotText:
    """The state's snapshot as JSON, made once per state version for all the stream's
    clients (each made its own every half second, on the event loop the replay uses:
    100 clients slowed a demo's replay from 39 to 53 s), and again after ``max_age_s``
    with no change: a live feed that stops must show as late, and the lag's age grow."""

    def __init__(self, state: LiveState, max_age_s: float = 5.0) -> None:
        self.state = state
        self.max_age_s = max_age_s
        self.made: tuple[int, float] | None = None  # (version, monotonic time)
        self.text = ""

    def get(self) -> tuple[tuple[int, float], str]:
        """(when it was made: version and time, the JSON)."""
        v, t = self.state.version, time.monotonic()
        if self.made is None or v != self.made[0] or t - self.made[1] >= self.max_age_s:
            # NaN as null: JSON has no NaN (the browser's JSON.parse refused the event)
            self.text, self.made = json.dumps(jsonable(self.state.snapshot())), (v, t)
        return self.made, self.text


def shown(value: str, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a 404 repeated a
    20,000-character path)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


def _cap_path(identifier: str) -> str:
    """The path of one CAP message (the identifier quoted: a '#' began a fragment)."""
    return f"/api/alerts/{quote(identifier, safe='')}.xml"


def _attr(text: str) -> str:
    """``text`` escaped for an XML attribute in double quotes."""
    return escape(text, {'"': "&quot;"})


def atom_feed(alerts: list[AlertMessage], base_url: str) -> str:
    """An Atom 1.0 feed with one entry per CAP message (newest first), content = CAP XML."""
    def ts(t: float) -> str:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    updated = ts(max((a.sent for a in alerts), default=0.0))
    entries = []
    for a in reversed(in_order(alerts)):
        # the identifier quoted into the path, the whole escaped for the attribute: a '"'
        # (in an identifier from the alerts topic, or the public URL) broke the feed's XML
        url = base_url + _cap_path(a.identifier)
        body = a.cap_xml.split("?>", 1)[-1].strip()  # without the XML declaration
        entries.append(
            f"<entry><id>urn:tocsin:alert:{escape(a.identifier)}</id>"
            f"<title>{escape(a.msg_type)}: {escape(a.headline)}</title>"
            f"<updated>{ts(a.sent)}</updated>"
            f"<link rel=\"alternate\" type=\"application/cap+xml\" href=\"{_attr(url)}\"/>"
            f"<summary>{escape(a.severity)}/{escape(a.urgency)}/{escape(a.certainty)} "
            f"{escape(a.event)}</summary>"
            f"<content type=\"application/cap+xml\">{body}</content></entry>")
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
            "<feed xmlns=\"http://www.w3.org/2005/Atom\">"
            f"<id>urn:tocsin:alerts</id><title>tocsin CAP alerts</title>"
            f"<updated>{updated}</updated>"
            f"<link rel=\"self\" href=\"{_attr(base_url + '/feed.atom')}\"/>"
            f"<author><name>tocsin</name></author>{''.join(entries)}</feed>")
