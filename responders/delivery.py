"""Delivering CAP alerts to subscribed agencies: an outbox in the database.

An agency's :class:`Subscription` has an area of interest (a GeoJSON geometry), a minimum
CAP severity and channels (``webhook`` with a URL and an HMAC secret, ``email`` with an
address). When the alert agent stores a CAP message it also calls :meth:`Outbox.enqueue`
in the same transaction, before its Kafka offset is committed: one delivery row per
matching subscription and channel, keyed by the idempotency key
``<identifier>|<subscription>|<channel index>``. A crash before the commit replays the
message and the upsert finds the same keys: nothing is lost, nothing doubled.

:meth:`Outbox.dispatch_due` sends the due deliveries, up to ``threads`` at once (an
endpoint that does not answer holds up its own deliveries, not every other agency's): it
claims each row atomically (two
workers never send the same row at once), posts or mails it (within ``SEND_DEADLINE_S`` in
all, whatever the peer's pace), records the attempt, and on
failure schedules a retry with exponential backoff; after ``max_attempts`` the delivery is
marked ``dead`` and handed to the dead-letter callback. Nothing is dropped silently: every
attempt is a row in ``delivery_attempts``.

What is sent late is the incident as it stands, not its history. A newer message of an
incident queued for a channel *supersedes* that channel's messages of the incident still
waiting (status ``superseded``, not sent): an endpoint back after an outage gets the
incident's latest Update or Cancel, not an old watch that could land after it (a round
sends up to ``threads`` at once, in no set order). A CAP message carries the whole state
and references the ones it replaces, so nothing is lost. An ``Actual`` alert past its CAP
``expires`` is not sent at all: ``expired``, and dead-lettered like a ``dead`` one.

A webhook POST carries the CAP XML with ``X-Tocsin-Timestamp`` (Unix seconds of the
attempt), ``X-Tocsin-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + the body with
the subscription's secret>``, ``X-Tocsin-Idempotency-Key`` (the same on every retry, so the
receiver can recognise a redelivery) and ``X-Tocsin-Attempt``. The signed timestamp lets a
receiver refuse a request recorded and played back later (:func:`verify` takes five
minutes either way) without keeping every key it has seen.

Only ``Actual`` messages go to every matching subscription; ``Exercise`` and ``Test`` ones
(the alerts of replays of recorded data) only to subscriptions created with
``exercises``: a historic event must not reach an agency as a current warning.

Matching: the alert's CAP areas (circles and polygons) intersect the subscription's area
and its severity is at least the minimum. Updates and Cancels also go to every subscription
that received an earlier message of the same incident: who got the Alert gets its Cancel.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from lxml import etree
from shapely import affinity
from shapely.geometry import Point, Polygon, shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import and_, insert, select, update
from sqlalchemy.engine import Connection

from detectors.base import Detection
from detectors.geo import wrap_lon
from responders.alerting import (
    CAP_NS,
    AlertPolicy,
    cap_expires,
    cap_status,
    cap_time,
    severity_at_least,
)
from responders.stage import newness
from responders.store import AlertRow, AttemptRow, DeliveryRow, Store, SubscriptionRow
from streams.schemas import AlertMessage, Forecast, IncidentRevision

log = logging.getLogger("tocsin.delivery")

CHANNELS = ("webhook", "email")
#: how long a claimed delivery stays with the worker that claimed it (more than a send's
#: worst case, SEND_DEADLINE_S and a read timeout after it)
LEASE_S = 60.0
#: the longest a send may take, all of it: httpx's and smtplib's timeouts are per read, and
#: an endpoint that answered a byte every few seconds held a thread for as long as it liked
#: (eight of them held every round, every agency's alerts, and their leases ran out)
SEND_DEADLINE_S = 30.0


class SubscriptionError(ValueError):
    """A subscription that cannot be accepted (bad area, channel, URL or severity)."""


class UnsafeTarget(SubscriptionError):
    """A webhook URL that tocsin will not call."""


# the columns' lengths (responders.store): longer values would fail the alert agent's
# transaction on PostgreSQL, which enforces them
NAME_MAX, ID_MAX, TARGET_MAX, SECRET_MAX = 200, 64, 500, 500
#: a subscription's largest area (as JSON) and most channels
AREA_MAX, CHANNELS_MAX = 512 * 1024, 20


def _text(what: str, value: Any, limit: int, show: bool = True) -> None:
    """A subscription's text field: a string of at most ``limit`` characters, no control
    characters (a CR/LF in an address would add mail headers)."""
    shown = repr(value)[:80] if show else "(not shown)"
    if not isinstance(value, str):
        raise SubscriptionError(f"{what} must be a string, got {type(value).__name__} "
                                f"{shown}")
    if len(value) > limit:
        raise SubscriptionError(f"{what} has {len(value)} characters, more than {limit}: "
                                f"{shown}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SubscriptionError(f"{what} contains a control character: {shown}")
    if not value.strip():
        raise SubscriptionError(f"{what} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the store (and the signing) raised later
        raise SubscriptionError(f"{what} is not valid Unicode (a lone surrogate): "
                                f"{shown}") from None


#: the fields of each channel type (what else came was stored and echoed back)
CHANNEL_FIELDS = {"webhook": ("type", "url", "secret"), "email": ("type", "to")}


def _json_finite(value: Any, where: str) -> None:
    """SubscriptionError naming the place of a NaN or infinite number in ``value`` (JSON
    has none: the HTTP body's parser took them, SQLite stored null, PostgreSQL's json type
    refused them and the request answered 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SubscriptionError(f"{where} = {value!r}: not a JSON number")
    if isinstance(value, dict):
        for k, v in value.items():
            _json_finite(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _json_finite(v, f"{where}[{i}]")


#: an address's two parts as mail servers take them (RFC 5322 dot-atom; a host name)
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _email_address(to: str) -> None:
    """SubscriptionError unless ``to`` is one address tocsin's mail can carry: ASCII (a
    non-ASCII one needs SMTPUTF8, which the server may not offer: every alert to it was
    refused and went dead), a dot-atom before the ``@`` and a host name after it ("@",
    "a@" and "a(b)@c.d" were taken, and every alert to them failed)."""
    if to.count("@") != 1 or any(c in to for c in " ,;<>"):
        raise SubscriptionError(f"email channel: 'to' {to!r} is not one address")
    local, domain = to.split("@")
    if not local.isascii():
        raise SubscriptionError(f"email channel: 'to' {to!r} has a non-ASCII local part, "
                                "which needs SMTPUTF8 (not used by tocsin)")
    if not domain.isascii():
        try:
            ascii_domain = domain.encode("idna").decode()
        except UnicodeError as exc:
            raise SubscriptionError(f"email channel: 'to' {to!r}: its domain has no IDNA "
                                    f"form ({exc})") from exc
        raise SubscriptionError(f"email channel: 'to' {to!r} has a non-ASCII domain: give "
                                f"its IDNA form, {local}@{ascii_domain}")
    if not _LOCAL.fullmatch(local) or len(local) > 64:
        raise SubscriptionError(f"email channel: 'to' {to!r}: the part before '@' is empty "
                                "or not a mailbox name (letters, digits, dots and "
                                "!#$%&'*+/=?^_`{|}~-)")
    if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
        raise SubscriptionError(f"email channel: 'to' {to!r}: the part after '@' is empty "
                                "or not a host name")


@dataclass(frozen=True)
class Subscription:
    id: str
    name: str
    area: dict[str, Any]
    min_severity: str
    channels: tuple[dict[str, Any], ...]
    geometry: BaseGeometry = field(compare=False, repr=False, default=None)  # type: ignore[assignment]
    #: also takes CAP messages that are not Actual (replays of recorded data, tests)
    exercises: bool = False

    @classmethod
    def create(cls, name: str, area: dict[str, Any], min_severity: str,
               channels: list[dict[str, Any]], *, id: str | None = None,
               check_url: Callable[[str], list[str]] | None = None,
               exercises: bool = False) -> Subscription:
        try:
            geom = shape(area)
        except Exception as exc:  # noqa: BLE001 - shapely raises several kinds
            raise SubscriptionError(f"area is not a GeoJSON geometry: {exc}") from exc
        if geom.is_empty or not geom.is_valid or geom.geom_type not in ("Polygon",
                                                                         "MultiPolygon"):
            raise SubscriptionError(f"area must be a valid Polygon or MultiPolygon, got "
                                    f"{geom.geom_type} (valid={geom.is_valid})")
        try:
            severity_at_least(min_severity, "Unknown")
        except ValueError as exc:
            raise SubscriptionError(str(exc)) from exc
        lon0, lat0, lon1, lat1 = geom.bounds
        if not (lon0 >= -180.0 and lon1 <= 180.0 and lat0 >= -90.0 and lat1 <= 90.0):
            raise SubscriptionError(f"area bounds lon {lon0:g}..{lon1:g}, lat {lat0:g}.."
                                    f"{lat1:g} are outside lon -180..180, lat -90..90 "
                                    "(GeoJSON: [lon, lat])")
        _text("name", name, NAME_MAX)
        if id is not None:
            _text("id", id, ID_MAX)
        if not channels:
            raise SubscriptionError("a subscription needs at least one channel")
        if len(channels) > CHANNELS_MAX:  # (5000 were taken, each alert a delivery to each)
            raise SubscriptionError(f"{len(channels)} channels, more than {CHANNELS_MAX}")
        _json_finite(area, "area")
        try:
            size = len(orjson.dumps(area))
        except orjson.JSONEncodeError as exc:  # a lone surrogate: stored, then the listing
            raise SubscriptionError(f"area is not valid JSON text: {exc}") from None
        if size > AREA_MAX:
            raise SubscriptionError(f"area has {size} bytes as JSON, more than {AREA_MAX}")
        for ch in channels:
            if not isinstance(ch, dict):
                raise SubscriptionError(f"a channel is an object, got {ch!r}")
            kind = ch.get("type")
            fields = CHANNEL_FIELDS.get(kind) if isinstance(kind, str) else None
            extra = sorted(set(ch) - set(fields)) if fields is not None else []
            if fields is not None and extra:
                raise SubscriptionError(f"{kind} channel: unknown field(s) {extra} (it has "
                                        f"{list(fields)})")
            if kind == "webhook":
                if not ch.get("url") or not ch.get("secret"):
                    raise SubscriptionError("a webhook channel needs 'url' and 'secret'")
                _text("webhook url", ch["url"], TARGET_MAX)
                _text("webhook secret", ch["secret"], SECRET_MAX, show=False)
                if check_url is not None:
                    check_url(ch["url"])
            elif kind == "email":
                to = ch.get("to", "")
                _text("email 'to'", to, TARGET_MAX)
                _email_address(to)
            else:
                raise SubscriptionError(f"channel type {kind!r} is not one of {CHANNELS}")
        if not isinstance(exercises, bool):
            raise SubscriptionError(f"exercises must be true or false, got {exercises!r}")
        return cls(id or uuid.uuid4().hex, name, area, min_severity, tuple(channels), geom,
                   exercises)

    def public(self) -> dict[str, Any]:
        """The subscription without its secrets (for the API): no signing secret, and a
        webhook's URL as its scheme and host (its path or query may carry a token)."""
        return {"id": self.id, "name": self.name, "area": self.area,
                "min_severity": self.min_severity, "exercises": self.exercises,
                "channels": [{k: shown_target(v) if k == "url" else v
                              for k, v in ch.items() if k != "secret"}
                             for ch in self.channels]}


def shown_target(target: str) -> str:
    """Where a delivery goes, to be shown or logged: a URL's scheme and host (its
    userinfo, path or query may carry a secret), an e-mail address's domain."""
    t = urlsplit(target)
    if t.scheme and t.hostname:
        return f"{t.scheme}://{t.hostname}"
    return target.split("@")[-1]


# ---------------------------------------------------------------------- geometry
def cap_areas(cap_xml: str) -> list[BaseGeometry]:
    """The CAP message's ``circle`` and ``polygon`` areas as lon/lat shapely geometries."""
    doc = etree.fromstring(cap_xml.encode())
    out: list[BaseGeometry] = []
    for el in doc.iterfind(f".//{{{CAP_NS}}}area/{{{CAP_NS}}}circle"):
        centre, radius = el.text.split()
        lat, lon = (float(x) for x in centre.split(","))
        out.append(circle(lat, lon, float(radius)))
    for el in doc.iterfind(f".//{{{CAP_NS}}}area/{{{CAP_NS}}}polygon"):
        pts = [tuple(float(x) for x in p.split(",")) for p in el.text.split()]
        out.append(Polygon([(lon, lat) for lat, lon in pts]))
    return out


def circle(lat: float, lon: float, radius_km: float) -> BaseGeometry:
    """A circle on the lon/lat plane (longitude stretched by 1/cos(lat)); a circle across
    the antimeridian also has its part on the other side (subscription areas lie in lon
    -180..180)."""
    deg = radius_km / 111.32
    lon = wrap_lon(lon)
    c = affinity.scale(Point(lon, lat).buffer(deg, 32),
                       xfact=1.0 / max(math.cos(math.radians(lat)), 0.01), yfact=1.0,
                       origin=(lon, lat))
    west, _, east, _ = c.bounds
    if east > 180.0:
        c = c.union(affinity.translate(c, xoff=-360.0))
    if west < -180.0:
        c = c.union(affinity.translate(c, xoff=360.0))
    return c


def matches(sub: Subscription, msg: AlertMessage, areas: list[BaseGeometry]) -> bool:
    if not severity_at_least(msg.severity or "Unknown", sub.min_severity):
        return False
    return any(sub.geometry.intersects(a) for a in areas)


# ---------------------------------------------------------------------- webhook safety
# cloud instance-metadata services outside the link-local ranges (AWS over IPv6, Alibaba,
# Azure's wire server, Oracle's IPv6 one): refused like 169.254.169.254
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "fd00:c1::a9fe:a9fe"))


