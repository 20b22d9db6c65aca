"""Persistence: detections, incidents and their revisions, alerts, subscriptions, deliveries.

SQLAlchemy 2 models, created and upgraded by the Alembic migrations in
``responders/migrations`` (never by ``create_all``). SQLite is the default; any SQLAlchemy
URL works (``TOCSIN_DATABASE_URL=postgresql+psycopg://...``). Every write is an upsert on
the message's idempotency key (detection key, ``incident_id#revision``, CAP identifier,
delivery key), so replaying a run, or a message redelivered after a crash before its Kafka
commit, never duplicates a row.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    and_,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from detectors.base import Detection
from streams.schemas import AlertMessage, IncidentRevision


class Base(DeclarativeBase):
    pass


class DetectionRow(Base):
    __tablename__ = "detections"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    station_id: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    detector: Mapped[str] = mapped_column(String(40))
    detector_version: Mapped[str] = mapped_column(String(20))
    onset: Mapped[float] = mapped_column(Float, index=True)
    peak_time: Mapped[float] = mapped_column(Float)
    amplitude: Mapped[float] = mapped_column(Float)
    units: Mapped[str] = mapped_column(String(20))
    declared: Mapped[float] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)


class IncidentRow(Base):
    __tablename__ = "incidents"
    incident_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20))
    revision: Mapped[int] = mapped_column(Integer)
    issued: Mapped[float] = mapped_column(Float)
    origin_time: Mapped[float | None] = mapped_column(Float, nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    speed_m_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class RevisionRow(Base):
    __tablename__ = "incident_revisions"
    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(100), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    issued: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class AlertRow(Base):
    __tablename__ = "alerts"
    identifier: Mapped[str] = mapped_column(String(200), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(100), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    msg_type: Mapped[str] = mapped_column(String(10))
    sent: Mapped[float] = mapped_column(Float, index=True)
    event: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(20))
    urgency: Mapped[str] = mapped_column(String(20))
    certainty: Mapped[str] = mapped_column(String(20))
    headline: Mapped[str] = mapped_column(String(300))
    references: Mapped[list[str]] = mapped_column(JSON)
    cap_xml: Mapped[str] = mapped_column(Text)


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    area: Mapped[dict[str, Any]] = mapped_column(JSON)  # GeoJSON geometry
    min_severity: Mapped[str] = mapped_column(String(20))
    channels: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)
    active: Mapped[int] = mapped_column(Integer, default=1)
    # 1: also takes CAP Exercise/Test messages (replays of recorded data); 0: Actual only
    exercises: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DeliveryRow(Base):
    __tablename__ = "deliveries"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # idempotency key
    alert_identifier: Mapped[str] = mapped_column(
        String(200), ForeignKey("alerts.identifier"), index=True)
    subscription_id: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(20))
    target: Mapped[str] = mapped_column(String(500))
    # pending|delivered|dead|cancelled|superseded|expired (responders.delivery)
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[float] = mapped_column(Float, index=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AttemptRow(Base):
    __tablename__ = "delivery_attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_key: Mapped[str] = mapped_column(String(300), ForeignKey("deliveries.key"),
                                              index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    ok: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


def _opt(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    engine = create_store_engine(url_or_engine) if isinstance(url_or_engine, str) \
        else url_or_engine
    cfg = Config()
    with resources.as_file(resources.files("responders") / "migrations") as path, \
            _sqlite_file_lock(engine):
        cfg.set_main_option("script_location", str(path))
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # one process at a time, each in its own transaction: the next finds the
                # schema at head (a worker and a dashboard started together on a fresh
                # database: a UniqueViolation creating the tables, or "table exists")
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)


#: the PostgreSQL advisory lock the migrations hold ("tocsin" in ASCII)
_MIGRATE_LOCK = 0x746F6373696E


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """For a SQLite file, an exclusive lock on ``<file>.migrate-lock`` (processes
    migrating at once raised "table detections already exists"); nothing otherwise."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate-lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def create_store_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # workers and the dashboard side by side
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class Counts:
    detections: int
    incidents: int
    revisions: int
    alerts: int
    deliveries: int


