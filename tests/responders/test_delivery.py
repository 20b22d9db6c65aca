"""Subscriptions, matching, webhook and e-mail delivery with retries and dead letters."""

from __future__ import annotations

import email
import re
import time
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller

from responders.alerting import AlertPolicy
from responders.delivery import (
    Outbox,
    Subscription,
    SubscriptionError,
    UnsafeTarget,
    cap_areas,
    make_url_checker,
    matches,
    warm_up,
)
from responders.store import Counts, Store
from streams.schemas import Forecast, IncidentRevision
from tests.conftest import free_port
from tests.responders.receivers import WebhookReceiver

T = 1642220085.0
JAPAN = {"type": "Polygon", "coordinates": [[[128, 30], [146, 30], [146, 46], [128, 46],
                                             [128, 30]]]}
EUROPE = {"type": "Polygon", "coordinates": [[[-10, 35], [30, 35], [30, 60], [-10, 60],
                                              [-10, 35]]]}


def revision(n: int, status: str = "watch") -> IncidentRevision:
    return IncidentRevision(
        incident_id="eruption-x", type="volcanic_eruption", revision=n, issued=T + 600.0 * n,
        status=status, origin_time=T, lat=-20.5, lon=-175.4, speed_m_s=314.0,
        detections=("a",), stations_used=("A", "B", "C", "D"),
        forecasts=(Forecast("chij", "tide_gauge", T + 28000.0, 7900.0, 35.13, 140.25),),
        confirmed=("chij",) if status == "confirmed" else ())


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.close()


def outbox(store: Store, clock: Clock, dead: list[dict] | None = None,  # type: ignore[type-arg]
           **kw: object) -> Outbox:
    return Outbox(store, clock=clock, backoff_s=1.0, backoff_max_s=8.0,
                  check_url=make_url_checker(), dead_letter=(dead.append if dead is not None
                                                             else None), **kw)  # type: ignore[arg-type]


def publish(store: Store, box: Outbox, rev: IncidentRevision,
            policy: AlertPolicy) -> list:  # type: ignore[type-arg]
    msgs = policy.on_revision(rev)
    for m in msgs:
        with store.begin() as c:
            store.save_alert(m, c)
            box.enqueue(m, c)
    return msgs


def test_area_and_severity_matching() -> None:
    (msg,) = AlertPolicy().on_revision(revision(1))
    areas = cap_areas(msg.cap_xml)
    web = [{"type": "webhook", "url": "http://example.org/x", "secret": "s"}]
    japan = Subscription.create("JMA", JAPAN, "Severe", web)
    europe = Subscription.create("EU", EUROPE, "Minor", web)
    picky = Subscription.create("JMA-extreme", JAPAN, "Extreme", web)
    assert matches(japan, msg, areas)  # the watch circle at Choshi lies in Japan
    assert not matches(europe, msg, areas)
    assert not matches(picky, msg, areas)  # a watch is Severe, not Extreme


def test_bad_subscriptions_are_refused_with_the_reason() -> None:
    web = [{"type": "webhook", "url": "http://example.org/x", "secret": "s"}]
    with pytest.raises(SubscriptionError, match="Polygon"):
        Subscription.create("x", {"type": "Point", "coordinates": [0, 0]}, "Minor", web)
    with pytest.raises(SubscriptionError, match="'Huge'"):
        Subscription.create("x", JAPAN, "Huge", web)
    with pytest.raises(SubscriptionError, match="'pigeon'"):
        Subscription.create("x", JAPAN, "Minor", [{"type": "pigeon"}])


@pytest.mark.parametrize(("name", "area", "channel", "reason"), [
    # each of these was accepted and then failed every send (a crash of the delivery
    # round) or the alert agent's transaction on PostgreSQL (longer than the column)
    ("x", JAPAN, {"type": "webhook", "url": "http://example.org/x", "secret": 12345},
     "webhook secret must be a string, got int"),
    ("x", JAPAN, {"type": "webhook", "url": "http://example.org/x", "secret": {"k": 1}},
     "webhook secret must be a string, got dict"),
    ("x", JAPAN, {"type": "email", "to": "a@b.org\r\nBcc: x@y.org"}, "control character"),
    ("x", JAPAN, {"type": "email", "to": "a@b.org, c@d.org"}, "not one address"),
    ("x", JAPAN, {"type": "webhook", "url": "http://example.org/" + "a" * 500,
                  "secret": "s"}, "webhook url has 519 characters, more than 500"),
    ("n" * 201, JAPAN, {"type": "email", "to": "a@b.org"}, "name has 201 characters"),
    ("x", {"type": "Polygon", "coordinates": [[[170, -25], [190, -25], [190, -15],
                                               [170, -15], [170, -25]]]},
     {"type": "email", "to": "a@b.org"}, "lon 170..190"),
    ("x", JAPAN, "a@b.org", "a channel is an object"),
    # smtplib refused every alert to these (no SMTPUTF8 offered) and they went dead
    ("x", JAPAN, {"type": "email", "to": "d\u00fcty@nemo.to"}, "non-ASCII local part"),
    ("x", JAPAN, {"type": "email", "to": "duty@nem\u00f6.to"},
     "give its IDNA form, duty@xn--nem-una.to"),
    # stored and echoed back; PostgreSQL's json refused a NaN (a 500)
    ("x", JAPAN, {"type": "email", "to": "a@b.org", "priority": float("nan")},
     r"email channel: unknown field\(s\) \['priority'\]"),
    ("x", {**JAPAN, "note": [1.0, float("inf")]}, {"type": "email", "to": "a@b.org"},
     r"area.note\[1\] = inf: not a JSON number"),
    ("x", JAPAN, {"type": ["webhook"], "url": "x"}, "channel type \\['webhook'\\] is not one"),
    # taken, and every alert to them failed (found by review)
    ("x", JAPAN, {"type": "email", "to": "@"}, "the part before '@' is empty or not a mailbox"),
    ("x", JAPAN, {"type": "email", "to": "@b.org"}, "the part before '@' is empty"),
    ("x", JAPAN, {"type": "email", "to": "a(b)@c.org"}, "the part before '@' is empty or not"),
    ("x", JAPAN, {"type": "email", "to": "a..b@c.org"}, "the part before '@' is empty or not"),
    ("x", JAPAN, {"type": "email", "to": "a@"}, "the part after '@' is empty or not a host"),
    ("x", JAPAN, {"type": "email", "to": "a@b..org"}, "the part after '@' is empty or not"),
    ("x", JAPAN, {"type": "email", "to": "a@-b.org"}, "the part after '@' is empty or not"),
    (" ", JAPAN, {"type": "email", "to": "a@b.org"}, "name is empty"),
    ("\ud800", JAPAN, {"type": "email", "to": "a@b.org"},
     "name is not valid Unicode \\(a lone surrogate\\)"),
    ("x", JAPAN, {"type": "webhook", "url": "http://example.org/x", "secret": "\udc00"},
     "webhook secret is not valid Unicode"),
    ("x", {**JAPAN, "\ud800": 1}, {"type": "email", "to": "a@b.org"},
     "area is not valid JSON text"),
    ("x", {**JAPAN, "note": "n" * 600_000}, {"type": "email", "to": "a@b.org"},
     "area has 600[0-9]+ bytes as JSON, more than 524288"),
])
def test_subscription_fields_are_checked(name: str, area: dict, channel: object,  # type: ignore[type-arg]
                                         reason: str) -> None:
    with pytest.raises(SubscriptionError, match=reason):
        Subscription.create(name, area, "Minor", [channel])  # type: ignore[list-item]


