"""The ``tocsin`` command line: ``main(argv=None)``, one sub-command per job."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tocsin import __version__
from tocsin.allocator import tune_allocator
from tocsin.settings import Settings

if TYPE_CHECKING:
    from detectors.base import StationInfo


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed {text!r} is not a number or 'max'") from None
    if not (value > 0 and math.isfinite(value)):  # nan ran the replay at max speed
        raise argparse.ArgumentTypeError(f"speed {text!r} must be a finite number > 0")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (``--duration inf`` divided by
    zero; ``nan`` replayed at max speed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds > 0")
    return value


def _whole(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in ``low``..``high`` (``what`` names it)."""
    name = f"{what} " if what else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{name}{text!r} must be at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{name}{text!r} is not in {low}-{high}")
        return value

    return parse


#: a count of workers or partitions; a TCP port
_count, _port = _whole(1), _whole(0, 65535, "port")


def resolve_package(name: str, settings: Settings):  # type: ignore[no-untyped-def]
    """A folder path, or the name of a built-in package (built on first use)."""
    from replay.package import PackageError, load_package
    from replay.scenario import BUILTIN_PACKAGES, ensure_builtin

    path = Path(name)
    if path.is_dir():
        return load_package(path)
    if name in BUILTIN_PACKAGES:
        return load_package(ensure_builtin(name, settings.cache_dir / "packages"))
    raise PackageError(f"package {name!r} is neither a folder nor a built-in package "
                       f"{list(BUILTIN_PACKAGES)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tocsin", description=__doc__)
    p.add_argument("--version", action="version", version=f"tocsin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="start, stop or check the local Kafka broker")
    b.add_argument("action", choices=["start", "stop", "status", "fetch"])

    w = sub.add_parser("worker", help="run a stream worker (Faust) for one run's topics")
    w.add_argument("--run-id", default="live")
    w.add_argument("--partitions", type=_count, default=None)
    w.add_argument("--registry", type=Path, default=None,
                   help="station registry CSV (station_id,kind,lat,lon[,...,gain])")
    w.add_argument("--inventory", type=Path, default=None,
                   help="StationXML or RESP: seismic gains for magnitudes (the registry's "
                        "gain column wins)")
    w.add_argument("--loglevel", default="warn",
                   choices=["crit", "error", "warn", "info", "debug"])
    w.add_argument("--no-migrate", action="store_true",
                   help="do not upgrade the database schema (the replayer already did)")

    sl = sub.add_parser("seedlink", help="ingest SeedLink streams into the observation topic")
    sl.add_argument("server", help="HOST:PORT of a SeedLink 3.1 server")
    sl.add_argument("streams", nargs="+", help="NET.STA.LOC.CHA (? wildcards in LOC, CHA)")
    sl.add_argument("--run-id", default="live", help="the workers' run (topic names)")
    sl.add_argument("--inventory", type=Path, default=None,
                    help="FDSN StationXML with the streams' coordinates")
    sl.add_argument("--registry", type=Path, default=None,
                    help="station registry CSV with the streams' coordinates")
    sl.add_argument("--state", type=Path, default=None,
                    help="where the last sequence numbers are kept, to resume after a "
                    "restart (default: HOME/seedlink/HOST_PORT.json)")

    ss = sub.add_parser("seedlink-serve",
                        help="serve miniSEED files as a SeedLink 3.1 server (drills, tests)")
    ss.add_argument("files", nargs="+", type=Path)
    ss.add_argument("--host", default="127.0.0.1")
    ss.add_argument("--port", type=_port, default=18000)

    d = sub.add_parser("detect", help="run the detectors in-process on a package (no broker)")
    d.add_argument("package")
    d.add_argument("--report", type=Path, required=True)
    d.add_argument("--save", action="store_true",
                   help="also store detections, incidents and alerts in the database "
                   "(TOCSIN_DATABASE_URL), as the workers do")

    q = sub.add_parser("quakeml", help="write the QuakeML 1.2 of each seismic event of a report")
    q.add_argument("report", type=Path, help="a report of tocsin detect or tocsin replay")
    q.add_argument("--out", type=Path, required=True, help="folder for <event_id>.xml files")

    mp = sub.add_parser("map", help="write a standalone (offline) HTML map of one incident")
    mp.add_argument("incident", help="incident id, as in the report or the dashboard")
    mp.add_argument("--out", type=Path, required=True)

    r = sub.add_parser("replay", help="replay a package through Kafka and the workers")
    r.add_argument("package")
    r.add_argument("--speed", type=_speed, default=None, help="N times real time, or 'max'")
    r.add_argument("--report", type=Path, required=True)
    r.add_argument("--partitions", type=_count, default=None)
    r.add_argument("--workers", type=_count, default=1)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--keep-topics", action="store_true",
                   help="keep the run's Kafka topics (deleted once the replay has finished)")

    e = sub.add_parser("evaluate", help="metrics of a report against a package's truth, "
                       "and the record-section figure")
    e.add_argument("report", type=Path)
    e.add_argument("--truth", required=True, help="the package (folder or built-in name)")
    e.add_argument("--figure", type=Path, default=None, help="record section PNG")
    e.add_argument("--out", type=Path, default=None, help="metrics JSON")

    db = sub.add_parser("dashboard", help="serve the duty dashboard of a live run (its topics "
                        "in Kafka) at TOCSIN_HTTP_HOST:TOCSIN_HTTP_PORT")
    db.add_argument("--run-id", default="live", help="the workers' run (topic names)")
    db.add_argument("--registry", type=Path, default=None,
                    help="station registry CSV: stations shown before their first packet")
    db.add_argument("--history-hours", type=_hours, default=12.0,
                    help="observations read back at start, for the series (default 12)")

    run = sub.add_parser("run", help="the demo: broker, workers, dashboard, Tonga 2022 replay")
    run.add_argument("--package", default="tonga2022")
    run.add_argument("--duration", type=_seconds, default=120.0,
                     help="wall-clock seconds the replay should take (default 120)")
    run.add_argument("--exit-when-done", action="store_true",
                     help="exit when the replay is finished instead of serving the dashboard")
    run.add_argument("--report", type=Path, default=None)
    return p


