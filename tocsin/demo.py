"""``tocsin run``: the main job.

Starts the broker (unless an external cluster is configured), the stream workers and the
dashboard, replays the bundled Tonga 2022 scenario so that it takes about two minutes,
prints each detection, incident revision and alert as it happens, stores them, then keeps
the dashboard up until Ctrl-C (or exits at once with ``--exit-when-done``) and stops
everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from detectors.base import Detection
from streams.schemas import (
    AlertMessage,
    IncidentRevision,
    Message,
    SeismicEventMessage,
    iso,
)
from tocsin.settings import Settings


def describe(msg: Message) -> str | None:
    """One line for the console, or None for messages not worth a line (packets)."""
    if isinstance(msg, Detection):
        # the tsunami detector declares again, hours later under the same key, with the
        # final amplitude: the same detection, not a new one
        final = msg.extra.get("final") is True
        return (f"{'FINAL' if final else 'DETECTION':<10} {iso(msg.declared)[:19]}Z  "
                f"{msg.station_id:<14} {msg.kind:<15} "
                f"{msg.detector:<12} onset {iso(msg.onset)[11:19]}  "
                f"{'final amplitude' if final else 'amplitude'} {msg.amplitude:+.3g} "
                f"{msg.units}")
    if isinstance(msg, IncidentRevision):
        where = ("" if msg.lat != msg.lat else f" at {msg.lat:.2f},{msg.lon:.2f}")
        speed = "" if msg.speed_m_s != msg.speed_m_s else f" speed {msg.speed_m_s:.0f} m/s"
        origin = "" if msg.origin_time != msg.origin_time else f" origin {iso(msg.origin_time)}"
        watches = f", {len(msg.forecasts)} ETA watches" if msg.forecasts else ""
        confirmed = f", {len(msg.confirmed)} sea-level confirmations" if msg.confirmed else ""
        return (f"INCIDENT   {iso(msg.issued)[:19]}Z  {msg.incident_id} rev {msg.revision} "
                f"[{msg.status}] {msg.type}{where}{origin}{speed}"
                f" ({len(msg.stations_used)} stations{watches}{confirmed})")
    if isinstance(msg, SeismicEventMessage):
        b = msg.body
        if b.get("status") == "retracted":
            return (f"SEISMIC    {iso(b['issued'])[:19]}Z  {b['event_id']} rev {b['revision']}: "
                    "retracted (its picks went to another event)")
        # null when the picks do not bound the epicentre (NaN on the wire)
        herr = "(error unknown)" if b.get("herr_km") is None else f"+-{b['herr_km']:.0f} km"
        return (f"SEISMIC    {iso(b['issued'])[:19]}Z  {b['event_id']} rev {b['revision']}: "
                f"{b['lat']:.2f}, {b['lon']:.2f}, depth {b['depth_km']:.0f} km, origin "
                f"{iso(b['origin_time'])[:19]}Z {herr}, "
                f"{len(b['stations'])} stations")
    if isinstance(msg, AlertMessage):
        return (f"ALERT      {iso(msg.sent)[:19]}Z  CAP {msg.msg_type:<6} {msg.identifier} "
                f"{msg.severity}/{msg.urgency}/{msg.certainty}: {msg.headline}")
    return None


class Console:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, msg: Message) -> None:
        line = describe(msg)
        if line is not None:
            self.out.write("\r" + line + "\n")
            self.out.flush()


class CapFiles:
    """Writes each CAP message to ``<dir>/<identifier>.xml`` (a drop folder for agencies)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: Message) -> None:
        if isinstance(msg, AlertMessage):
            (self.directory / f"{msg.identifier}.xml").write_text(msg.cap_xml)


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The demo; SIGINT (Ctrl-C) or SIGTERM (``kill``, ``systemctl stop``, ``docker stop``)
    stops everything it started, the broker and the workers included (exit 130)."""
    try:
        return asyncio.run(_demo(settings, args))
    except asyncio.CancelledError:
        print("stopped", file=sys.stdout)
        return 130


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    # a signal cancels the whole run, so every `with` and `finally` on the way out runs
    # (uvicorn, left to itself, took SIGTERM to stop the dashboard only, then killed the
    # process with the broker and the workers left running)
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    from replay.report import write_report
    from replay.streaming import replay_package
    from tocsin.cli import _broker, resolve_package

    taken = _port_taken(settings.http_host, settings.http_port)
    if taken:  # before the broker: uvicorn would sys.exit(3) from its task
        print(f"tocsin run: the dashboard's address {settings.http_host}:"
              f"{settings.http_port} is taken ({taken}); set TOCSIN_HTTP_PORT", file=sys.stderr)
        return 2
    pkg = resolve_package(args.package, settings)
    speed = (pkg.end - pkg.start) / max(args.duration, 1.0)
    out = sys.stdout
    listeners: list[Any] = [Console(out)]
    cap_dir = settings.home / "alerts" / pkg.event_id
    listeners.append(CapFiles(cap_dir))
    sinks = _sinks(settings, pkg, listeners)
    server = task = None
    url = f"http://{settings.http_host}:{settings.http_port}/"
    with _broker(settings):
        if sinks.get("state") is not None:
            sinks["state"].title = pkg.title
            server, task = await _serve_dashboard(settings, sinks["state"])
            print(f"dashboard: {url}", file=out)
            print(f"Atom feed of CAP alerts: {url}feed.atom", file=out)
        print(f"CAP 1.2 files: {cap_dir}/", file=out)
        print(f"replaying {pkg.event_id} ({pkg.title}) at {speed:.0f}x real time, "
              f"{len(pkg.stations)} stations", file=out)
        state = sinks.get("state")
        report = await replay_package(pkg, settings, speed=speed, listeners=listeners,
                                      with_observations=state is not None,
                                      on_lag=None if state is None else state.on_lag)
        report_path = args.report or settings.home / "reports" / f"{pkg.event_id}.json"
        write_report(report, report_path)
        _final(report, report_path, sinks, out)
        print(f"CAP 1.2 files: {cap_dir}/ ({len(list(cap_dir.glob('*.xml')))} messages)",
              file=out)
        if not args.exit_when_done and server is not None:
            print(f"dashboard stays up at {url} - Ctrl-C to stop", file=out)
            await _wait_for_interrupt()
        if server is not None and task is not None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
    print("stopped", file=out)
    return 0


def _sinks(settings: Settings, pkg: Any, listeners: list[Any]) -> dict[str, Any]:
    sinks: dict[str, Any] = {}
    try:
        from dashboards.state import LiveState
    except ImportError:  # the dashboard package is optional for the console demo
        pass
    else:
        from dashboards.live import feeder

        state = LiveState()
        for info in pkg.station_infos():
            state.add_station(info)
        listeners.append(feeder(state))
        sinks["state"] = state
    return sinks


def _port_taken(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on ("" if it can)."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn without its signal handlers: the demo's own stop everything."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


async def _serve_dashboard(settings: Settings, state: Any) -> tuple[Any, asyncio.Task[Any]]:
    import uvicorn

    _Server = _server_class()  # noqa: N806 - a class

    from dashboards.app import create_app
    from dashboards.subscriptions import subscription_router
    from responders.delivery import Outbox
    from responders.store import Store

    outbox = Outbox.from_settings(Store(settings.db_url), settings)
    app = create_app(state, routers=[subscription_router(outbox, settings.api_tokens)],
                     base_url=settings.public_url, store=outbox.store)
    # the page's event stream never ends by itself: without a bound, uvicorn waited on it
    # for ever when asked to stop while a browser was open
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                            log_level="warning", lifespan="off", timeout_graceful_shutdown=3)
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(100):
        if server.started:
            break
        await asyncio.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"the dashboard did not start on {settings.http_host}:"
                           f"{settings.http_port} (port taken? set TOCSIN_HTTP_PORT)")
    return server, task


def _final(report: dict[str, Any], path: Path, sinks: dict[str, Any], out: TextIO) -> None:
    print(f"\nreport: {path}", file=out)
    print(f"{len(report['detections'])} detections, {len(report['incidents'])} incidents, "
          f"{len(report['alerts'])} alerts", file=out)
    for inc in report["incidents"]:
        print(f"  {inc['id']} {inc['type']} [{inc['status']}] origin {inc['origin_time']} "
              f"lat {inc['lat']} lon {inc['lon']} speed {inc['speed_m_s']} m/s, "
              f"{len(inc['revisions'])} revisions, {len(inc['forecasts'])} forecasts", file=out)


async def _wait_for_interrupt() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