def test_a_subscription_has_at_most_twenty_channels_and_good_addresses_pass() -> None:
    """5000 channels were taken (each alert a delivery to each, found by review)."""
    many = [{"type": "email", "to": f"d{i}@n.to"} for i in range(21)]
    with pytest.raises(SubscriptionError, match="21 channels, more than 20"):
        Subscription.create("x", JAPAN, "Minor", many)
    addresses = ["duty.officer@agency.example", "o'brien+alerts@nemo.gov.to", "ops@localhost",
                 "a_b-c@x-y.example"]
    sub = Subscription.create("x", JAPAN, "Minor", [{"type": "email", "to": a}
                                                    for a in addresses])
    assert [ch["to"] for ch in sub.channels] == addresses


@pytest.mark.parametrize(("addr", "reason"), [
    # judged by the IPv4 address they carry: the first was refused as "not a unicast
    # address", the 6to4 one taken (found by review)
    ("::ffff:169.254.169.254", "link-local/metadata address 169.254.169.254"),
    ("2002:a9fe:a9fe::1", "link-local/metadata address 169.254.169.254"),
    ("::ffff:224.0.0.1", "resolves to 224.0.0.1, which is not a unicast address"),
])
def test_ipv6_forms_of_ipv4_addresses_are_judged_as_those(addr: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=re.escape(reason)):
        make_url_checker(resolve=lambda host: [addr])("http://hook.example/x")


def test_ipv6_loopback_is_taken_like_ipv4_loopback() -> None:
    """::1 is in Python's reserved ::/8: a host resolving to it was refused as "not a
    unicast address" where 127.0.0.1 was taken."""
    for addr in ("127.0.0.1", "::1"):
        assert make_url_checker(resolve=lambda host, a=addr: [a])("http://h.example/") == [addr]


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.org/x", "scheme"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://0.0.0.0/x", "unicast"),
    ("http://224.0.0.1/x", "unicast"),
    ("http://[::1/x", "not a valid URL"),
    ("http://example.org:port/x", "not a valid URL"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata address fd00:ec2::254"),
    ("http://100.100.100.200/latest/meta-data/", "metadata address 100.100.100.200"),
    # no IDNA name: the resolver raised UnicodeError and POST /api/subscriptions answered 500
    ("http://a..b/x", "host 'a..b' does not resolve"),
    (f"http://{'a' * 64}.org/x", "does not resolve: encoding with 'idna' codec failed"),
])
def test_unsafe_webhook_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        make_url_checker()(url)


def test_allow_list_and_explicit_link_local() -> None:
    with pytest.raises(UnsafeTarget, match="allow-list"):
        make_url_checker("alerts.example.org")("http://127.0.0.1/x")
    make_url_checker(allow_link_local=True)("http://169.254.169.254/x")