def _hours(text: str) -> float:
    try:
        h = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 < h < 24 * 366:
        raise argparse.ArgumentTypeError(f"{text!r}: hours between 0 and a year")
    return h


class CliError(Exception):
    """An operator's error the command can name before it starts (printed in one line)."""


#: settings whose values stay out of error messages
_SECRET_SETTINGS = ("DATABASE_URL", "API_TOKENS")


def _settings() -> Settings:
    """The settings from the environment; CliError naming each bad variable and value."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        def shown(e: Any) -> str:
            name = "_".join(map(str, e["loc"])).upper()
            # a database URL may hold a password: the value is not repeated
            value = "" if name in _SECRET_SETTINGS else f" = {e['input']!r}"
            return f"TOCSIN_{name}{value}: {e['msg']}"

        bad = "; ".join(shown(e) if e["loc"] else e["msg"] for e in exc.errors())
        raise CliError(f"bad setting: {bad}") from None


def _check_report_path(path: Path | None) -> None:
    """Before a run: its report can be written (not a folder; its folder can be made)."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"--report {path}: is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--report {path}: its folder cannot be made: {exc}") from None
    if not os.access(path.parent, os.W_OK):
        raise CliError(f"--report {path}: {path.parent} is not writable")


def _read_report(path: Path) -> dict[str, Any]:
    """A report written by ``tocsin detect`` or ``replay``; CliError unless it is one."""
    from replay.report import REPORT_SCHEMA

    if not path.is_file():
        raise CliError(f"{path}: no such report")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        got = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise CliError(f"{path}: not a {REPORT_SCHEMA} report (schema {got!r})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings()
        _check_report_path(getattr(args, "report", None)
                           if args.command in ("detect", "replay", "run") else None)
    except CliError as exc:
        print(f"tocsin: {exc}", file=sys.stderr)
        return 2
    tune_allocator()  # buffers of megabytes are used again, not faulted in anew
    from replay.package import PackageError

    if args.command in ("worker", "detect", "replay", "run"):
        # the seismic locator's travel times: computed once, then read from the cache
        from tocsin.tables import prime_travel_times

        prime_travel_times(settings.cache_dir)
    try:
        return _dispatch(args, settings)
    except PackageError as exc:
        from replay.registry import RegistryError

        what = "bad station registry" if isinstance(exc, RegistryError) else "bad package"
        print(f"tocsin: {what}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # an operator's error in one line (imported here: aiokafka is slow to import)
        from aiokafka.errors import KafkaConnectionError

        from deploy.broker import BrokerError
        from replay.streaming import ReplayError
        from responders.store import StoreConflict
        from streams.seedlink import SeedLinkError
        from streams.topics import TopicError

        if isinstance(exc, KafkaConnectionError):  # TOCSIN_KAFKA_BOOTSTRAP not answering
            print(f"tocsin: Kafka at {settings.bootstrap} does not answer ({exc})",
                  file=sys.stderr)
            return 2
        if not isinstance(exc, TopicError | BrokerError | ReplayError | StoreConflict
                          | SeedLinkError | CliError):
            raise
        print(f"tocsin: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "broker":
        from deploy.broker import Broker

        broker = Broker(settings)
        if args.action == "start":
            print(broker.start())
        elif args.action == "stop":
            broker.stop()
            print(broker.status())
        elif args.action == "fetch":
            print(broker.fetch())
        else:
            st = broker.status()
            print(st)
            return 0 if st.running else 1
        return 0
    if args.command == "worker":
        return _worker(args, settings)
    if args.command == "dashboard":
        return _dashboard(args, settings)
    if args.command == "seedlink":
        return _seedlink(args, settings)
    if args.command == "seedlink-serve":
        from replay.seedlink_server import SeedLinkServer, records_512

        for f in args.files:
            if not f.is_file():
                raise CliError(f"seedlink-serve: {f}: no such file")
        try:
            records = records_512(args.files)
        except Exception as exc:  # noqa: BLE001 - obspy raises many types for a bad file
            raise CliError(f"seedlink-serve: {' '.join(map(str, args.files))}: not readable "
                           f"as miniSEED ({type(exc).__name__}: {exc})") from None

        async def serve() -> None:
            async with SeedLinkServer(records, args.host, args.port) as srv:
                print(f"SeedLink 3.1 on {args.host}:{srv.port}: "
                      f"{sum(len(r) for r in srv.by_station.values())} records", flush=True)
                await asyncio.Event().wait()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
        return 0
    if args.command == "detect":
        from replay.report import write_report
        from replay.run import detect_package

        pkg = resolve_package(args.package, settings)
        store = None
        if args.save:
            from responders.store import Store

            store = Store(settings.db_url)
        try:
            report = detect_package(pkg, packet_seconds=settings.packet_seconds,
                                    registry_file=settings.station_registry, store=store,
                                    cap_sender=settings.cap_sender)
        finally:
            if store is not None:
                store.close()
        write_report(report, args.report)
        _summary(report)
        return 0
    if args.command == "replay":
        from replay.report import write_report
        from replay.streaming import replay_package

        pkg = resolve_package(args.package, settings)
        with _broker(settings):
            report = asyncio.run(replay_package(
                pkg, settings, speed=args.speed, partitions=args.partitions,
                workers=args.workers, progress_stream=None if args.quiet else sys.stderr,
                keep_topics=args.keep_topics))
        write_report(report, args.report)
        _summary(report)
        return 0
    if args.command == "evaluate":
        from replay.evaluate import evaluate, record_section, write_metrics
        from responders.store import jsonable

        report = _read_report(args.report)
        pkg = resolve_package(args.truth, settings)
        try:
            metrics = evaluate(report, pkg)
        except (KeyError, TypeError) as exc:
            raise CliError(f"{args.report}: a report without the fields evaluation reads "
                           f"({type(exc).__name__}: {exc})") from None
        print(json.dumps(jsonable({k: v for k, v in metrics.items() if k != "detections"}),
                         indent=1, allow_nan=False))
        if args.out:
            write_metrics(metrics, args.out)
        if args.figure:
            print(f"record section: {record_section(report, pkg, args.figure)}")
        return 0
    if args.command == "quakeml":
        from responders.quakeml import write_quakeml

        report = _read_report(args.report)
        if args.out.exists() and not args.out.is_dir():
            raise CliError(f"quakeml --out {args.out}: exists and is not a folder")
        try:
            written = write_quakeml(report, args.out)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CliError(f"{args.report}: a seismic event it holds cannot be written as "
                           f"QuakeML ({type(exc).__name__}: {exc})") from None
        for path in written:
            print(path)
        if not written:
            print(f"{args.report}: no seismic events", file=sys.stderr)
        return 0 if written else 1
    if args.command == "map":
        from dashboards.incident_map import MapError, write_incident_map

        try:
            out = write_incident_map(settings.db_url, args.incident, args.out)
        except MapError as exc:
            print(f"tocsin map: {exc}", file=sys.stderr)
            return 2
        print(f"map of {args.incident}: {out}")
        return 0
    if args.command == "run":
        from tocsin.demo import run_demo

        return run_demo(settings, args)
    raise AssertionError(args.command)


@contextlib.contextmanager
def _broker(settings: Settings) -> Iterator[None]:
    """The local broker, unless TOCSIN_KAFKA_BOOTSTRAP names a cluster: started if it is
    not running, stopped after the last command that uses it (Broker.use; one that
    `tocsin broker start` started keeps running)."""
    if settings.kafka_bootstrap:
        yield
        return
    from deploy.broker import Broker

    broker = Broker(settings)
    if not broker.status().running:
        print(f"starting Kafka {settings.kafka_version} (KRaft) ...", file=sys.stderr)
    with broker.use():
        yield


def registry_file(args: argparse.Namespace, settings: Settings) -> Path | None:
    """The station registry of a live command: ``--registry``, else
    ``TOCSIN_STATION_REGISTRY`` (as ``detect`` and ``replay`` use it)."""
    path: Path | None = args.registry or settings.station_registry
    return path


def worker_stations(args: argparse.Namespace, settings: Settings, at: float
                    ) -> tuple[list[StationInfo], dict[str, float]]:
    """A worker's registry (who gets ETA forecasts) and seismic gains at time ``at``."""
    from replay.registry import read_registry, worker_gains

    path = registry_file(args, settings)
    return (read_registry(path) if path else []), worker_gains(path, args.inventory, at)


def seedlink_stations(args: argparse.Namespace, settings: Settings
                      ) -> dict[str, StationInfo]:
    """The SeedLink streams' coordinates: the registry's, then the inventory's."""
    from replay.registry import read_registry
    from streams.seedlink import stations_from_inventory

    path = registry_file(args, settings)
    stations = {s.station_id: s for s in read_registry(path)} if path else {}
    if args.inventory:
        if not args.inventory.is_file():
            raise CliError(f"--inventory {args.inventory}: no such file")
        try:
            stations.update(stations_from_inventory(str(args.inventory)))
        except Exception as exc:  # noqa: BLE001 - obspy raises many types for a bad file
            raise CliError(f"--inventory {args.inventory}: not readable as StationXML "
                           f"({type(exc).__name__}: {exc})") from None
    return stations


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.app import create_app
    from streams.topics import Topics

    registry, gains = worker_stations(args, settings, time.time())
    if not args.no_migrate:
        from responders.store import migrate

        migrate(settings.db_url)
    topics = Topics.for_run(settings, args.run_id, args.partitions)
    app = create_app(settings, topics, registry, gains)
    sys.argv = ["tocsin-worker", "worker", "--without-web", "--loglevel", args.loglevel]
    # a lease on the local broker while the worker runs: without one, the dashboard that
    # had started the broker stopped it under the worker when it exited
    with _broker(settings):
        app.main()
    return 0


def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from dashboards.live import follow
    from dashboards.state import LiveState
    from replay.registry import read_registry
    from responders.store import migrate
    from streams.topics import Topics
    from tocsin.demo import _port_taken, _serve_dashboard

    taken = _port_taken(settings.http_host, settings.http_port)
    if taken:
        raise CliError(f"the dashboard's address {settings.http_host}:{settings.http_port} "
                       f"is taken ({taken}); set TOCSIN_HTTP_PORT")
    path = registry_file(args, settings)
    state = LiveState(clock=time.time)  # live: a station is late by the wall clock
    state.title = f"live: {args.run_id}"
    for info in read_registry(path) if path else []:
        state.add_station(info)
    topics = Topics.for_run(settings, args.run_id)
    migrate(settings.db_url)  # the subscriptions and the delivery log live there

    async def serve() -> None:
        from streams.lag import monitor_lag

        server, task = await _serve_dashboard(settings, state)
        print(f"dashboard of run {args.run_id!r}: http://{settings.http_host}:"
              f"{settings.http_port}/ - Ctrl-C to stop", flush=True)
        lag = asyncio.create_task(monitor_lag(
            settings.bootstrap, topics.app_id,
            [topics.observations, topics.detections, topics.incidents], state.on_lag))
        try:
            await follow(settings.bootstrap, topics, state, args.history_hours * 3600.0)
        finally:
            lag.cancel()
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)

    async def main() -> None:
        me = asyncio.current_task()
        assert me is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
        with contextlib.suppress(asyncio.CancelledError):  # SIGTERM or Ctrl-C: stop
            await serve()

    with _broker(settings), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def _seedlink(args: argparse.Namespace, settings: Settings) -> int:
    from streams.seedlink import SeedLinkClient, run_ingest
    from streams.topics import Topics, create_topics

    host, _, port = args.server.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        print(f"tocsin seedlink: server {args.server!r} is not HOST:PORT (a port in "
              "0-65535)", file=sys.stderr)
        return 2
    if args.state is not None and args.state.exists() and not args.state.is_file():
        raise CliError(f"seedlink: --state {args.state}: is not a file")
    stations = seedlink_stations(args, settings)
    try:
        client = SeedLinkClient(host, int(port), args.streams)
    except ValueError as exc:  # a stream that is not NET.STA.LOC.CHA
        raise CliError(f"seedlink: {exc}") from None
    topics = Topics.for_run(settings, args.run_id)

    async def main() -> None:
        await create_topics(settings.bootstrap, topics)
        state = args.state or settings.home / "seedlink" / f"{host}_{port}.json"
        await run_ingest(settings.bootstrap, topics.observations, topics.deadletter, client,
                         stations, state_file=state,
                         watermark_lag_s=settings.ingest_watermark_lag_s)

    with _broker(settings), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def _summary(report: dict) -> None:  # type: ignore[type-arg]
    print(json.dumps({
        "detections": len(report["detections"]),
        "incidents": [{k: i[k] for k in ("id", "type", "status", "origin_time", "lat", "lon",
                                         "speed_m_s")} | {"revisions": len(i["revisions"])}
                      for i in report["incidents"]],
        "alerts": len(report["alerts"]),
        "dead_letters": len(report.get("run", {}).get("dead_letters", [])),
    }, indent=1))