def make_url_checker(allowed_hosts: str = "", allow_link_local: bool = False,
                     resolve: Callable[[str], list[str]] | None = None,
                     ) -> Callable[[str], list[str]]:
    """A check of webhook URLs: it raises :class:`UnsafeTarget` for a URL tocsin will not
    call and returns the addresses its host resolved to, all vetted (a send connects to
    one of those, so a second lookup cannot lead it elsewhere: DNS rebinding)."""
    allow = {h.strip().lower() for h in allowed_hosts.split(",") if h.strip()}

    def _resolve(host: str) -> list[str]:
        # in getaddrinfo's order (RFC 6724's preference: it puts an IPv6 address first only
        # where the host can reach IPv6); sorted as strings, IPv6 came first everywhere
        return list(dict.fromkeys(str(ai[4][0]) for ai in socket.getaddrinfo(host, None)))

    res = resolve or _resolve

    def check(url: str) -> list[str]:
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise UnsafeTarget(f"webhook URL {url!r} is not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https"):
            raise UnsafeTarget(f"webhook URL {url!r}: scheme {parts.scheme!r} is not http(s)")
        if not host:
            raise UnsafeTarget(f"webhook URL {url!r} has no host")
        if allow and host not in allow:
            raise UnsafeTarget(f"webhook host {host!r} is not in the allow-list")
        try:
            addrs = res(host)
        except (OSError, UnicodeError) as exc:  # UnicodeError: no IDNA name (a..b, 64-char label)
            raise UnsafeTarget(f"webhook host {host!r} does not resolve: {exc}") from exc
        for a in addrs:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
                a.split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour):
                # judged by the IPv4 address it carries: ::ffff:169.254.169.254 was refused
                # as "not unicast", and 6to4's 2002:a9fe:a9fe:: not at all
                ip = ip.ipv4_mapped or ip.sixtofour  # type: ignore[assignment]
            # ::1 is in Python's reserved ::/8: it was refused where 127.0.0.1 was taken
            if not ip.is_loopback and (ip.is_multicast or ip.is_unspecified or ip.is_reserved):
                raise UnsafeTarget(f"webhook host {host!r} resolves to {ip}, which is not a "
                                   "unicast address")
            if (ip.is_link_local or ip in METADATA_ADDRESSES) and not allow_link_local:
                raise UnsafeTarget(f"webhook host {host!r} resolves to the link-local/metadata "
                                   f"address {ip}; set TOCSIN_WEBHOOK_ALLOW_LINK_LOCAL to allow")
        return addrs

    return check