def test_a_webhook_goes_to_the_address_that_was_checked(store: Store) -> None:
    """DNS rebinding: the host is resolved once, by the check, and the POST connects to
    that address (with the host in ``Host``), never to a second answer. The name here
    resolves through the checker alone: a second lookup would not find it at all."""
    clock = Clock()
    rx = WebhookReceiver("k")
    port = rx.url.split(":")[2].split("/")[0]
    box = Outbox(store, clock=clock, check_url=make_url_checker(
        resolve=lambda host: ["127.0.0.1"] if host == "hooks.agency.example" else []))
    url = f"http://hooks.agency.example:{port}/cap"
    box.add_subscription(Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": url, "secret": "k"}], check_url=box.check_url))
    publish(store, box, revision(1), AlertPolicy())
    box.dispatch_due()
    assert [d["status"] for d in box.deliveries()] == ["delivered"], box.deliveries()
    assert [r.host for r in rx.received] == [f"hooks.agency.example:{port}"]
    assert rx.received[0].signature_ok
    rx.close()


def test_a_webhook_tries_each_checked_address_in_the_resolver_s_order(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The addresses were sorted as strings and only the first was tried: a host with IPv4
    and IPv6 addresses got its IPv6 one first, and from a network without IPv6 every
    attempt failed until the delivery was dead. Now getaddrinfo's order (its preference)
    is kept, and an address that refuses the connection hands over to the next."""
    import socket

    from responders import delivery

    answers = [(socket.AF_INET, 0, 0, "", ("93.184.216.34", 0)),
               (socket.AF_INET6, 0, 0, "", ("2606:2800:220:1::1", 0, 0, 0))]
    with monkeypatch.context() as m:  # (the socket module's: restored before the send)
        m.setattr(delivery.socket, "getaddrinfo", lambda host, port: answers)
        assert make_url_checker()("https://agency.example/cap") == ["93.184.216.34",
                                                                     "2606:2800:220:1::1"]

    clock = Clock()
    rx = WebhookReceiver("k")  # on 127.0.0.1 only: 127.0.0.2 refuses the connection
    port = rx.url.split(":")[2].split("/")[0]
    box = Outbox(store, clock=clock, check_url=make_url_checker(
        resolve=lambda host: ["127.0.0.2", "127.0.0.1"]))
    box.add_subscription(Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": f"http://hooks.agency.example:{port}/cap", "secret": "k"}],
        check_url=box.check_url))
    publish(store, box, revision(1), AlertPolicy())
    box.dispatch_due()
    assert [(d["status"], d["last_error"]) for d in box.deliveries()] == [("delivered", None)]
    assert len(rx.received) == 1 and rx.received[0].signature_ok
    rx.close()


def test_a_send_that_raises_is_a_failed_attempt_and_the_round_goes_on(store: Store) -> None:
    """A channel the checks did not foresee (stored by an older version, say) fails its own
    delivery, with the reason, and backs off to a dead letter; the round does not crash and
    the other subscriptions get theirs."""
    clock = Clock()
    dead: list[dict] = []  # type: ignore[type-arg]
    rx = WebhookReceiver("k")
    box = outbox(store, clock, dead, max_attempts=2)
    box.add_subscription(Subscription("bad", "bad", JAPAN, "Minor", (
        {"type": "webhook", "url": rx.url, "secret": 12345},)))
    box.add_subscription(Subscription.create("good", JAPAN, "Minor", [
        {"type": "webhook", "url": rx.url, "secret": "k"}]))
    publish(store, box, revision(1), AlertPolicy())
    for _ in range(4):
        box.dispatch_due()
        clock.t += 10.0
    by_sub = {d["subscription_id"]: d for d in box.deliveries()}
    assert by_sub["bad"]["status"] == "dead" and by_sub["bad"]["attempts"] == 2
    assert "AttributeError" in by_sub["bad"]["last_error"]
    assert [d["reason"] for d in dead] == [by_sub["bad"]["last_error"]]
    good = next(d for k, d in by_sub.items() if k != "bad")
    assert good["status"] == "delivered" and len(rx.received) == 1
    rx.close()


def test_exercises_reach_only_the_subscriptions_that_take_them(store: Store) -> None:
    """The alerts of a replay of recorded data are CAP Exercise messages: an agency that
    subscribed to live alerts must not get a historic event as a current warning."""
    clock = Clock()
    live, drills = WebhookReceiver("k"), WebhookReceiver("k")
    box = outbox(store, clock)
    box.add_subscription(Subscription.create("live", JAPAN, "Minor", [
        {"type": "webhook", "url": live.url, "secret": "k"}]))
    box.add_subscription(Subscription.create("drills", JAPAN, "Minor", [
        {"type": "webhook", "url": drills.url, "secret": "k"}], exercises=True))
    assert {s.name: s.exercises for s in box.subscriptions()} == {"live": False, "drills": True}
    publish(store, box, revision(1), AlertPolicy(status="Exercise"))
    live_rev = IncidentRevision(**{**revision(1).__dict__, "incident_id": "eruption-y"})
    publish(store, box, live_rev, AlertPolicy())  # an Actual one
    box.dispatch_due()
    assert len(drills.received) == 2 and len(live.received) == 1
    assert b"<status>Actual</status>" in live.received[0].body
    live.close()
    drills.close()


def test_a_removed_subscription_gets_nothing_more(store: Store) -> None:
    clock = Clock()
    rx = WebhookReceiver("k", up=False)
    box = outbox(store, clock)
    sub = Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": rx.url, "secret": "k"}])
    box.add_subscription(sub)
    publish(store, box, revision(1), AlertPolicy())
    box.dispatch_due()  # fails: the receiver is down
    assert rx.refused == 1
    assert box.remove_subscription(sub.id)
    rx.up = True
    for _ in range(3):
        clock.t += 100.0
        box.dispatch_due()
    assert rx.received == [] and rx.refused == 1
    (d,) = box.deliveries()
    assert d["status"] == "cancelled" and d["last_error"] == "the subscription was removed"
    rx.close()


def test_a_correction_of_an_old_revision_does_not_supersede_the_newer_update(
        store: Store) -> None:
    """r1's watch, r2's Update, then r1 corrected (a late detection): the correction
    (r1.alert.c1, sent at r1's time) superseded r2's Update still waiting for an endpoint
    that was down, which then got only the older, milder message. Now the newest waiting
    message stands: the correction, older, is superseded by it."""
    from dataclasses import replace

    from responders.stage import AlertStage

    clock = Clock()
    rx = WebhookReceiver("s3cret", up=False)
    box = outbox(store, clock)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Minor", [
        {"type": "webhook", "url": rx.url, "secret": "s3cret"}]))
    stage = AlertStage()
    r1 = revision(1)
    sent = []
    for rev in (r1, revision(2, "confirmed"),
                replace(r1, detections=("a", "late"), stations_used=("A", "B", "C", "D", "E"))):
        for m in stage.add(rev):
            with store.begin() as c:
                store.save_alert(m, c)
                box.enqueue(m, c)
            sent.append(m)
    assert [m.identifier for m in sent] == ["tocsin.eruption-x.r1.alert",
                                           "tocsin.eruption-x.r2.update",
                                           "tocsin.eruption-x.r1.alert.c1"]
    status = {d["alert_identifier"]: (d["status"], d["last_error"]) for d in box.deliveries()}
    assert status["tocsin.eruption-x.r2.update"] == ("pending", None)
    assert status["tocsin.eruption-x.r1.alert.c1"] == (
        "superseded", "superseded by tocsin.eruption-x.r2.update (newer) before it was "
        "delivered")
    assert status["tocsin.eruption-x.r1.alert"][0] == "superseded"
    rx.up = True
    box.dispatch_due()
    assert [r.key.split("|")[0] for r in rx.received] == ["tocsin.eruption-x.r2.update"]
    rx.close()


def _down_endpoint(store: Store, dead: list[dict] | None = None,  # type: ignore[type-arg]
                   ) -> tuple[Clock, WebhookReceiver, Outbox]:
    """An outbox with one subscription over Japan, whose webhook is down."""
    clock = Clock()
    rx = WebhookReceiver("s3cret", up=False)
    box = outbox(store, clock, dead)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Minor", [
        {"type": "webhook", "url": rx.url, "secret": "s3cret"}]))
    return clock, rx, box


def _through_stage(store: Store, box: Outbox, revs: list[IncidentRevision]) -> list:  # type: ignore[type-arg]
    from responders.stage import AlertStage

    stage, sent = AlertStage(), []
    for rev in revs:
        for m in stage.add(rev):
            with store.begin() as c:
                store.save_alert(m, c)
                box.enqueue(m, c)
            sent.append(m)
    return sent


def test_the_restatement_after_a_withdrawal_supersedes_the_withdrawn_update(
        store: Store) -> None:
    """r1's watch, r2's Update, r2 withdrawn: the stage restates r1 as r1.alert.c1, sent
    at r2's time. Ranked by (sent, revision, correction number) it was older than r2's
    Update (revision 1 < 2), so for an endpoint that was down the restatement was
    superseded and the withdrawn Update (Extreme) was delivered. It references the Update:
    it is the newer one."""
    from dataclasses import replace

    clock, rx, box = _down_endpoint(store)
    r2 = revision(2, "confirmed")
    sent = _through_stage(store, box, [revision(1), r2, replace(r2, status="retracted")])
    assert [m.identifier for m in sent] == ["tocsin.eruption-x.r1.alert",
                                           "tocsin.eruption-x.r2.update",
                                           "tocsin.eruption-x.r1.alert.c1"]
    assert sent[2].sent == sent[1].sent and sent[2].revision < sent[1].revision
    status = {d["alert_identifier"]: d["status"] for d in box.deliveries()}
    assert status == {"tocsin.eruption-x.r1.alert": "superseded",
                      "tocsin.eruption-x.r2.update": "superseded",
                      "tocsin.eruption-x.r1.alert.c1": "pending"}
    rx.up = True
    box.dispatch_due()
    assert [r.key.split("|")[0] for r in rx.received] == ["tocsin.eruption-x.r1.alert.c1"]
    rx.close()


def test_a_cancel_supersedes_the_correction_it_cancels(store: Store) -> None:
    """r1, r2, r2 corrected (r2.update.c1), then the incident withdrawn: the Cancel (sent
    with the correction, revision 2, correction number 0) ranked older than r2.update.c1
    (correction number 1); an endpoint that was down got the correction, and the incident
    stayed in force there."""
    from dataclasses import replace

    clock, rx, box = _down_endpoint(store)
    r2 = revision(2, "confirmed")
    sent = _through_stage(store, box, [
        revision(1), r2, replace(r2, lat=-20.0, lon=-175.0),
        replace(revision(1), status="retracted")])
    assert [m.identifier for m in sent] == ["tocsin.eruption-x.r1.alert",
                                           "tocsin.eruption-x.r2.update",
                                           "tocsin.eruption-x.r2.update.c1",
                                           "tocsin.eruption-x.r2.cancel"]
    assert sent[3].sent == sent[2].sent
    status = {d["alert_identifier"]: d["status"] for d in box.deliveries()}
    assert status["tocsin.eruption-x.r2.update.c1"] == "superseded"
    assert status["tocsin.eruption-x.r2.cancel"] == "pending"
    rx.up = True
    box.dispatch_due()
    assert [r.key.split("|")[0] for r in rx.received] == ["tocsin.eruption-x.r2.cancel"]
    rx.close()


def test_a_cancel_outlives_the_alert_it_cancels(store: Store) -> None:
    """The Cancel expired 6 h after the retraction (which has no forecasts), hours before
    the Alert it cancels (6 h after its last forecast arrival): an endpoint down for 6 h
    had the Cancel dead-lettered as expired and kept the Alert in force."""
    from dataclasses import replace

    from responders.alerting import cap_expires

    dead: list[dict] = []  # type: ignore[type-arg]
    clock, rx, box = _down_endpoint(store, dead)
    r1 = revision(1)
    alert, cancel = _through_stage(store, box, [
        r1, replace(r1, status="retracted", issued=r1.issued + 600.0, forecasts=())])
    assert cancel.msg_type == "Cancel"
    alert_expires, cancel_expires = cap_expires(alert.cap_xml), cap_expires(cancel.cap_xml)
    assert alert_expires is not None and cancel_expires is not None
    assert cancel_expires >= alert_expires
    clock.t = r1.issued + 600.0 + 6 * 3600.0 + 60.0  # past the retraction's own 6 h
    assert clock.t < alert_expires
    rx.up = True
    box.dispatch_due()
    assert [r.key.split("|")[0] for r in rx.received] == [cancel.identifier]
    assert dead == []
    rx.close()


def test_webhook_down_then_up_gets_each_incident_as_it_stands_once(store: Store) -> None:
    """An endpoint back after an outage gets each incident's newest message, once: the
    watch it missed is superseded by the Update queued after it (sent together, the round's
    threads delivered them in any order, the old watch possibly last)."""
    from dataclasses import replace

    clock = Clock()
    rx = WebhookReceiver("s3cret", up=False)
    box = outbox(store, clock)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": rx.url, "secret": "s3cret"}]))
    sub_id = box.subscriptions()[0].id
    policy = AlertPolicy()
    (watch,) = publish(store, box, revision(1), policy)
    (other,) = publish(store, box, replace(revision(1), incident_id="eruption-y"), policy)
    for _ in range(3):  # down: every attempt fails, retries back off
        box.dispatch_due()
        clock.t += 100.0
    assert rx.refused == 6 and rx.received == []
    (update_,) = publish(store, box, revision(2, "confirmed"), policy)
    assert update_.msg_type == "Update" and watch.identifier in update_.cap_xml
    rx.up = True
    box.dispatch_due()
    box.dispatch_due()  # nothing left: no second send
    assert sorted(r.key for r in rx.received) == sorted(
        f"{m.identifier}|{sub_id}|0" for m in (update_, other))
    assert all(r.signature_ok for r in rx.received)
    by_alert = {d["alert_identifier"]: d for d in box.deliveries()}
    assert by_alert[watch.identifier]["status"] == "superseded"
    assert by_alert[watch.identifier]["last_error"] == (
        f"superseded by {update_.identifier} (Update) before it was delivered")
    assert [a["ok"] for a in by_alert[watch.identifier]["attempt_log"]] == [0, 0, 0]
    assert by_alert[update_.identifier]["status"] == "delivered"
    assert [a["ok"] for a in by_alert[other.identifier]["attempt_log"]] == [0, 0, 0, 1]
    assert {r.attempt for r in rx.received} == {1, 4}
    # the messages redelivered by Kafka after a crash: same keys, nothing new to send, and
    # the old watch does not come back
    for m in (watch, other, update_):
        with store.begin() as c:
            box.enqueue(m, c)
    assert box.dispatch_due() == 0
    assert {d["alert_identifier"]: d["status"] for d in box.deliveries()} == {
        watch.identifier: "superseded", update_.identifier: "delivered",
        other.identifier: "delivered"}
    rx.close()


@pytest.mark.parametrize("ok", [True, False], ids=["got-there", "failed"])
def test_a_delivery_superseded_while_it_is_being_sent(store: Store, ok: bool) -> None:
    """The Update is queued while the watch is on its way. A watch that got there is
    delivered (and the Update follows it); one whose send failed is not retried: the
    Update goes instead, and nothing is dead-lettered."""
    from responders.delivery import SendResult

    clock = Clock()
    dead: list[dict] = []  # type: ignore[type-arg]
    box = outbox(store, clock, dead, threads=1)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": "http://example.org/x", "secret": "k"}]))
    policy = AlertPolicy()
    (watch,) = publish(store, box, revision(1), policy)
    sent: list[str] = []

    def send(ch, alert, key, attempt):  # type: ignore[no-untyped-def]
        sent.append(alert["identifier"])
        if len(sent) == 1:  # the next revision's Update comes in meanwhile
            publish(store, box, revision(2, "confirmed"), policy)
            return SendResult(ok, 204 if ok else 503, None if ok else "HTTP 503")
        return SendResult(True, 204)

    box._send = send  # type: ignore[method-assign]
    assert box.dispatch_due() == 1
    clock.t += 1000.0
    assert box.dispatch_due() == 1
    assert box.dispatch_due() == 0
    statuses = {d["alert_identifier"]: d["status"] for d in box.deliveries()}
    (update_id,) = set(statuses) - {watch.identifier}
    assert sent == [watch.identifier, update_id]
    assert statuses == {watch.identifier: "delivered" if ok else "superseded",
                        update_id: "delivered"}
    assert dead == []


def test_an_actual_alert_past_its_expiry_is_not_sent_but_dead_lettered(store: Store) -> None:
    """An endpoint down for longer than the alert is valid: the warning that has run out
    is not sent when it comes back (the agency would act on it), and the operators hear of
    it. An exercise carries the recorded event's times: it is sent whatever they say."""
    from responders.alerting import cap_expires

    clock = Clock()
    dead: list[dict] = []  # type: ignore[type-arg]
    rx = WebhookReceiver("k", up=False)
    box = outbox(store, clock, dead, max_attempts=100)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": rx.url, "secret": "k"}], exercises=True))
    (actual,) = publish(store, box, revision(1), AlertPolicy())
    (drill,) = publish(store, box, IncidentRevision(**{**revision(1).__dict__,
                                                       "incident_id": "drill"}),
                       AlertPolicy(status="Exercise"))
    expires = cap_expires(actual.cap_xml)
    assert expires is not None and expires == cap_expires(drill.cap_xml)
    assert expires == T + 28000.0 + 6 * 3600.0  # the forecast's ETA + 6 h
    clock.t = expires - 5.0
    box.dispatch_due()  # down
    assert rx.refused == 2 and dead == []
    rx.up = True
    clock.t = expires + 60.0
    box.dispatch_due()
    assert [r.key.split("|")[0] for r in rx.received] == [drill.identifier]
    by_alert = {d["alert_identifier"]: d for d in box.deliveries()}
    assert by_alert[actual.identifier]["status"] == "expired"
    reason = by_alert[actual.identifier]["last_error"]
    assert reason.startswith("the alert expired at ") and "1 attempt(s) failed" in reason
    assert [a["ok"] for a in by_alert[actual.identifier]["attempt_log"]] == [0]
    assert [(d["alert"], d["reason"]) for d in dead] == [(actual.identifier, reason)]
    assert by_alert[drill.identifier]["status"] == "delivered"
    assert box.dispatch_due() == 0 and len(dead) == 1
    rx.close()


def test_dead_letter_after_max_attempts(store: Store) -> None:
    clock = Clock()
    dead: list[dict] = []  # type: ignore[type-arg]
    rx = WebhookReceiver("k", up=False)
    box = outbox(store, clock, dead, max_attempts=3)
    box.add_subscription(Subscription.create("X", JAPAN, "Minor", [
        {"type": "webhook", "url": rx.url + "?token=t0p", "secret": "k"}]))
    publish(store, box, revision(1), AlertPolicy())
    delays = []
    for _ in range(10):
        if box.dispatch_due():
            delays.append(box.deliveries()[0]["next_attempt"] - clock.t)
        clock.t += 1.0
    (d,) = box.deliveries()
    assert d["status"] == "dead" and d["attempts"] == 3
    assert delays[:2] == [1.0, 2.0]  # exponential backoff
    assert len(dead) == 1 and dead[0]["reason"] == "HTTP 503"
    # the letter goes on a Kafka topic: where, not the URL's token
    assert dead[0]["target"] == "http://127.0.0.1" and "t0p" not in str(dead[0])
    rx.close()


def test_a_delivery_past_attempt_1024_backs_off_and_goes_dead(store: Store) -> None:
    """2 ** 1024 does not fit a float: each round raised OverflowError inside the attempt's
    transaction, the attempt was rolled back and the delivery stayed pending for ever."""
    from sqlalchemy import update

    from responders.store import DeliveryRow

    clock = Clock()
    dead: list[dict] = []  # type: ignore[type-arg]
    rx = WebhookReceiver("k", up=False)
    box = outbox(store, clock, dead, max_attempts=1026)
    box.add_subscription(Subscription.create("X", JAPAN, "Minor", [
        {"type": "webhook", "url": rx.url, "secret": "k"}]))
    publish(store, box, revision(1), AlertPolicy())
    with store.begin() as c:
        c.execute(update(DeliveryRow).values(attempts=1024))
    assert box.dispatch_due() == 1
    (d,) = box.deliveries()
    assert (d["status"], d["attempts"], d["next_attempt"] - clock.t) == ("pending", 1025, 8.0)
    clock.t += 8.0
    assert box.dispatch_due() == 1
    assert box.deliveries()[0]["status"] == "dead" and len(dead) == 1
    rx.close()


def test_verify_says_no_to_any_other_text() -> None:
    """A signature header with non-ASCII text raised TypeError in compare_digest (a
    receiver using verify() answered 500 instead of refusing it)."""
    from responders.delivery import sign, verify

    body, t = b"<alert/>", 1_700_000_000
    assert verify("k", body, sign("k", body, t), str(t), now=t + 299.0)
    for other in (sign("j", body, t), "", "sha256=\u00e9\u00e9", "sha256=\udcff",
                  sign("k", b"x", t), sign("k", body, t + 1)):
        assert not verify("k", body, other, str(t), now=t)
    for stamp in ("", "1.7e9", "-1", "\u0661\u0662", " 1700000000", "9" * 13):
        assert not verify("k", body, sign("k", body, t), stamp, now=t)


def test_a_webhook_request_played_back_later_is_refused(store: Store) -> None:
    """The signature covered the body alone: a request recorded on the way (a proxy's log)
    verified forever. It now signs the attempt's time too, so a receiver refuses it five
    minutes on, and a timestamp changed to look fresh breaks the signature."""
    from responders.delivery import sign, verify

    rx = WebhookReceiver("k")
    box = outbox(store, Clock())
    box.add_subscription(Subscription.create("JMA", JAPAN, "Moderate", [
        {"type": "webhook", "url": rx.url, "secret": "k"}]))
    before = time.time()
    publish(store, box, revision(1), AlertPolicy())
    box.dispatch_due()
    (got,) = rx.received
    assert got.signature_ok
    stamp = int(got.timestamp)
    assert before - 1 <= stamp <= time.time()  # the sender's clock, not the outbox's
    assert got.signature == sign("k", got.body, stamp)
    assert verify("k", got.body, got.signature, got.timestamp, now=stamp + 300.0)
    assert not verify("k", got.body, got.signature, got.timestamp, now=stamp + 301.0)
    assert not verify("k", got.body, got.signature, str(stamp + 400), now=stamp + 401.0)
    rx.close()


def test_cancel_follows_the_alert_to_its_subscribers(store: Store) -> None:
    clock = Clock()
    rx = WebhookReceiver("k")
    box = outbox(store, clock)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Severe", [
        {"type": "webhook", "url": rx.url, "secret": "k"}]))
    policy = AlertPolicy()
    publish(store, box, revision(1), policy)
    box.dispatch_due()
    (cancel,) = publish(store, box, IncidentRevision(**{**revision(1).__dict__,
                                                        "status": "retracted",
                                                        "forecasts": ()}), policy)
    assert cancel.msg_type == "Cancel"
    box.dispatch_due()
    # the Cancel has no Japanese area but follows the Alert
    assert [r.key.split("|")[0] for r in rx.received][1:] == [cancel.identifier]
    rx.close()


