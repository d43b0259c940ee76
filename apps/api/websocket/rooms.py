"""Room names and who may join which room. Pure: no Socket.IO, no I/O.

Client-visible rooms are ``user:<uuid>``, ``project:<uuid>``, ``agent:<uuid>`` and ``global``.
``role:admin`` is internal: admin connections are placed in it on connect, and it receives events
that no project or user owns; nobody can subscribe to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from apps.api.websocket.auth import Principal

GLOBAL_ROOM = "global"
ADMIN_ROOM = "role:admin"


class RoomKind(StrEnum):
    USER = "user"
    PROJECT = "project"
    AGENT = "agent"
    GLOBAL = "global"


class RoomErrorCode:
    INVALID_ROOM = "INVALID_ROOM"
    ROOM_ACCESS_DENIED = "ROOM_ACCESS_DENIED"


class RoomError(Exception):
    """A room request was refused; ``code`` is one of :class:`RoomErrorCode`."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Room:
    kind: RoomKind
    id: UUID | None = None

    @property
    def name(self) -> str:
        return self.kind.value if self.id is None else f"{self.kind.value}:{self.id}"

    def __str__(self) -> str:
        return self.name


# The room names of the broadcaster's routing (one per event): what Room(kind, id).name gives,
# without building a Room.
_USER, _PROJECT, _AGENT = (f"{kind.value}:" for kind in (RoomKind.USER, RoomKind.PROJECT, RoomKind.AGENT))


def user_room(user_id: UUID | str) -> str:
    return _USER + str(_uuid(user_id))


def project_room(project_id: UUID | str) -> str:
    return _PROJECT + str(_uuid(project_id))


def agent_room(agent_id: UUID | str) -> str:
    return _AGENT + str(_uuid(agent_id))


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


_MAX_ROOM_NAME = 64


def parse_room(name: object) -> Room:
    """Parse a client-supplied room name into its canonical form (lower-case UUID).

    Raises :class:`RoomError` with ``INVALID_ROOM`` for anything that is not one of the four kinds.
    """
    if not isinstance(name, str) or not name or len(name) > _MAX_ROOM_NAME:
        raise RoomError(RoomErrorCode.INVALID_ROOM, _invalid_message(name))
    if name == GLOBAL_ROOM:
        return Room(RoomKind.GLOBAL)
    prefix, sep, raw_id = name.partition(":")
    try:
        kind = RoomKind(prefix)
    except ValueError:
        kind = None
    if not sep or kind is None or kind is RoomKind.GLOBAL:
        raise RoomError(RoomErrorCode.INVALID_ROOM, _invalid_message(name))
    try:
        return Room(kind, UUID(raw_id))
    except ValueError:
        raise RoomError(RoomErrorCode.INVALID_ROOM, f"Room {name!r}: the id after '{prefix}:' must be a UUID") from None


def _invalid_message(name: object) -> str:
    shown = repr(name) if isinstance(name, str) and len(name) <= _MAX_ROOM_NAME else "that name"
    return f"Invalid room {shown}: use user:<uuid>, project:<uuid>, agent:<uuid> or global"


def check_access(principal: Principal, room: Room, *, is_project_member: bool = False) -> None:
    """Raise ``ROOM_ACCESS_DENIED`` unless ``principal`` may join ``room``.

    Admins may join any room. Others: their own user room, projects they are members of, any agent
    room, and ``global``. ``is_project_member`` is looked up by the caller for project rooms.
    """
    if principal.is_admin:
        return
    if room.kind is RoomKind.USER and room.id != principal.user_id:
        raise RoomError(RoomErrorCode.ROOM_ACCESS_DENIED, "You may only join your own user room")
    if room.kind is RoomKind.PROJECT and not is_project_member:
        raise RoomError(RoomErrorCode.ROOM_ACCESS_DENIED, f"You are not a member of project {room.id}")


def auto_rooms(principal: Principal) -> list[str]:
    """Rooms a connection joins on connect."""
    rooms = [user_room(principal.user_id), GLOBAL_ROOM]
    if principal.is_admin:
        rooms.append(ADMIN_ROOM)
    return rooms