def pinned(url: str, addrs: list[str]) -> tuple[str, str, dict[str, Any]]:
    """``url`` with its host replaced by the first of its vetted addresses ``addrs``, the
    ``Host`` header to send and, for https, the name the server's certificate must carry
    (``sni_hostname``): the connection goes where the check looked, not wherever a second
    DNS answer points."""
    if not addrs:
        raise UnsafeTarget(f"webhook URL {url!r}: its host resolved to no address")
    parts = urlsplit(url)
    host = parts.hostname or ""
    ip = addrs[0].split("%")[0]
    port = f":{parts.port}" if parts.port is not None else ""
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + (f"[{ip}]" if ":" in ip else ip) + port
    shown_host = (f"[{host}]" if ":" in host else host) + port
    sni = {"sni_hostname": host} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), shown_host, sni


#: how far a webhook's signed timestamp may be from the receiver's clock (:func:`verify`)
SIGNATURE_TOLERANCE_S = 300.0


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Tocsin-Signature`` of ``body`` sent at ``timestamp`` (``X-Tocsin-Timestamp``)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, body: bytes, signature: str, timestamp: str, *,
           now: float | None = None, tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """For a receiver: whether ``signature`` and ``timestamp`` (the ``X-Tocsin-Signature``
    and ``X-Tocsin-Timestamp`` headers) sign ``body`` with ``secret``, sent within
    ``tolerance_s`` of ``now`` (default: this machine's clock). False for anything else:
    a timestamp that is not whole seconds, one too old (a request played back) or too
    far ahead, text that is not a signature (compare_digest raised TypeError on
    non-ASCII)."""
    if not (isinstance(timestamp, str) and timestamp.isascii() and timestamp.isdigit()
            and len(timestamp) <= 12):
        return False
    t = int(timestamp)
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, t).encode(),
                               signature.encode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------------- the outbox