def test_email_through_a_loopback_smtp_server(store: Store) -> None:
    got: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def] # noqa: N802
            got.append(envelope.content)
            return "250 OK"

    port = free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        clock = Clock()
        box = outbox(store, clock, smtp=("127.0.0.1", port))
        box.add_subscription(Subscription.create("NDMO", JAPAN, "Minor", [
            {"type": "email", "to": "duty@agency.example"}]))
        (msg,) = publish(store, box, revision(1), AlertPolicy())
        box.dispatch_due()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ctl.stop()
    (raw,) = got
    mail = email.message_from_bytes(raw)
    assert mail["Subject"].startswith("[CAP Alert]")
    att = [p for p in mail.walk() if p.get_content_type() == "application/cap+xml"]
    assert att and att[0].get_payload(decode=True).decode() == msg.cap_xml
    assert box.deliveries()[0]["status"] == "delivered"


def test_warm_up_compiles_the_way_to_an_alert_and_stores_nothing(store: Store) -> None:
    """A fresh worker's first incident and alert need no statement compiled: the warm-up
    stored a detection, a revision and an alert, and rolled them back."""
    from tests.responders.test_store import detection

    box = outbox(store, Clock())
    cache = store.engine._compiled_cache
    assert cache is not None
    before = len(cache)
    warm_up(store, box)
    assert store.counts() == Counts(0, 0, 0, 0, 0)
    compiled = len(cache)
    assert compiled > before + 4
    rev = revision(1)
    store.save_all([detection("A", T), rev])
    with store.begin() as c:
        for msg in AlertPolicy().on_revision(rev):
            store.save_alert(msg, c)
            box.enqueue(msg, c)
    assert store.counts() == Counts(1, 1, 1, 1, 0)
    assert len(cache) == compiled  # nothing left to compile on the way


