"""The alert stage: incident revisions in, alert messages out, as a function of the set.

Incident revisions may arrive out of order or be corrected (same key, new content). The
stage keeps the latest version of each revision, replays the alert policy over them in
order of issue, and emits only the alerts that are new or whose content changed, so the
streaming pipeline and ``tocsin detect`` end with the same alerts.
"""

from __future__ import annotations

from collections.abc import Iterable

from responders.alerting import AlertPolicy
from streams.schemas import AlertMessage, IncidentRevision


def alerts_for_revisions(revisions: Iterable[IncidentRevision], sender: str = "tocsin@localhost",
                         status: str = "Actual") -> list[AlertMessage]:
    policy = AlertPolicy(sender, status)
    out: list[AlertMessage] = []
    for rev in sorted(revisions, key=lambda r: (r.issued, r.incident_id, r.revision)):
        out.extend(policy.on_revision(rev))
    return out


class AlertStage:
    def __init__(self, sender: str = "tocsin@localhost", status: str = "Actual") -> None:
        self.sender, self.status = sender, status
        self._revisions: dict[str, IncidentRevision] = {}
        self._sent: dict[str, AlertMessage] = {}

    def add(self, rev: IncidentRevision) -> list[AlertMessage]:
        """The alerts that are new or changed once ``rev`` is known. If the policy raises,
        the stage is left as it was: the revision is not kept to fail every later one."""
        old = self._revisions.get(rev.key)
        if old is not None and old.to_dict() == rev.to_dict():
            return []
        revisions = dict(self._revisions)
        if rev.status == "retracted":
            revisions.pop(rev.key, None)
        else:
            revisions[rev.key] = rev
        sent = dict(self._sent)
        changed = []
        for alert in alerts_for_revisions(revisions.values(), self.sender, self.status):
            if sent.get(alert.identifier) != alert:
                sent[alert.identifier] = alert
                changed.append(alert)
        if rev.status == "retracted" and not any(
                r.incident_id == rev.incident_id for r in revisions.values()):
            # the incident is gone: agencies that got its alerts must get a Cancel
            mine = [a for a in sent.values() if a.incident_id == rev.incident_id]
            if mine and all(a.msg_type != "Cancel" for a in mine):
                last = max(mine, key=lambda a: (a.revision, a.sent))
                cancel = AlertPolicy(self.sender, self.status).cancel(rev, last)
                sent[cancel.identifier] = cancel
                changed.append(cancel)
        self._revisions, self._sent = revisions, sent
        return changed
