"""Persistence on SQLite and on a real PostgreSQL server: migrations and idempotency."""

from __future__ import annotations

from dataclasses import replace

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from detectors.base import Detection
from responders.alerting import AlertPolicy
from responders.store import Base, Store
from streams.schemas import Forecast, IncidentRevision

T = 1642220085.0


def detection(station: str, onset: float) -> Detection:
    return Detection(station_id=station, kind="barometer", detector="lamb_pulse",
                     detector_version="1", onset=onset, peak_time=onset + 120.0, amplitude=2.1,
                     units="hPa", declared=onset + 600.0, lat=-21.0, lon=-175.0,
                     extra={"snr": 12.5, "sigma": float("nan")})


def revision(n: int) -> IncidentRevision:
    return IncidentRevision(
        incident_id="eruption-x", type="volcanic_eruption", revision=n, issued=T + 600.0 * n,
        status="watch", origin_time=T, lat=-20.5, lon=-175.4, speed_m_s=314.0,
        detections=("a", "b"), stations_used=("A", "B", "C", "D"),
        forecasts=(Forecast("chij", "tide_gauge", T + 28000.0, 7900.0, 35.1, 140.2),))


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    store = Store(database_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    assert diff == []
    assert {"detections", "incidents", "incident_revisions", "alerts", "subscriptions",
            "deliveries", "delivery_attempts", "alembic_version"} <= tables
    store.save_all([detection("A", T), revision(1)])
    before = store.counts()
    again = Store(database_url)  # migrating again is a no-op: the rows and schema stay
    with again.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert again.counts() == before and before.detections == 1
    again.close()
    store.close()


def test_replaying_twice_does_not_duplicate_rows(database_url: str) -> None:
    store = Store(database_url)
    dets = [detection(s, T + 60.0 * i) for i, s in enumerate("ABCD")]
    revs = [revision(1), revision(2)]
    alerts = [m for r in revs for m in AlertPolicy().on_revision(r)]
    for _ in range(2):
        store.save_all([*dets, *revs, *alerts])
    counts = store.counts()
    assert (counts.detections, counts.incidents, counts.revisions) == (4, 1, 2)
    assert counts.alerts == len({a.identifier for a in alerts}) == 2
    # a correction (same key, new content) replaces the row
    store.save(replace(dets[0], amplitude=3.3))
    assert [d["amplitude"] for d in store.detections("A")] == [3.3]
    assert store.incidents()[0]["revision"] == 2
    # an older revision arriving late does not roll the incident back
    store.save(revision(1))
    assert store.incidents()[0]["revision"] == 2
    assert [r["revision"] for r in store.revisions("eruption-x")] == [1, 2]
    got = store.alert(alerts[0].identifier)
    assert got is not None and got["cap_xml"] == alerts[0].cap_xml
    assert store.detections("A")[0]["extra"] == {"snr": 12.5, "sigma": None}
    store.close()


def test_alerts_of_one_second_list_by_revision_not_by_identifier_text(database_url: str
                                                                       ) -> None:
    """As text, tocsin.x.r11.update sorts before tocsin.x.r9.update: the dashboard and the
    Atom feed listed revision 11 as the older of two alerts sent in the same second."""
    from dashboards.state import LiveState

    store = Store(database_url)
    policy, live = AlertPolicy(), LiveState()
    msgs = [m for n in range(1, 12) for m in policy.on_revision(
        replace(revision(n), issued=T + 600.0, origin_time=T + 60.0 * n))]
    assert [m.revision for m in msgs] == list(range(1, 12))  # each changed something
    with store.begin() as c:
        for m in msgs:
            store.save_alert(m, c)
            live.on_alert(m)
    assert [a["revision"] for a in store.alerts()] == list(range(11, 0, -1))  # newest first
    assert [a.revision for a in live.alerts()] == list(range(1, 12))
    store.close()


def test_an_alert_is_stored_once_and_never_replaced_by_other_content(database_url: str
                                                                    ) -> None:
    """The upsert overwrote a stored alert's CAP document with other content under the same
    identifier (``tocsin detect --save`` after a replay into the same database, or a run
    with other parameters), and the outbox, whose deliveries were there already, never
    sent it. The same alert again changes nothing; other content is refused, named."""
    import pytest
    from sqlalchemy import select

    from responders.store import AlertRow, StoreConflict

    store = Store(database_url)
    (msg,) = AlertPolicy().on_revision(revision(1))
    store.save_alert(msg)
    store.save_alert(msg)  # a replay, a redelivery
    other = replace(msg, cap_xml=msg.cap_xml.replace("<urgency>", "<urgency>X"),
                    headline="other")
    with pytest.raises(StoreConflict, match=f"alert {msg.identifier} is stored with other "
                       "content"):
        store.save_alert(other)
    with store.engine.connect() as c:
        rows = c.execute(select(AlertRow.cap_xml, AlertRow.headline)).all()
    assert rows == [(msg.cap_xml, msg.headline)]
    store.close()


def test_the_incident_row_is_its_latest_revision_that_stands(database_url: str) -> None:
    """Revision 2 withdrawn, revision 1 stands: the row said "retracted" at revision 2."""
    store = Store(database_url)
    r1, r2 = revision(1), replace(revision(2), lat=-20.7)
    store.save_all([r1, r2])
    assert (store.incidents()[0]["revision"], store.incidents()[0]["lat"]) == (2, -20.7)
    store.save(replace(r2, status="retracted"))
    inc = store.incidents()[0]
    assert (inc["status"], inc["revision"], inc["lat"]) == ("watch", 1, -20.5)
    store.save(replace(r1, status="retracted"))  # none stands now
    inc = store.incidents()[0]
    assert (inc["status"], inc["revision"]) == ("retracted", 2)
    store.close()


def test_processes_starting_together_on_a_fresh_database_all_migrate(database_url: str) -> None:
    """A worker and a dashboard started side by side each ran the migrations: on SQLite
    two of three raised "table detections already exists", on PostgreSQL a UniqueViolation.
    The migrations now hold a lock (an advisory lock, a lock file), one process at a time."""
    import subprocess
    import sys
    import time

    start = time.time() + 3.0  # the three start their migration at one instant
    code = ("import sys, time; from responders.store import Store; "
            f"time.sleep(max(0.0, {start!r} - time.time())); "
            "s = Store(sys.argv[1]); print(s.counts().detections); s.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, database_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["0", "0", "0"]
