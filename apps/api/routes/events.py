"""``POST /api/v1/events``: the HTTP publish API, for services in any language.

The caller authenticates as a service: a JWT (signed like every other token) whose ``roles``
include ``JWT_SERVICE_ROLE`` (``service``) or the admin role. The body is ``{type, data,
source?}``; ``data`` is validated by the same model as the broadcaster's ``broadcast_<type>``
and routed by the same table (the rooms follow from the data: a publisher cannot misroute).
An ``Idempotency-Key`` header makes a retried publish broadcast once (answered with the first
publish's event id), across instances and restarts.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, status
from pydantic import BaseModel, ConfigDict, Field

from apps.api.deps import CurrentUser, HandledRequestsDep, ServiceOrAdminRoute, require_service_or_admin
from apps.api.errors import ApiError
from apps.api.events.broadcaster import PUBLISHABLE, DeliveryError, EventValidationError, get_broadcaster
from apps.api.websocket.models import EventType


class ServiceRoute(ServiceOrAdminRoute):
    """A route for publishers (the service role, or an admin)."""

    refusal = "Publishing needs a token with the {role!r} role"
    refusal_code = "SERVICE_ROLE_REQUIRED"


router = APIRouter(prefix="/api/v1/events", tags=["events"], route_class=ServiceRoute)

_TYPES = sorted(t.value for t in PUBLISHABLE)


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(description="an event type, e.g. workflow.progress", examples=["workflow.progress"])
    data: dict[str, Any] = Field(description="the event's payload (WEBSOCKET_API.md, Server events)")
    source: Annotated[str, Field(min_length=1, max_length=512)] | None = None


class Published(BaseModel):
    event_id: str
    type: str
    replayed: bool = Field(default=False, description="true: an earlier publish with this Idempotency-Key")


@router.post("", response_model=Published, status_code=status.HTTP_202_ACCEPTED)
async def publish_event(
    body: PublishRequest,
    request: Request,
    user: CurrentUser,
    handled: HandledRequestsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Published:
    """Validates and broadcasts one event; 202 with its id, 422 naming what is wrong."""
    # ServiceRoute has checked already; kept for direct callers
    require_service_or_admin(user, request, ServiceRoute.refusal, ServiceRoute.refusal_code)
    try:
        event_type = EventType(body.type)
        if event_type not in PUBLISHABLE:
            raise ValueError
    except ValueError:
        raise ApiError(
            422, f"Unknown or server-only event type {body.type[:100]!r}", code="UNKNOWN_EVENT_TYPE", allowed=_TYPES
        ) from None
    if idempotency_key is None:
        return await _publish(event_type, body)
    # the request as parsed (not its bytes): a retry that serialises the same JSON differently is the same
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    async with handled.once(f"publish:{user.user_id}", idempotency_key, canonical) as claim:
        if claim.previous is not None:
            if not claim.same_request:
                raise ApiError(
                    422, "This Idempotency-Key was used with a different request", code="IDEMPOTENCY_KEY_REUSED"
                )
            return Published(**{**claim.previous, "replayed": True})
        published = await _publish(event_type, body)
        claim.result = published.model_dump()
    return published


async def _publish(event_type: EventType, body: PublishRequest) -> Published:
    try:
        event = await get_broadcaster().broadcast(event_type, body.data, source=body.source)
    except EventValidationError as exc:
        details = [{"loc": ["data", *e["loc"]], "message": e["msg"], "type": e["type"]} for e in exc.errors]
        raise ApiError(422, str(exc), code="VALIDATION_ERROR", details=details) from None
    except DeliveryError as exc:
        raise ApiError(503, f"The event could not be delivered: {exc}", headers={"Retry-After": "2"}) from None
    return Published(event_id=event.id, type=event.type.value)
