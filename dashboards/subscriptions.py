"""Subscription management and the delivery log (read-only) over HTTP, both behind a token
(the log names subscriptions and the hosts alerts go to).

``Authorization: Bearer <token>``; tokens come from ``TOCSIN_API_TOKENS`` and are compared
as SHA-256 hashes in constant time. Tokens and webhook secrets are never logged or returned.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from dashboards.app import shown
from responders.delivery import Outbox, Subscription, SubscriptionError, shown_target
from responders.store import token_hash

#: the largest subscription body read (an area of some 30,000 vertices)
BODY_MAX = 1 << 20


class SubscriptionIn(BaseModel):
    # strict: "yes" and 1 were taken for exercises = true; forbid: a misspelt field
    # ("min_severty") was dropped and the subscription made with the default
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str
    area: dict[str, Any]
    min_severity: str = "Moderate"
    channels: list[dict[str, Any]]
    exercises: bool = False  # also the CAP Exercise messages of replays


async def json_body(request: Request) -> Any:
    """The request's JSON body, read after the token was checked (it was read and parsed
    before, whatever its size), at most :data:`BODY_MAX` bytes (413), parsed as JSON
    (orjson: no NaN or Infinity, no lone surrogate; a NaN made FastAPI's error answer
    500, and a surrogate stored a subscription that then broke the listing)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise HTTPException(415, "the body must be JSON (Content-Type: application/json)")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > BODY_MAX:
        raise HTTPException(413, f"the body has {int(length)} bytes, more than {BODY_MAX}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX:
            raise HTTPException(413, f"the body has more than {BODY_MAX} bytes")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, f"the body is not JSON: {exc}") from None


def validation_detail(exc: ValidationError) -> str:
    """What is wrong, by field, without the input (FastAPI's answer echoed all of it: 60 MB
    for a 30-MB name)."""
    parts = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")


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
    async def create(request: Request) -> dict[str, Any]:
        try:
            body = SubscriptionIn.model_validate(await json_body(request))
        except ValidationError as exc:
            raise HTTPException(422, validation_detail(exc)) from None

        def add() -> dict[str, Any]:  # resolving the webhook's host and the store block
            try:
                sub = Subscription.create(body.name, body.area, body.min_severity,
                                          body.channels, check_url=outbox.check_url,
                                          exercises=body.exercises)
            except SubscriptionError as exc:
                raise HTTPException(422, str(exc)) from exc
            outbox.add_subscription(sub)
            return sub.public()

        return await run_in_threadpool(add)

    @router.get("/api/subscriptions", dependencies=[Depends(require_token)])
    def list_subs() -> list[dict[str, Any]]:
        return [s.public() for s in outbox.subscriptions()]

    @router.delete("/api/subscriptions/{sub_id}", status_code=204,
                   dependencies=[Depends(require_token)])
    def delete(sub_id: str) -> None:
        if not outbox.remove_subscription(sub_id):
            raise HTTPException(404, f"no subscription {shown(sub_id)}")

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
