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
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from apps.api.deps import AuthenticatedRoute, CurrentUser, HandledRequestsDep, authenticate
from apps.api.errors import ApiError
from apps.api.events.broadcaster import PUBLISHABLE, DeliveryError, EventValidationError, get_broadcaster
from apps.api.websocket.auth import Principal
from apps.api.websocket.models import EventType


def _require_service(user: Principal, request: Request) -> None:
    role = request.app.state.settings.jwt_service_role
    if not user.is_admin and role not in user.roles:
        raise ApiError(403, f"Publishing needs a token with the {role!r} role", code="SERVICE_ROLE_REQUIRED")


class ServiceRoute(AuthenticatedRoute):
    """A route for publishers: 401 without a token, then 403 without the service (or admin) role,
    both before FastAPI reads the body (so a plain user is 403 whatever the body)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def service_only(request: Request) -> Response:
            _require_service(await authenticate(request), request)
            return await handler(request)

        return service_only


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
    _require_service(user, request)  # ServiceRoute has checked already; kept for direct callers
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
