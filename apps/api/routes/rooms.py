"""``GET /api/v1/rooms/{room}/events?since=``: what was sent to a room after an offset, from the
history connection state recovery keeps, for HTTP clients (and for a page that reloads and would
rather fetch than subscribe with ``since``). Authorised as ``subscribe`` is."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from apps.api.deps import AuthenticatedRoute, CurrentUser, ProjectStoreDep
from apps.api.errors import ApiError
from apps.api.websocket.rooms import RoomError, RoomKind, check_access, parse_room
from apps.api.websocket.server import HistoryUnavailable, RoomHistory

router = APIRouter(prefix="/api/v1/rooms", tags=["rooms"], route_class=AuthenticatedRoute)


@router.get("/{room}/events")
async def room_events(
    room: str,
    request: Request,
    user: CurrentUser,
    store: ProjectStoreDep,
    since: Annotated[str, Query(min_length=3, max_length=41, pattern=r"^\d+-\d+$")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The events of ``room`` after the offset ``since`` (an event's offset, as the client got it),
    oldest first, at most ``limit``; ``covered`` false when the history no longer reaches back
    there (reload the state instead); ``next``: the offset to ask from next time."""
    try:
        parsed = parse_room(room)
        is_member = False
        if parsed.kind is RoomKind.PROJECT and parsed.id is not None and not user.is_admin:
            is_member = await store.is_member(parsed.id, user.user_id)
        check_access(user, parsed, is_project_member=is_member)
    except RoomError as exc:
        raise ApiError(400 if exc.code == "INVALID_ROOM" else 403, exc.message, code=exc.code) from None
    history: RoomHistory = request.app.state.room_history
    if not history.enabled:
        raise ApiError(409, "The history is off (RECOVERY_ENABLED=false)", code="HISTORY_DISABLED")
    try:
        covered, events = await history.since(parsed.name, since, limit)
    except HistoryUnavailable:
        raise ApiError(
            503, "The history cannot be read now; try again", code="UNAVAILABLE", headers={"Retry-After": "2"}
        ) from None
    return {
        "room": parsed.name,
        "since": since,
        "covered": covered,
        "events": events,
        "next": events[-1]["offset"] if events else since,
    }