def test_an_alert_by_the_antimeridian_reaches_areas_on_both_sides() -> None:
    """A circle around 179.9 E reaches over 180: its part beyond is on the other side of a
    subscription area drawn in lon -180..180 (Samoa, Fiji); a 0..360 longitude is the same
    place as its -180..180 one."""
    fiji_east = {"type": "Polygon", "coordinates": [[[-180, -20], [-179.5, -20],
                                                     [-179.5, -15], [-180, -15], [-180, -20]]]}
    sub = Subscription.create("Fiji east", fiji_east, "Minor", [
        {"type": "email", "to": "duty@fiji.example"}])
    from responders.delivery import circle
    assert sub.geometry.intersects(circle(-17.0, 179.95, 20.0))
    assert circle(-13.83, 188.24, 20.0).equals(circle(-13.83, -171.76, 20.0))


def test_a_delivery_claimed_late_in_a_slow_round_is_not_sent_twice(store: Store) -> None:
    """The lease of a claim ran from the start of the round: after two sends of 35 s, the
    third delivery's lease had run out before its send, and another worker's round (on
    the same database) took it and sent it again."""
    from dataclasses import replace

    from responders.delivery import SendResult

    clock = Clock()
    # one send at a time (as when a round has more deliveries than threads: a queued one
    # claims when its send starts, as here)
    box_a, box_b = outbox(store, clock, threads=1), outbox(store, clock, threads=1)
    for i in range(3):
        box_a.add_subscription(Subscription.create(f"s{i}", JAPAN, "Minor", [
            {"type": "webhook", "url": "http://example.org/x", "secret": "k"}], id=f"s{i}"))
    publish(store, box_a, revision(1), AlertPolicy())
    sent: list[tuple[str, str]] = []

    def slow(who: str, other: Outbox | None):  # type: ignore[no-untyped-def]
        def send(ch, alert, key, attempt):  # type: ignore[no-untyped-def]
            sent.append((who, key))
            clock.t += 35.0
            if other is not None and len(sent) == 3:  # the other worker's round, during
                other.dispatch_due()                  # the third send of this one
            return SendResult(True, 200)
        return send

    box_b._send = slow("B", None)  # type: ignore[method-assign]
    box_a._send = slow("A", box_b)  # type: ignore[method-assign]
    assert box_a.dispatch_due() == 3
    keys = [k for _, k in sent]
    assert len(keys) == len(set(keys)) == 3, sent
    assert all(d["status"] == "delivered" for d in box_a.deliveries())
    # a lease still runs out: a worker that died mid-send leaves it to another
    publish(store, box_a, replace(revision(2), incident_id="eruption-y"), AlertPolicy())
    (key,) = [d["key"] for d in box_a.deliveries() if d["status"] == "pending"][:1]
    assert box_a._claim(key) and not box_b._claim(key)
    clock.t += 61.0
    assert box_b._claim(key)


