"""The report's own ordering rules (docs/report.md)."""

from __future__ import annotations

from replay.report import build_report
from streams.schemas import AlertMessage


def test_alerts_sent_within_one_second_keep_their_revision_order() -> None:
    """Three revisions issued within one second were listed r10, r11, r9 (by identifier
    as text): the report said the ninth went out after the eleventh."""
    def alert(n: int, sent: float, incident: str = "tocsin.x") -> AlertMessage:
        return AlertMessage(identifier=f"{incident}.r{n}.update", msg_type="Update",
                            sent=sent, incident_id=incident, revision=n,
                            event="Volcanic eruption", severity="Severe", urgency="Expected",
                            certainty="Likely", headline="h")

    alerts = [alert(11, 600.0), alert(9, 600.0), alert(10, 600.0), alert(8, 540.0),
              alert(1, 600.0, "tocsin.a"), alert(12, 660.0)]
    report = build_report({"id": "e"}, [], [], alerts, mode="detect")
    assert [(a["incident_id"], a["revision"]) for a in report["alerts"]] == [
        ("tocsin.x", 8), ("tocsin.a", 1), ("tocsin.x", 9), ("tocsin.x", 10), ("tocsin.x", 11),
        ("tocsin.x", 12)]