def _letter(key: str, d: Any, attempts: int, reason: str | None) -> dict[str, Any]:
    """The dead letter of the delivery row ``d``: where it went, not the URL's secrets."""
    return {"key": key, "alert": d.alert_identifier, "subscription": d.subscription_id,
            "channel": d.channel, "target": shown_target(d.target), "attempts": attempts,
            "reason": reason}


class _Deadline:
    """Calls ``close`` (of the send's client or connection) once ``seconds`` have passed,
    unless the block has ended: a read blocked on the connection then fails at once."""

    def __init__(self, seconds: float, close: Callable[[], None]) -> None:
        self.fired = False

        def fire() -> None:
            self.fired = True
            close()

        self.timer = threading.Timer(seconds, fire)
        self.timer.daemon = True

    def says(self, error: str | None) -> str | None:
        """``error``, and why, if the deadline ended the send."""
        if not self.fired:
            return error
        return (f"no answer within the send's deadline of {self.timer.interval:g} s "
                f"({error})")

    def __enter__(self) -> _Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


@dataclass
class SendResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None


class Outbox:
    def __init__(self, store: Store, *, max_attempts: int = 20, backoff_s: float = 1.0,
                 backoff_max_s: float = 300.0, smtp: tuple[str, int] = ("127.0.0.1", 25),
                 smtp_from: str = "tocsin@localhost",
                 check_url: Callable[[str], list[str]] | None = None,
                 dead_letter: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time, http_timeout: float = 5.0,
                 threads: int = 8, send_deadline_s: float = SEND_DEADLINE_S) -> None:
        if threads < 1:
            raise ValueError(f"threads {threads!r}: at least one")
        if not 0 < send_deadline_s <= LEASE_S - 2 * max(http_timeout, 10.0):
            raise ValueError(f"send_deadline_s {send_deadline_s!r}: above 0, and short enough "
                             f"that a send ends within its lease of {LEASE_S:g} s")
        self.store = store
        self.threads = threads
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.smtp = smtp
        self.smtp_from = smtp_from
        self.check_url = check_url or make_url_checker()
        self.dead_letter = dead_letter
        self.clock = clock
        self.http_timeout = http_timeout
        self.send_deadline_s = send_deadline_s
        self._tls = httpx.create_ssl_context()  # made once: each send has its own client

    @classmethod
    def from_settings(cls, store: Store, settings: Any, **kw: Any) -> Outbox:
        return cls(store, max_attempts=settings.delivery_max_attempts,
                   backoff_s=settings.delivery_backoff_s,
                   backoff_max_s=settings.delivery_backoff_max_s,
                   smtp=(settings.smtp_host, settings.smtp_port), smtp_from=settings.smtp_from,
                   check_url=make_url_checker(settings.webhook_allowed_hosts,
                                              settings.webhook_allow_link_local), **kw)

    # -- subscriptions
    def add_subscription(self, sub: Subscription) -> None:
        with self.store.begin() as c:
            self.store._upsert(c, SubscriptionRow, {
                "id": sub.id, "name": sub.name, "area": sub.area,
                "min_severity": sub.min_severity, "channels": list(sub.channels),
                "created": self.clock(), "active": 1, "exercises": int(sub.exercises)},
                ("id",))

    def remove_subscription(self, sub_id: str) -> bool:
        """Deactivate it; its deliveries not yet made are cancelled (not sent)."""
        with self.store.begin() as c:
            if not sub_id.isprintable():  # no subscription has one (PostgreSQL: a 500)
                return False
            # an active one: removing it again is no removal (it answered 204 each time)
            r = c.execute(update(SubscriptionRow).where(and_(
                SubscriptionRow.id == sub_id, SubscriptionRow.active == 1)).values(active=0))
            c.execute(update(DeliveryRow).where(and_(
                DeliveryRow.subscription_id == sub_id, DeliveryRow.status == "pending"))
                .values(status="cancelled", last_error="the subscription was removed"))
            return bool(r.rowcount)

    def _cancel(self, key: str, why: str) -> None:
        with self.store.begin() as c:
            c.execute(update(DeliveryRow).where(DeliveryRow.key == key).values(
                status="cancelled", last_error=why))

    def subscriptions(self) -> list[Subscription]:
        with self.store.engine.connect() as c:
            rows = c.execute(select(SubscriptionRow).where(SubscriptionRow.active == 1)
                             .order_by(SubscriptionRow.created, SubscriptionRow.id))
            return [Subscription(r.id, r.name, r.area, r.min_severity, tuple(r.channels),
                                 shape(r.area), bool(r.exercises)) for r in rows]

    # -- enqueue (inside the alert agent's transaction)
    def enqueue(self, msg: AlertMessage, conn: Connection | None = None) -> int:
        """Delivery rows for ``msg`` (idempotent); returns how many subscriptions match."""
        areas = cap_areas(msg.cap_xml)
        actual = cap_status(msg.cap_xml) == "Actual"
        # an exercise (a replay of recorded data) reaches only those who asked for them
        subs = [s for s in self.subscriptions() if actual or s.exercises]
        with self.store._conn(conn) as c:
            earlier = set(c.execute(
                select(DeliveryRow.subscription_id).distinct()
                .join(AlertRow, AlertRow.identifier == DeliveryRow.alert_identifier)
                .where(AlertRow.incident_id == msg.incident_id)).scalars())
            others = list(c.execute(
                select(AlertRow.identifier, AlertRow.revision, AlertRow.sent,
                       AlertRow.references).where(and_(
                           AlertRow.incident_id == msg.incident_id,
                           AlertRow.identifier != msg.identifier)))) if earlier else []
            # the incident's other messages, older and newer than this one: a correction
            # of an old revision comes after the newer revisions' messages
            keys = newness([*((r.identifier, r.revision, r.sent, r.references) for r in others),
                             (msg.identifier, msg.revision, msg.sent, msg.references)])
            mine = keys[msg.identifier]
            ranked = sorted((keys[r.identifier], r.identifier) for r in others)
            earlier_ids = [ident for rank, ident in ranked if rank < mine]
            later_ids = [ident for rank, ident in ranked if rank > mine]
            n = 0
            for sub in subs:
                follow_up = msg.msg_type in ("Update", "Cancel") and sub.id in earlier
                if not (follow_up or matches(sub, msg, areas)):
                    continue
                n += 1
                older = earlier_ids if sub.id in earlier else []
                for i, ch in enumerate(sub.channels):
                    key = f"{msg.identifier}|{sub.id}|{i}"
                    target = ch.get("url") or ch.get("to") or ""
                    if not self.store.insert_new(c, DeliveryRow, dict(
                            key=key, alert_identifier=msg.identifier, subscription_id=sub.id,
                            channel=ch["type"], target=target, status="pending", attempts=0,
                            next_attempt=self.clock(), last_error=None, delivered_at=None),
                            ("key",)):
                        continue
                    if older:
                        self._supersede(c, msg, [f"{a}|{sub.id}|{i}" for a in older])
                    if sub.id in earlier and later_ids:
                        self._superseded_already(c, key, [
                            f"{a}|{sub.id}|{i}" for a in later_ids])
            return n

    def _superseded_already(self, c: Connection, key: str, later: list[str]) -> None:
        """The delivery ``key`` is not sent if a newer message of its incident (``later``,
        oldest first) still waits for the channel: that one says where the incident stands
        (a correction of r1 queued after r2's Update superseded the Update, and an endpoint
        that was down got only the older, milder message)."""
        waiting = set(c.execute(select(DeliveryRow.key).where(and_(
            DeliveryRow.key.in_(later), DeliveryRow.status == "pending"))).scalars())
        newest = [k for k in later if k in waiting]
        if newest:
            by = newest[-1].split("|", 1)[0]
            c.execute(update(DeliveryRow).where(DeliveryRow.key == key).values(
                status="superseded", last_error=f"superseded by {by} (newer) before it was "
                                                "delivered"))

    def _supersede(self, c: Connection, msg: AlertMessage, keys: list[str]) -> None:
        """The incident's earlier messages still waiting for this channel (``keys``) are
        not sent: ``msg``, newer, says where the incident stands now. Sent late, after it,
        an endpoint that was down got its messages in any order (the round sends up to
        ``threads`` at once), an old watch possibly after the Cancel. ``keys`` are those of
        the messages older than ``msg`` (see :func:`newness`)."""
        for i in range(0, len(keys), 500):  # bounded IN lists
            c.execute(update(DeliveryRow).where(and_(
                DeliveryRow.key.in_(keys[i:i + 500]), DeliveryRow.status == "pending"))
                .values(status="superseded",
                        last_error=f"superseded by {msg.identifier} ({msg.msg_type}) before "
                                   "it was delivered"))

    # -- dispatch
    def dispatch_due(self, limit: int = 100) -> int:
        """Try every due delivery once; returns the number attempted."""
        now = self.clock()
        with self.store.engine.connect() as c:
            keys = list(c.execute(
                select(DeliveryRow.key).where(and_(DeliveryRow.status == "pending",
                                                   DeliveryRow.next_attempt <= now))
                .order_by(DeliveryRow.next_attempt, DeliveryRow.key).limit(limit)).scalars())

        def one(key: str) -> int:
            lease = self._claim(key)  # when its send starts: the lease runs from then
            if lease is None:
                return 0
            self._attempt(key, lease)
            return 1

        if self.threads == 1 or len(keys) <= 1:
            return sum(one(key) for key in keys)
        # one at a time, a black-holed endpoint held every delivery behind it for its
        # connect timeout (5 s each): a new alert's other agencies waited for it
        with ThreadPoolExecutor(min(self.threads, len(keys)),
                                thread_name_prefix="tocsin-delivery") as pool:
            return sum(pool.map(one, keys))

    def _claim(self, key: str) -> float | None:
        """The delivery is ours for ``LEASE_S`` from now (not from the round's start: after
        a few slow sends, a lease from then had run out before the send, and another
        worker's round took the delivery and sent it again); the lease's end, or None if
        another worker has it."""
        now = self.clock()
        lease = now + LEASE_S  # another worker will not pick it up meanwhile
        with self.store.begin() as c:
            r = c.execute(update(DeliveryRow).where(and_(
                DeliveryRow.key == key, DeliveryRow.status == "pending",
                DeliveryRow.next_attempt <= now)).values(next_attempt=lease))
            return lease if r.rowcount == 1 else None

    def _attempt(self, key: str, lease: float) -> None:
        """One send of the delivery, whose lease ends at ``lease``. A send slower than the
        lease (a receiver trickling its answer: httpx's timeouts are per read) may find
        that another worker has taken the delivery since: a success still counts (the
        alert got there; the receiver knows a repeat by its idempotency key), a failure
        leaves the row to the worker that holds it now (it marked a delivered alert dead,
        and dead-lettered it)."""
        with self.store.engine.connect() as c:
            d = c.execute(select(DeliveryRow).where(DeliveryRow.key == key)).one()
            sub = c.execute(select(SubscriptionRow).where(
                SubscriptionRow.id == d.subscription_id)).one_or_none()
        if sub is not None and not sub.active:
            self._cancel(key, "the subscription was removed")
            return
        alert = self.store.alert(d.alert_identifier)
        if alert is not None and self._expired(key, d, alert, lease):
            return
        attempt = d.attempts + 1
        if sub is None or alert is None:
            result = SendResult(False, error="subscription or alert no longer exists")
        else:
            idx = int(key.rsplit("|", 1)[1])
            ch = sub.channels[idx]
            try:
                result = self._send(ch, alert, key, attempt)
            except Exception as exc:  # noqa: BLE001 - a failed attempt, retried, never a crash
                result = SendResult(False, error=f"{type(exc).__name__}: {exc}")
        now = self.clock()
        with self.store.begin() as c:
            c.execute(insert(AttemptRow).values(
                delivery_key=key, attempt=attempt, at=now, ok=int(result.ok),
                status_code=result.status_code, error=result.error))
            if result.ok:
                c.execute(update(DeliveryRow).where(DeliveryRow.key == key).values(
                    status="delivered", attempts=attempt, delivered_at=now, last_error=None))
                return
            dead = attempt >= self.max_attempts
            # the doubling stops at 2**60 (past attempt 1024 the int did not fit a float: the
            # round raised each time and the delivery never went dead)
            delay = min(self.backoff_s * 2.0 ** min(attempt - 1, 60), self.backoff_max_s)
            held = c.execute(update(DeliveryRow).where(and_(
                DeliveryRow.key == key, DeliveryRow.status == "pending",
                DeliveryRow.next_attempt == lease)).values(
                status="dead" if dead else "pending", attempts=attempt,
                next_attempt=now + delay, last_error=result.error)).rowcount == 1
        if not held:
            with self.store.engine.connect() as c:
                status = c.execute(select(DeliveryRow.status).where(
                    DeliveryRow.key == key)).scalar_one()
            if status == "superseded":
                log.info("delivery %s: attempt %d failed (%s) and a newer message of the "
                         "incident has replaced it since", key, attempt, result.error)
            else:
                log.warning("delivery %s: attempt %d failed after its lease ran out (%s); the "
                            "worker that took it over decides", key, attempt, result.error)
            return
        if dead and self.dead_letter is not None:
            self.dead_letter(_letter(key, d, attempt, result.error))

    def _expired(self, key: str, d: Any, alert: dict[str, Any], lease: float) -> bool:
        """An ``Actual`` alert past its CAP ``expires`` is not sent (an agency would act on
        a warning that has run out): the delivery is ``expired`` and dead-lettered, so that
        the operators see who never got it. Exercises and tests carry the recorded event's
        times, not today's: their expiry says nothing about now."""
        expires = cap_expires(alert["cap_xml"])
        if expires is None or self.clock() < expires or cap_status(alert["cap_xml"]) != "Actual":
            return False
        reason = (f"the alert expired at {cap_time(expires)} before it was delivered "
                  f"({d.attempts} attempt(s) failed)")
        with self.store.begin() as c:
            held = c.execute(update(DeliveryRow).where(and_(
                DeliveryRow.key == key, DeliveryRow.status == "pending",
                DeliveryRow.next_attempt == lease)).values(
                status="expired", last_error=reason)).rowcount == 1
        if held and self.dead_letter is not None:
            self.dead_letter(_letter(key, d, d.attempts, reason))
        return True

    def _post(self, http: httpx.Client, ch: dict[str, Any], body: bytes, key: str,
              attempt: int) -> SendResult:
        """The webhook's POST, to each vetted address in turn."""
        try:
            addrs = self.check_url(ch["url"])
            if not addrs:
                raise UnsafeTarget(f"webhook URL {ch['url']!r}: its host resolved to no "
                                   "address")
            for i, addr in enumerate(addrs):
                # each vetted address in turn until one takes the connection (a host
                # with IPv4 and IPv6 ones, seen from a network without IPv6)
                url, host, sni = pinned(ch["url"], [addr])
                # the receiver's clock, not the test's: it is what verify() holds it to
                stamp = int(time.time())
                try:
                    r = http.post(url, content=body, extensions=sni, headers={
                        "Host": host,
                        "Content-Type": "application/cap+xml",
                        "X-Tocsin-Timestamp": str(stamp),
                        "X-Tocsin-Signature": sign(ch["secret"], body, stamp),
                        "X-Tocsin-Idempotency-Key": key,
                        "X-Tocsin-Attempt": str(attempt)})
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    if i == len(addrs) - 1:
                        raise
        except UnsafeTarget as exc:
            return SendResult(False, error=str(exc))
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return SendResult(False, error=f"{type(exc).__name__}: {exc}")
        if 200 <= r.status_code < 300:
            return SendResult(True, r.status_code)
        return SendResult(False, r.status_code, f"HTTP {r.status_code}")

    def _send(self, ch: dict[str, Any], alert: dict[str, Any], key: str,
              attempt: int) -> SendResult:
        body = alert["cap_xml"].encode()
        if ch["type"] == "webhook":
            http = httpx.Client(timeout=self.http_timeout, follow_redirects=False,
                                verify=self._tls)
            with http, _Deadline(self.send_deadline_s, http.close) as deadline:
                result = self._post(http, ch, body, key, attempt)
            if not result.ok:
                result.error = deadline.says(result.error)
            return result
        if ch["type"] == "email":
            em = EmailMessage()
            em["From"] = self.smtp_from
            em["To"] = ch["to"]
            em["Subject"] = f"[CAP {alert['msg_type']}] {alert['headline']}"[:200]
            em["Message-ID"] = f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@tocsin>"
            em["X-Tocsin-Idempotency-Key"] = key
            em.set_content(f"{alert['headline']}\n\nCAP 1.2 message attached "
                           f"({alert['identifier']}).\n")
            em.add_attachment(body, maintype="application", subtype="cap+xml",
                              filename=f"{alert['identifier']}.xml")
            smtp = smtplib.SMTP(timeout=10)

            def cut() -> None:
                # shutdown, not close: smtplib reads through a makefile(), which keeps the
                # socket open past close() (the read went on for the whole trickle)
                sock = smtp.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

            deadline = _Deadline(self.send_deadline_s, cut)
            try:
                with deadline:
                    smtp.connect(*self.smtp)
                    smtp.send_message(em)
                    smtp.quit()
            except (OSError, smtplib.SMTPException, AttributeError) as exc:
                # (smtplib reads a socket the deadline closed as None: AttributeError)
                return SendResult(False, error=deadline.says(f"{type(exc).__name__}: {exc}"))
            finally:
                smtp.close()
            return SendResult(True)
        return SendResult(False, error=f"unknown channel {ch['type']!r}")

    # -- reads for the API
    def deliveries(self, alert_identifier: str | None = None, *, limit: int | None = None,
                   after: str | None = None) -> list[dict[str, Any]]:
        """Deliveries with their attempts, by (alert, key); at most ``limit`` of them, those
        after the key ``after`` (pages). The attempts come in one query for the page (one
        per delivery took 0.9 s for 5000)."""
        for what, value in (("alert", alert_identifier), ("after", after)):
            if value is not None and not value.isprintable():
                # no identifier or key has one (PostgreSQL refused the query: a 500)
                raise SubscriptionError(f"deliveries: {what} {value!r} has a character that "
                                        "is not printable")
        q = select(DeliveryRow).order_by(DeliveryRow.alert_identifier, DeliveryRow.key)
        if alert_identifier:
            q = q.where(DeliveryRow.alert_identifier == alert_identifier)
        if after is not None:  # a key is "<alert>|<subscription>|<channel>"
            alert = after.split("|", 1)[0]
            q = q.where((DeliveryRow.alert_identifier > alert) | and_(
                DeliveryRow.alert_identifier == alert, DeliveryRow.key > after))
        if limit is not None:
            q = q.limit(limit)
        with self.store.engine.connect() as c:
            out = [dict(r._mapping) for r in c.execute(q)]
            logs: dict[str, list[dict[str, Any]]] = {row["key"]: [] for row in out}
            for i in range(0, len(out), 500):  # bounded IN lists
                keys = [row["key"] for row in out[i:i + 500]]
                for a in c.execute(select(AttemptRow.delivery_key, AttemptRow.attempt,
                                          AttemptRow.at, AttemptRow.ok,
                                          AttemptRow.status_code, AttemptRow.error)
                                   .where(AttemptRow.delivery_key.in_(keys))
                                   .order_by(AttemptRow.delivery_key, AttemptRow.attempt)):
                    entry = dict(a._mapping)
                    logs[entry.pop("delivery_key")].append(entry)
            for row in out:
                row["attempt_log"] = logs[row["key"]]
            return out