def test_a_send_that_outlasts_its_lease_leaves_the_delivery_to_the_worker_that_took_it(
        store: Store) -> None:
    """A send slower than its lease (a receiver trickling its answer: httpx's timeouts are
    per read) ended with an unconditional update: after the other worker had taken the
    delivery over and delivered it, the slow one's failure marked it dead and
    dead-lettered it (or, with attempts left, put it back to be sent again)."""
    from responders.delivery import SendResult

    clock = Clock()
    dead_a: list[dict] = []  # type: ignore[type-arg]
    box_a = outbox(store, clock, dead_a, max_attempts=1)
    box_b = outbox(store, clock, max_attempts=1)
    box_a.add_subscription(Subscription.create("JMA", JAPAN, "Minor", [
        {"type": "webhook", "url": "http://example.org/x", "secret": "k"}]))
    publish(store, box_a, revision(1), AlertPolicy())
    sends: list[str] = []

    def slow(ch, alert, key, attempt):  # type: ignore[no-untyped-def]
        sends.append("A")
        clock.t += 70.0  # beyond the 60-s lease: B's round takes it meanwhile
        box_b.dispatch_due()
        return SendResult(False, error="ReadTimeout")

    def quick(ch, alert, key, attempt):  # type: ignore[no-untyped-def]
        sends.append("B")
        return SendResult(True, 200)

    box_a._send = slow  # type: ignore[method-assign]
    box_b._send = quick  # type: ignore[method-assign]
    assert box_a.dispatch_due() == 1
    assert sends == ["A", "B"]
    (d,) = box_a.deliveries()
    assert d["status"] == "delivered" and d["attempts"] == 1
    assert sorted(a["ok"] for a in d["attempt_log"]) == [0, 1]  # both attempts are on record
    assert dead_a == []  # nothing dead-lettered: it got there