class Store:
    """The database of one tocsin installation (see the module docstring)."""

    def __init__(self, url: str, *, migrate_schema: bool = True) -> None:
        self.url = url
        self.engine = create_store_engine(url)
        if migrate_schema:
            migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # ------------------------------------------------------------------ writes
    @staticmethod
    def _insert(conn: Connection, model: type[Base], row: dict[str, Any]) -> Any:
        table: Any = model.__table__
        dialect = conn.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table).values(**row)
        if dialect == "sqlite":
            return sqlite.insert(table).values(**row)
        raise NotImplementedError(f"inserts for {dialect}")  # pragma: no cover

    def _upsert(self, conn: Connection, model: type[Base], row: dict[str, Any],
                keys: tuple[str, ...]) -> None:
        update = {k: v for k, v in row.items() if k not in keys}
        conn.execute(self._insert(conn, model, row).on_conflict_do_update(
            index_elements=list(keys), set_=update))

    def insert_new(self, conn: Connection, model: type[Base], row: dict[str, Any],
                   keys: tuple[str, ...]) -> bool:
        """Insert ``row`` unless a row with its ``keys`` is there (also one that another
        transaction inserted meanwhile: a check-then-insert raised IntegrityError on
        PostgreSQL then); whether it was inserted."""
        table: Any = model.__table__
        # RETURNING, not rowcount: psycopg gave -1 for a row not inserted
        r = conn.execute(self._insert(conn, model, row).on_conflict_do_nothing(
            index_elements=list(keys)).returning(table.c[keys[0]]))
        return r.first() is not None

    def save_detection(self, det: Detection, conn: Connection | None = None) -> None:
        row = {"key": det.key, "station_id": det.station_id, "kind": det.kind,
               "detector": det.detector, "detector_version": det.detector_version,
               "onset": det.onset, "peak_time": det.peak_time,
               "amplitude": float(det.amplitude), "units": det.units,
               "declared": det.declared, "lat": _opt(det.lat), "lon": _opt(det.lon),
               "extra": jsonable(det.extra)}
        with self._conn(conn) as c:
            self._upsert(c, DetectionRow, row, ("key",))

    def save_revision(self, rev: IncidentRevision, conn: Connection | None = None) -> None:
        with self._conn(conn) as c:
            self._upsert(c, RevisionRow, {
                "key": rev.key, "incident_id": rev.incident_id, "revision": rev.revision,
                "issued": rev.issued, "status": rev.status,
                "body": jsonable(rev.to_dict())}, ("key",))  # no NaN: PostgreSQL's JSON refuses it
            # the incident's row is its latest revision that stands; retracted only when
            # none does (a withdrawn latest revision left the row "retracted" at revision 2
            # while revision 1 stood)
            mine = select(RevisionRow.revision, RevisionRow.body).order_by(
                RevisionRow.revision.desc()).limit(1)
            top = c.execute(mine.where(and_(RevisionRow.incident_id == rev.incident_id,
                                            RevisionRow.status != "retracted"))).first()
            if top is None:  # none stands: the latest, retracted
                top = c.execute(mine.where(RevisionRow.incident_id == rev.incident_id)).one()
            row = rev if top.revision == rev.revision else IncidentRevision.from_dict(top.body)
            self._upsert(c, IncidentRow, {
                "incident_id": row.incident_id, "type": row.type, "status": row.status,
                "revision": row.revision, "issued": row.issued,
                "origin_time": _opt(row.origin_time), "lat": _opt(row.lat),
                "lon": _opt(row.lon), "speed_m_s": _opt(row.speed_m_s)}, ("incident_id",))

    def save_alert(self, msg: AlertMessage, conn: Connection | None = None) -> None:
        """Store ``msg`` once. The same message again (a replay, a redelivery) changes
        nothing; another message under a stored identifier raises :class:`StoreConflict`
        (it overwrote the stored one before, and the outbox, whose deliveries were already
        there, never sent it: a CAP identifier is never reused with other content)."""
        with self._conn(conn) as c:
            if self.insert_new(c, AlertRow, {
                    "identifier": msg.identifier, "incident_id": msg.incident_id,
                    "revision": msg.revision, "msg_type": msg.msg_type, "sent": msg.sent,
                    "event": msg.event, "severity": msg.severity, "urgency": msg.urgency,
                    "certainty": msg.certainty, "headline": msg.headline,
                    "references": list(msg.references), "cap_xml": msg.cap_xml},
                    ("identifier",)):
                return
            stored = c.execute(select(AlertRow.cap_xml).where(
                AlertRow.identifier == msg.identifier)).scalar_one()
            if stored != msg.cap_xml:
                raise StoreConflict(
                    f"alert {msg.identifier} is stored with other content: a CAP identifier "
                    "is never reused (was this database used by another run with other "
                    "parameters?)")

    def save(self, msg: Detection | IncidentRevision | AlertMessage) -> None:
        """Store any output message in one transaction."""
        self.save_all([msg])

    def save_all(self, msgs: Iterable[Detection | IncidentRevision | AlertMessage]) -> None:
        """Store output messages in one transaction."""
        with self.begin() as conn:
            for msg in msgs:
                self._save(msg, conn)

    def _save(self, msg: Detection | IncidentRevision | AlertMessage, conn: Connection) -> None:
        if isinstance(msg, Detection):
            self.save_detection(msg, conn)
        elif isinstance(msg, IncidentRevision):
            self.save_revision(msg, conn)
        elif isinstance(msg, AlertMessage):
            self.save_alert(msg, conn)
        else:
            raise TypeError(f"cannot store a {type(msg).__name__}")

    @contextmanager
    def _conn(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.begin() as c:
                yield c

    # ------------------------------------------------------------------ reads
    def counts(self) -> Counts:
        with self.engine.connect() as c:
            def n(model: type[Base]) -> int:
                return int(c.execute(select(func.count()).select_from(model)).scalar_one())
            return Counts(n(DetectionRow), n(IncidentRow), n(RevisionRow), n(AlertRow),
                          n(DeliveryRow))

    def alerts(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            # newest first; by revision before identifier (as text, r11 sorts before r9)
            rows = c.execute(select(AlertRow).order_by(
                AlertRow.sent.desc(), AlertRow.revision.desc(), AlertRow.identifier.desc()
            ).limit(limit))
            return [dict(r._mapping) for r in rows]

    def alert(self, identifier: str) -> dict[str, Any] | None:
        if not identifier.isprintable():
            return None  # no alert has such an identifier (PostgreSQL refused a NUL: a 500)
        with self.engine.connect() as c:
            r = c.execute(select(AlertRow).where(AlertRow.identifier == identifier)).first()
            return None if r is None else dict(r._mapping)

    def incidents(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(select(IncidentRow).order_by(IncidentRow.issued))
            return [dict(r._mapping) for r in rows]

    def revisions(self, incident_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(select(RevisionRow.body).where(
                RevisionRow.incident_id == incident_id).order_by(RevisionRow.revision))
            return [r[0] for r in rows]

    def detections(self, station_id: str | None = None) -> list[dict[str, Any]]:
        q = select(DetectionRow).order_by(DetectionRow.onset)
        if station_id is not None:
            q = q.where(DetectionRow.station_id == station_id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]


class StoreConflict(Exception):
    """An output that must never change (a sent alert) is stored with other content."""


def jsonable(x: Any) -> Any:
    """``x`` as JSON can hold it: NaN and infinities as null, keys as strings (PostgreSQL's
    JSON and other readers refuse NaN tokens)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def token_hash(token: str) -> str:
    """Tokens are stored and compared as SHA-256 hashes, never in clear."""
    return hashlib.sha256(token.encode()).hexdigest()
