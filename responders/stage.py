"""The alert stage: incident revisions in, alert messages out, as a function of the set.

Incident revisions may arrive out of order or be corrected (same key, new content). The
stage keeps the latest version of each revision, replays the alert policy over them in
order of issue, and emits only the alerts that are new or whose content changed, so the
streaming pipeline and ``tocsin detect`` end with the same alerts.

A message once sent is never sent again with other content under its identifier (CAP
identifiers are unique, and agencies and the outbox know a message by it): when a
correction changes a message already sent, the stage sends the new content as an
``Update`` under ``<identifier>.c<n>`` that references the message it supersedes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from lxml import etree

from responders.alerting import CAP_NS, AlertPolicy, cap_time
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
        # the policy's latest message for each of its identifiers, and what went out for it
        # last (itself, or its latest correction)
        self._sent: dict[str, AlertMessage] = {}
        self._out: dict[str, AlertMessage] = {}

    def add(self, rev: IncidentRevision) -> list[AlertMessage]:
        """The alerts that are new or changed once ``rev`` is known. If the policy raises,
        the stage is left as it was: the revision is not kept to fail every later one."""
        old = self._revisions.get(rev.key)
        if old is not None and old.same_as(rev):
            return []
        revisions = dict(self._revisions)
        if rev.status == "retracted":
            revisions.pop(rev.key, None)
        else:
            revisions[rev.key] = rev
        sent, out = dict(self._sent), dict(self._out)
        changed = []
        for alert in alerts_for_revisions(revisions.values(), self.sender, self.status):
            if sent.get(alert.identifier) != alert:
                previous = out.get(alert.identifier)
                sent[alert.identifier] = alert
                if previous is not None:  # sent before with other content: a correction
                    alert = correction(alert, previous, self.sender)
                out[sent_id(alert)] = alert
                changed.append(alert)
        alive = any(r.incident_id == rev.incident_id for r in revisions.values())
        if rev.status == "retracted" and not alive:
            # the incident is gone: agencies that got its alerts must get a Cancel
            mine = [a for a in sent.values() if a.incident_id == rev.incident_id]
            if mine and all(a.msg_type != "Cancel" for a in mine):
                last = out[max(mine, key=lambda a: (a.revision, a.sent)).identifier]
                # sent no earlier than the message it cancels
                cancel = AlertPolicy(self.sender, self.status).cancel(
                    replace(rev, issued=max(rev.issued, last.sent)), last)
                sent[cancel.identifier] = out[cancel.identifier] = cancel
                changed.append(cancel)
        elif rev.status == "retracted":
            # a later revision withdrawn, earlier ones stand: if agencies' latest message
            # came from a withdrawn one, the latest that stands is sent again, as an Update
            now = {a.identifier for a in alerts_for_revisions(
                (r for r in revisions.values() if r.incident_id == rev.incident_id),
                self.sender, self.status)}
            gone = [a for k, a in sent.items() if a.incident_id == rev.incident_id
                    and k not in now]
            if gone:
                stands = max((sent[k] for k in now), key=lambda a: (a.revision, a.sent))
                withdrawn = out[max(gone, key=lambda a: (a.revision, a.sent)).identifier]
                for a in gone:  # out keeps them: one coming back is a correction then
                    del sent[a.identifier]
                if (withdrawn.revision, withdrawn.sent) > (stands.revision, stands.sent):
                    again = correction(stands, out[stands.identifier], self.sender,
                                       also=withdrawn, sent=max(withdrawn.sent, stands.sent))
                    out[stands.identifier] = again
                    changed.append(again)
        self._revisions, self._sent, self._out = revisions, sent, out
        return changed


def sent_id(msg: AlertMessage) -> str:
    """The policy's identifier of a message (a correction's without its ``.c<n>``)."""
    base, dot, n = msg.identifier.rpartition(".c")
    return base if dot and n.isdigit() else msg.identifier


def correction(msg: AlertMessage, previous: AlertMessage, sender: str, *,
               also: AlertMessage | None = None, sent: float | None = None) -> AlertMessage:
    """``msg``, whose identifier went out before as ``previous`` (with other content, or
    before ``also``, a message withdrawn since), as an ``Update`` of its own:
    ``<identifier>.c<n>``, referencing ``previous`` (and ``also``) too."""
    n = 1 if previous.identifier == msg.identifier else int(
        previous.identifier.rpartition(".c")[2]) + 1
    identifier = f"{msg.identifier}.c{n}"
    msg_type = "Cancel" if msg.msg_type == "Cancel" else "Update"
    refs = (*msg.references, *(f"{sender},{m.identifier},{cap_time(m.sent)}"
                               for m in (previous, also) if m is not None))
    sent = msg.sent if sent is None else float(sent)
    doc = etree.fromstring(msg.cap_xml.encode())

    def el(tag: str) -> etree._Element:
        found = doc.find(f"{{{CAP_NS}}}{tag}")
        assert found is not None, f"a CAP message without {tag}"
        return found

    el("identifier").text = identifier
    el("msgType").text = msg_type
    el("sent").text = cap_time(sent)
    references = doc.find(f"{{{CAP_NS}}}references")
    if references is None:  # it goes right before <incidents>
        references = etree.Element(f"{{{CAP_NS}}}references")
        el("incidents").addprevious(references)
    references.text = " ".join(refs)
    xml = etree.tostring(doc, xml_declaration=True, encoding="UTF-8").decode()
    return replace(msg, identifier=identifier, msg_type=msg_type, references=refs,
                   sent=sent, cap_xml=xml)