def warm_up(store: Store, outbox: Outbox) -> None:
    """Store a detection, an incident revision and its CAP alert with its deliveries, the
    way the agents do, in a transaction that is then rolled back: the database is left as
    it was, but the pool has its connection and SQLAlchemy has compiled (and cached, per
    engine) every statement of the way. A fresh worker's first incident and first alert
    otherwise paid 10 and 5 ms more than the next ones, on the way to the alert."""
    t = 0.0
    det = Detection("tocsin.warm-up", "barometer", "warm-up", "0", t, t, 0.0, "hPa", t,
                    0.0, 0.0)
    rev = IncidentRevision(
        incident_id="tocsin.warm-up", type="volcanic_eruption", revision=1, issued=t,
        status="watch", origin_time=t, lat=0.0, lon=0.0, speed_m_s=313.0,
        detections=(det.key,), stations_used=(det.station_id,),
        forecasts=(Forecast("tocsin.warm-up", "tide_gauge", t + 3600.0, 1100.0, 0.0, 10.0),))
    with store.engine.connect() as conn:
        trans = conn.begin()
        try:
            store.save_detection(det, conn)
            store.save_revision(rev, conn)
            for msg in AlertPolicy().on_revision(rev):
                store.save_alert(msg, conn)
                outbox.enqueue(msg, conn)
        finally:
            trans.rollback()