def test_an_endpoint_that_does_not_answer_holds_up_only_its_own_delivery(
        store: Store) -> None:
    """Deliveries went one at a time: a black-holed endpoint held every delivery behind it
    in the round for its connect timeout (5 s each), a new alert's other agencies with
    them. Now the round's sends run side by side: here the stuck one is let go only once
    the others have been delivered, which a round of one send at a time never reaches."""
    import threading

    from responders.delivery import SendResult

    clock = Clock()
    box = outbox(store, clock, threads=4)
    for name in ("0-stuck", "a", "b", "c"):  # (keys in this order: the stuck one first)
        box.add_subscription(Subscription.create(name, JAPAN, "Minor", [
            {"type": "webhook", "url": f"http://{name}.example/x", "secret": "k"}], id=name))
    publish(store, box, revision(1), AlertPolicy())
    others_done = threading.Event()
    delivered: list[str] = []

    def send(ch, alert, key, attempt):  # type: ignore[no-untyped-def]
        if "stuck" in ch["url"]:
            if not others_done.wait(20):  # released by the last of the others
                return SendResult(False, error="the others never came: one at a time")
            return SendResult(False, error="ConnectTimeout")
        delivered.append(ch["url"])
        if len(delivered) == 3:
            others_done.set()
        return SendResult(True, 200)

    box._send = send  # type: ignore[method-assign]
    assert box.dispatch_due() == 4
    by_sub = {d["subscription_id"]: d for d in box.deliveries()}
    assert {k: d["status"] for k, d in by_sub.items()} == {
        "0-stuck": "pending", "a": "delivered", "b": "delivered", "c": "delivered"}
    assert by_sub["0-stuck"]["last_error"] == "ConnectTimeout"
    with pytest.raises(ValueError, match="threads 0"):
        outbox(store, clock, threads=0)


