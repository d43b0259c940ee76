"""Which rooms each event type goes to. Pure: the routing table of WEBSOCKET_API.md, as code.

An event reaches every connection in any of its rooms exactly once (Socket.IO deduplicates
recipients across the rooms of one emit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from apps.api.websocket.models import (
    AgentConnectedData,
    AgentDisconnectedData,
    AgentStatusChangedData,
    AiData,
    IssueData,
    Payload,
    PrData,
    ProjectAccessRevokedData,
    ProjectDeletedData,
    ProjectUpdatedData,
    WorkflowData,
)
from apps.api.websocket.rooms import ADMIN_ROOM, agent_room, project_room, user_room


def rooms_for(data: Payload) -> list[str]:
    """The rooms an event with this payload goes to.

    An empty list means the payload names no owner (a workflow event without project or user);
    the broadcaster then looks up the workflow's recorded rooms, and falls back to admins.
    """
    route = _ROUTES.get(type(data))
    if route is None:
        route = _ROUTES[type(data)] = _route(type(data))
    return route(data)


def _route(kind: type[Payload]) -> Callable[[Any], list[str]]:
    """How payloads of class ``kind`` are routed (looked up once per class)."""
    if issubclass(kind, ProjectUpdatedData | ProjectDeletedData | ProjectAccessRevokedData | PrData | IssueData):
        # the project's room only: a client that leaves it stops receiving its events
        return lambda data: [project_room(data.project_id)]
    if issubclass(kind, AgentStatusChangedData | AgentConnectedData | AgentDisconnectedData):
        return lambda data: [agent_room(data.agent_id)]
    if issubclass(kind, WorkflowData | AiData):
        return lambda data: owner_rooms(data.project_id, data.user_id)
    raise TypeError(f"no routing for {kind.__name__}")


_ROUTES: dict[type[Payload], Callable[[Any], list[str]]] = {}


def owner_rooms(project_id: UUID | None, user_id: UUID | None) -> list[str]:
    rooms = []
    if project_id is not None:
        rooms.append(project_room(project_id))
    if user_id is not None:
        rooms.append(user_room(user_id))
    return rooms


#: Where an event goes when nothing names its owner: admins only, never ``global``.
FALLBACK_ROOMS = [ADMIN_ROOM]
