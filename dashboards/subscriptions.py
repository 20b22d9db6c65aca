"""Subscription management and the delivery log (read-only) over HTTP, both behind a token
(the log names subscriptions and the hosts alerts go to).

``Authorization: Bearer <token>``; tokens come from ``TOCSIN_API_TOKENS`` and are compared
as SHA-256 hashes in constant time. Tokens and webhook secrets are never logged or returned.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel

from responders.delivery import Outbox, Subscription, SubscriptionError, shown_target
from responders.store import token_hash


class SubscriptionIn(BaseModel):
    name: str
    area: dict[str, Any]
    min_severity: str = "Moderate"
    channels: list[dict[str, Any]]
    exercises: bool = False  # also the CAP Exercise messages of replays


def subscription_router(outbox: Outbox, tokens: str) -> APIRouter:
    hashes = [token_hash(t.strip()) for t in tokens.split(",") if t.strip()]
    router = APIRouter()

    def require_token(authorization: str = Header(default="")) -> None:
        scheme, _, token = authorization.partition(" ")
        ok = scheme.lower() == "bearer" and token and any(
            hmac.compare_digest(token_hash(token), h) for h in hashes)
        if not ok:
            raise HTTPException(401, "a valid API token is required (Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})

    @router.post("/api/subscriptions", status_code=201, dependencies=[Depends(require_token)])
    def create(body: SubscriptionIn) -> dict[str, Any]:
        try:
            sub = Subscription.create(body.name, body.area, body.min_severity, body.channels,
                                      check_url=outbox.check_url, exercises=body.exercises)
        except SubscriptionError as exc:
            raise HTTPException(422, str(exc)) from exc
        outbox.add_subscription(sub)
        return sub.public()

    @router.get("/api/subscriptions", dependencies=[Depends(require_token)])
    def list_subs() -> list[dict[str, Any]]:
        return [s.public() for s in outbox.subscriptions()]

    @router.delete("/api/subscriptions/{sub_id}", status_code=204,
                   dependencies=[Depends(require_token)])
    def delete(sub_id: str) -> None:
        if not outbox.remove_subscription(sub_id):
            raise HTTPException(404, f"no subscription {sub_id!r}")

    @router.get("/api/deliveries", dependencies=[Depends(require_token)])
    def deliveries(alert: str | None = None,
                   limit: int = Query(default=1000, ge=1, le=10_000),
                   after: str | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` deliveries (the whole table came at once: 5000 rows were
        1.2 MB and 0.9 s); the next page is ``after=<the last one's key>``."""
        try:
            rows = outbox.deliveries(alert, limit=limit, after=after)
        except SubscriptionError as exc:
            raise HTTPException(422, str(exc)) from exc
        for r in rows:  # read-only view: where, not the full URL (it may carry a secret)
            r["target"] = shown_target(r["target"])
        return rows

    return router
