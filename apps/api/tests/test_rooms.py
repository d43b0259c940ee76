"""Room names and access rules: pure, no server."""

from __future__ import annotations

from uuid import uuid4

import pytest

from apps.api.websocket.auth import Principal
from apps.api.websocket.rooms import (
    ADMIN_ROOM,
    RoomError,
    RoomKind,
    agent_room,
    auto_rooms,
    check_access,
    parse_room,
    project_room,
    user_room,
)

USER = Principal(user_id=uuid4())
ADMIN = Principal(user_id=uuid4(), roles=frozenset({"admin"}))


def test_constructors_and_parse_round_trip():
    ident = uuid4()
    for name, kind in (
        (user_room(ident), RoomKind.USER),
        (project_room(ident), RoomKind.PROJECT),
        (agent_room(str(ident)), RoomKind.AGENT),
    ):
        room = parse_room(name)
        assert (room.kind, room.id, room.name) == (kind, ident, name)
    assert parse_room("global").name == "global"


def test_parse_canonicalises_uuid_case():
    ident = uuid4()
    assert parse_room(f"project:{str(ident).upper()}").name == f"project:{ident}"


@pytest.mark.parametrize(
    "name", ["", "global:x", "user:", "user:abc", "team:" + str(uuid4()), ADMIN_ROOM, None, 5, "global " * 20]
)
def test_invalid_names(name):
    with pytest.raises(RoomError) as info:
        parse_room(name)
    assert info.value.code == "INVALID_ROOM"


def test_access_rules():
    own = parse_room(user_room(USER.user_id))
    other = parse_room(user_room(uuid4()))
    project = parse_room(project_room(uuid4()))
    check_access(USER, own)
    check_access(USER, parse_room("global"))
    check_access(USER, parse_room(agent_room(uuid4())))
    check_access(USER, project, is_project_member=True)
    for room, member in ((other, False), (project, False)):
        with pytest.raises(RoomError) as info:
            check_access(USER, room, is_project_member=member)
        assert info.value.code == "ROOM_ACCESS_DENIED"
    for room in (other, project):
        check_access(ADMIN, room)


def test_auto_rooms():
    assert auto_rooms(USER) == [f"user:{USER.user_id}", "global"]
    assert auto_rooms(ADMIN) == [f"user:{ADMIN.user_id}", "global", ADMIN_ROOM]
