"""Disconnecting connections, on every instance: all of a user's, or one by its sid. For admins,
and services (tokens with ``JWT_SERVICE_ROLE``).

Each connection is sent ``connection.closing`` (``reason: "disconnected"``, the caller's
``message`` and ``by``) and then disconnected: socket.io-client sees ``disconnect`` with reason
``"io server disconnect"`` and does not reconnect by itself. A new connection with a valid token is
accepted as usual: to keep a user out, stop issuing them tokens too.

The answer is ``202``: this instance's connections are gone when it is sent, and the other
instances have been told (through Redis) and do the same as they receive it. ``disconnected_here``
says how many were on the answering instance; how many there were elsewhere is not waited for. An
unknown user or sid is not an error: ``202`` with ``disconnected_here: 0`` (a connection may have
just closed, or live on another instance).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from apps.api.deps import CurrentUser, ServiceOrAdminRoute
from apps.api.errors import ApiError
from apps.api.events.emitter import DeliveryError
from apps.api.websocket.auth import Principal
from apps.api.websocket.models import ConnectionClosingData, Event, EventType
from apps.api.websocket.protocol import INSTANCE_ID

DEFAULT_MESSAGE = "An administrator closed this connection"


class OperatorRoute(ServiceOrAdminRoute):
    """A route for operators: administrators and services."""

    refusal = "Disconnecting connections is for administrators and services (the {role!r} role)"


router = APIRouter(prefix="/api/v1/websocket", tags=["websocket"], route_class=OperatorRoute)

#: A Socket.IO sid (socket.id, connection_established's connection_id): base64url characters.
Sid = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class DisconnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(
        default=DEFAULT_MESSAGE, min_length=1, max_length=500, description="shown to the client in connection.closing"
    )


class DisconnectAccepted(BaseModel):
    accepted: bool = True
    disconnected_here: int = Field(description="how many of the connections were on the answering instance")
    instance_id: str = Field(description="the answering instance")
    cluster: bool = Field(description="true: every instance was told (Redis); false: this instance is the only one")


def _notice(body: DisconnectRequest | None, user: Principal) -> Event:
    data = ConnectionClosingData(reason="disconnected", message=(body or DisconnectRequest()).message, by=user.user_id)
    return Event.of(EventType.CONNECTION_CLOSING, "websocket_server", data)


async def _closed(request: Request, closing: Coroutine[Any, Any, int]) -> DisconnectAccepted:
    try:
        here = await closing
    except DeliveryError as exc:
        raise ApiError(
            503,
            f"The other instances could not be told (Redis is unreachable: {exc}); this instance's connections "
            "were disconnected. Try again",
            code="UNAVAILABLE",
            headers={"Retry-After": "2"},
        ) from None
    cluster = request.app.state.backend.redis is not None
    return DisconnectAccepted(disconnected_here=here, instance_id=INSTANCE_ID, cluster=cluster)


@router.delete("/users/{user_id}/connections", response_model=DisconnectAccepted, status_code=status.HTTP_202_ACCEPTED)
async def disconnect_user(
    user_id: UUID,
    request: Request,
    user: CurrentUser,
    body: Annotated[DisconnectRequest | None, Body()] = None,
) -> DisconnectAccepted:
    """Disconnects every connection of ``user_id``, on every instance, each told first."""
    return await _closed(request, request.app.state.connection_closer.close_user(user_id, _notice(body, user)))


# ``:path``: a sid with a "/" is a 422 like any other bad sid, not a 404 for a route that did not match
@router.delete("/connections/{sid:path}", response_model=DisconnectAccepted, status_code=status.HTTP_202_ACCEPTED)
async def disconnect_connection(
    sid: Sid,
    request: Request,
    user: CurrentUser,
    body: Annotated[DisconnectRequest | None, Body()] = None,
) -> DisconnectAccepted:
    """Disconnects the connection ``sid`` (its ``connection_id``), wherever it is, told first."""
    return await _closed(request, request.app.state.connection_closer.close_sid(sid, _notice(body, user)))
