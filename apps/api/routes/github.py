"""``POST /webhooks/github``: GitHub's pull request and issue events, published to the rooms of
the projects whose ``repository_url`` is the delivery's repository.

The signature (``X-Hub-Signature-256``, HMAC-SHA256 of the body with ``GITHUB_WEBHOOK_SECRET``)
is checked, in constant time, before anything else is looked at. A delivery GitHub retries (the
same ``X-GitHub-Delivery``) publishes nothing the second time, across restarts and instances.
What becomes which event: :mod:`apps.api.github.events`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from apps.api.deps import HandledRequestsDep, ProjectStoreDep
from apps.api.errors import ApiError
from apps.api.events.broadcaster import DeliveryError, EventValidationError, get_broadcaster
from apps.api.github.events import Ignored, map_delivery

router = APIRouter(tags=["webhooks"])
logger = logging.getLogger(__name__)


def _verify_signature(request: Request, body: bytes) -> None:
    secret = request.app.state.settings.github_webhook_secret
    if secret is None:  # checked first, but only after the body was read: GitHub waits for the reply
        raise ApiError(
            503,
            "GitHub webhooks are not configured: set GITHUB_WEBHOOK_SECRET to the webhook's secret",
            code="WEBHOOK_NOT_CONFIGURED",
        )
    signature = request.headers.get("x-hub-signature-256")
    if not signature:
        raise ApiError(401, "X-Hub-Signature-256 is missing", code="SIGNATURE_MISSING")
    expected = "sha256=" + hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("latin-1")):
        raise ApiError(401, "X-Hub-Signature-256 does not match the body", code="SIGNATURE_INVALID")


def _ignored(reason: str) -> JSONResponse:
    return JSONResponse({"status": "ignored", "reason": reason}, status_code=202)


@router.post(
    "/webhooks/github",
    responses={202: {"description": "ignored, with a reason"}, 401: {"description": "bad or missing signature"}},
)
async def github_webhook(request: Request, store: ProjectStoreDep, handled: HandledRequestsDep) -> Any:
    body = await request.body()  # at most MAX_HTTP_BODY_BYTES
    _verify_signature(request, body)
    try:
        payload = json.loads(body)
    except ValueError:
        raise ApiError(400, "The body is not JSON", code="INVALID_JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "The body is not a JSON object", code="INVALID_JSON")
    kind = request.headers.get("x-github-event", "")
    if kind == "ping":
        return {"status": "ok", "zen": payload.get("zen"), "hook_id": payload.get("hook_id")}
    mapped = map_delivery(kind, payload)
    if isinstance(mapped, Ignored):
        return _ignored(mapped.reason)
    projects = await store.for_repository(mapped.repository)
    if not projects:
        names = ", ".join(sorted(mapped.repository)) or "(none)"
        return _ignored(f"No project has this repository ({names}) as its repository_url")
    delivery = request.headers.get("x-github-delivery")
    if not delivery or len(delivery) > 255:
        raise ApiError(400, "X-GitHub-Delivery is missing or too long", code="DELIVERY_ID_MISSING")
    broadcast = getattr(get_broadcaster(), mapped.method)
    try:
        async with handled.once("github", delivery, body) as claim:
            if claim.previous is not None:
                if not claim.same_request:
                    raise ApiError(
                        422, "This X-GitHub-Delivery was handled with a different body", code="DELIVERY_ID_REUSED"
                    )
                return {"status": "duplicate", "delivery": delivery, **claim.previous}
            events = []
            for project in projects:
                try:
                    event = await broadcast(project_id=project.id, **mapped.fields)
                except DeliveryError as exc:  # nothing recorded: a redelivery publishes
                    raise ApiError(
                        503, f"The event could not be delivered: {exc}", headers={"Retry-After": "5"}
                    ) from None
                events.append({"event_id": event.id, "type": event.type.value, "project_id": str(project.id)})
            claim.result = {"events": events}
    except EventValidationError as exc:  # nothing sent, nothing recorded: a redelivery is answered the same
        logger.warning("github delivery %s not published: %s", delivery, exc)
        return _ignored(f"The delivery does not fit the {mapped.event_type.value} event: {exc}")
    logger.info("github delivery %s (%s %s): %d event(s)", delivery, kind, payload.get("action"), len(events))
    return {"status": "published", "delivery": delivery, "events": events}
