"""Which rooms each event type goes to. Pure: the routing table of WEBSOCKET_API.md, as code.

An event reaches every connection in any of its rooms exactly once (Socket.IO deduplicates
recipients across the rooms of one emit).
"""

from __future__ import annotations

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
    match data:
        case ProjectUpdatedData() | ProjectDeletedData() | ProjectAccessRevokedData():
            # the project's room only: a client that leaves it stops receiving its events
            return [project_room(data.project_id)]
        case AgentStatusChangedData() | AgentConnectedData() | AgentDisconnectedData():
            return [agent_room(data.agent_id)]
        case PrData() | IssueData():
            return [project_room(data.project_id)]
        case WorkflowData() | AiData():
            return owner_rooms(data.project_id, data.user_id)
    raise TypeError(f"no routing for {type(data).__name__}")


def owner_rooms(project_id: UUID | None, user_id: UUID | None) -> list[str]:
    rooms = []
    if project_id is not None:
        rooms.append(project_room(project_id))
    if user_id is not None:
        rooms.append(user_room(user_id))
    return rooms


#: Where an event goes when nothing names its owner: admins only, never ``global``.
FALLBACK_ROOMS = [ADMIN_ROOM]