def test_an_endpoint_that_trickles_its_answer_is_cut_off_at_the_send_deadline(
        store: Store) -> None:
    """httpx's and smtplib's timeouts are per read: a webhook or mail server that sent a
    byte every 0.2 s held its send for as long as it went on (a minute here, forever for
    a hostile one), and eight of them held every round. A send now ends at its deadline,
    as a failed attempt saying so, and the round goes on to the others."""
    from tests.responders.receivers import Trickler

    http = Trickler(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    smtp = Trickler(b"220 slow.example ")
    rx = WebhookReceiver("k")
    clock = Clock()
    # one send at a time: a send that did not end would hold up the good one behind it
    box = outbox(store, clock, threads=1, send_deadline_s=1.0,
                 smtp=("127.0.0.1", smtp.port))
    for name, ch in (("0-http", {"type": "webhook", "secret": "k",
                                 "url": f"http://127.0.0.1:{http.port}/cap"}),
                     ("1-smtp", {"type": "email", "to": "duty@slow.example"}),
                     ("2-good", {"type": "webhook", "url": rx.url, "secret": "k"})):
        box.add_subscription(Subscription.create(name, JAPAN, "Minor", [ch], id=name))
    publish(store, box, revision(1), AlertPolicy())
    t0 = time.monotonic()
    assert box.dispatch_due() == 3
    took = time.monotonic() - t0
    by_sub = {d["subscription_id"]: d for d in box.deliveries()}
    assert {k: d["status"] for k, d in by_sub.items()} == {
        "0-http": "pending", "1-smtp": "pending", "2-good": "delivered"}
    for sub in ("0-http", "1-smtp"):
        assert by_sub[sub]["last_error"].startswith(
            "no answer within the send's deadline of 1 s ("), by_sub[sub]["last_error"]
    assert http.connections == 1 and smtp.connections == 1
    assert took < 20.0, took  # two deadlines and a read timeout each at most, not minutes
    with pytest.raises(ValueError, match="send_deadline_s 55"):
        outbox(store, clock, send_deadline_s=55.0)
    http.close()
    smtp.close()
    rx.close()


def test_two_transactions_enqueue_the_same_alert(store: Store) -> None:
    """Two workers' transactions enqueue the same alert (a rebalance overlaps them): the
    second waits for the first and adds nothing. With a check then an insert, PostgreSQL
    raised IntegrityError in the second, and the alert agent crashed."""
    import threading

    clock = Clock()
    box = outbox(store, clock)
    box.add_subscription(Subscription.create("JMA", JAPAN, "Minor", [
        {"type": "webhook", "url": "http://example.org/x", "secret": "k"}]))
    (msg,) = AlertPolicy().on_revision(revision(1))
    errors: list[BaseException] = []
    second_started, second_done = threading.Event(), threading.Event()

    def second() -> None:
        second_started.set()
        try:
            with store.begin() as c:
                box.enqueue(msg, c)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        second_done.set()

    with store.begin() as c:
        store.save_alert(msg, c)
        box.enqueue(msg, c)
        t = threading.Thread(target=second)
        t.start()
        assert second_started.wait(30)  # its transaction begins while this one is open
        assert not second_done.wait(0.5)  # and waits for this transaction's row
    t.join(30)
    assert errors == [] and len(box.deliveries()) == 1


def test_a_revision_with_nan_in_its_body_is_stored(store: Store) -> None:
    """NaN is not JSON: PostgreSQL refused the revision's body (DataError), which the
    associate agent does not retry; it is stored as null, as a detection's extra is."""
    from dataclasses import replace

    from sqlalchemy import select

    from responders.store import RevisionRow

    store.save_revision(replace(revision(1), extra={"rms_s": float("nan"), "n": 3}))
    with store.engine.connect() as c:
        body = c.execute(select(RevisionRow.body)).scalar_one()
    assert body["extra"] == {"rms_s": None, "n": 3}


def test_the_delivery_log_comes_in_pages_with_its_attempts(store: Store) -> None:
    """The whole table came at once, one query per delivery for its attempts (5000 rows
    were 1.2 MB and 0.9 s). Pages by key give every delivery once, in order, each with
    its own attempts."""
    clock = Clock()
    rx = WebhookReceiver("k", up=False)
    box = outbox(store, clock)
    for i in range(3):
        box.add_subscription(Subscription.create(f"s{i}", JAPAN, "Minor", [
            {"type": "webhook", "url": rx.url, "secret": "k"}], id=f"s{i}"))
    policy = AlertPolicy()
    publish(store, box, revision(1), policy)
    publish(store, box, IncidentRevision(**{**revision(2, "confirmed").__dict__,
                                            "incident_id": "eruption-y"}), policy)
    box.dispatch_due()  # one failed attempt each
    everything = box.deliveries()
    assert len(everything) == 6 and all(len(d["attempt_log"]) == 1 for d in everything)
    pages, after = [], None
    while True:
        page = box.deliveries(limit=4, after=after)
        if not page:
            break
        pages.append(page)
        after = page[-1]["key"]
    assert [len(p) for p in pages] == [4, 2]
    assert [d for p in pages for d in p] == everything
    assert [d["key"] for d in box.deliveries(everything[0]["alert_identifier"], limit=2)] == [
        d["key"] for d in everything[:2]]
    rx.close()
