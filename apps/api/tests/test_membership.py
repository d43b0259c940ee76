"""Membership over real HTTP and Socket.IO: adding, listing and removing members, and what a removal
or a deletion does to open connections (they leave ``project:<id>`` at once, told by
``project.access_revoked``, and receive nothing more of the project)."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from sqlalchemy.exc import OperationalError

from apps.api.stores.sql_projects import SqlProjectStore
from apps.api.tests.support import create_project, make_token, marker


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def rooms_of(client) -> list[str]:
    return (await client.call("debug:rooms"))["rooms"]


async def test_a_removed_member_leaves_the_room_at_once_is_told_and_gets_nothing_more(http, connect):
    owner, member = uuid4(), uuid4()
    owner_token, member_token = make_token(owner), make_token(member)
    project = await create_project(http, owner_token)
    added = await http.post(
        f"/api/v1/projects/{project}/members", json={"user_id": str(member)}, headers=bearer(owner_token)
    )
    assert added.status_code == 201 and str(member) in added.json()["members"]
    again = await http.post(
        f"/api/v1/projects/{project}/members", json={"user_id": str(member)}, headers=bearer(owner_token)
    )
    assert again.status_code == 200  # already a member: nothing changed

    owner_client = await connect(owner_token)
    tabs = [await connect(member_token), await connect(member_token)]
    other_tab = await connect(member_token)  # the member's third tab, not in the project's room
    for client in (owner_client, *tabs):
        assert (await client.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"

    removed = await http.delete(f"/api/v1/projects/{project}/members/{member}", headers=bearer(owner_token))
    assert removed.status_code == 200, removed.text
    assert str(member) not in removed.json()["project"]["members"] and removed.json()["event_delivered"] is True
    for tab in tabs:
        notice = await tab.expect("project.access_revoked")
        assert notice["data"] == {
            "project_id": project,
            "room": f"project:{project}",
            "reason": "member_removed",
            "user_id": str(member),
            "by": str(owner),
        }
        assert f"project:{project}" not in await rooms_of(tab)
    assert f"project:{project}" in await rooms_of(owner_client)

    changed = await http.put(f"/api/v1/projects/{project}", json={"status": "paused"}, headers=bearer(owner_token))
    assert changed.status_code == 200
    assert (await owner_client.expect("project.updated"))["id"] == changed.json()["event_id"]
    await marker(*tabs, other_tab)
    for client in (*tabs, other_tab):
        assert client.received("project.updated") == []
    assert other_tab.received("project.access_revoked") == []
    refused = await tabs[0].call("subscribe", {"room": f"project:{project}"})
    assert (refused["status"], refused["code"]) == ("error", "ROOM_ACCESS_DENIED")
    assert (await http.get(f"/api/v1/projects/{project}", headers=bearer(member_token))).status_code == 403


async def test_deleting_a_project_takes_everyone_out_of_its_room(http, connect):
    owner, member = uuid4(), uuid4()
    owner_token = make_token(owner)
    project = await create_project(http, owner_token)
    await http.post(f"/api/v1/projects/{project}/members", json={"user_id": str(member)}, headers=bearer(owner_token))
    clients = [await connect(owner_token), await connect(make_token(member))]
    for client in clients:
        assert (await client.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
    deleted = await http.delete(f"/api/v1/projects/{project}", headers=bearer(owner_token))
    assert deleted.status_code == 200 and deleted.json()["event_delivered"] is True
    for client in clients:
        assert (await client.expect("project.deleted"))["id"] == deleted.json()["event_id"]
        notice = await client.expect("project.access_revoked")
        assert (notice["data"]["reason"], notice["data"]["user_id"]) == ("project_deleted", None)
        assert f"project:{project}" not in await rooms_of(client)
        refused = await client.call("subscribe", {"room": f"project:{project}"})
        assert refused["code"] == "ROOM_ACCESS_DENIED"


async def test_members_are_listed_to_members_and_changed_by_the_owner_only(http):
    owner, member, stranger = uuid4(), uuid4(), uuid4()
    owner_token, member_token = make_token(owner), make_token(member)
    project = await create_project(http, owner_token)
    members_url = f"/api/v1/projects/{project}/members"
    await http.post(members_url, json={"user_id": str(member)}, headers=bearer(owner_token))
    listed = await http.get(members_url, headers=bearer(member_token))
    assert [(m["user_id"], m["role"]) for m in listed.json()["items"]] == [
        (str(owner), "owner"),
        (str(member), "member"),
    ]
    assert (await http.get(members_url, headers=bearer(make_token(stranger)))).status_code == 403

    not_owner = await http.post(members_url, json={"user_id": str(stranger)}, headers=bearer(member_token))
    assert (not_owner.status_code, not_owner.json()["error"]["code"]) == (403, "PROJECT_ACCESS_DENIED")
    by_member = await http.delete(f"{members_url}/{owner}", headers=bearer(member_token))
    assert by_member.status_code == 403
    owner_out = await http.delete(f"{members_url}/{owner}", headers=bearer(owner_token))
    assert (owner_out.status_code, owner_out.json()["error"]["code"]) == (409, "OWNER_CANNOT_BE_REMOVED")
    absent = await http.delete(f"{members_url}/{stranger}", headers=bearer(owner_token))
    assert (absent.status_code, absent.json()["error"]["code"]) == (404, "MEMBER_NOT_FOUND")
    leaves = await http.delete(f"{members_url}/{member}", headers=bearer(member_token))  # a member may leave
    assert leaves.status_code == 200
    assert (await http.get(members_url, headers=bearer(member_token))).status_code == 403
    admin = await http.post(members_url, json={"user_id": str(stranger)}, headers=bearer(make_token(roles=["admin"])))
    assert admin.status_code == 201


async def test_changes_to_a_deleted_project_are_clean_404s(http):
    token = make_token()
    project = await create_project(http, token)
    assert (await http.delete(f"/api/v1/projects/{project}", headers=bearer(token))).status_code == 200
    for method, path, body in (
        ("PUT", "", {"status": "x"}),
        ("POST", "/members", {"user_id": str(uuid4())}),
        ("DELETE", f"/members/{uuid4()}", None),
        ("DELETE", "", None),
        ("GET", "/members", None),
    ):
        response = await http.request(method, f"/api/v1/projects/{project}{path}", json=body, headers=bearer(token))
        assert (response.status_code, response.json()["error"]["code"]) == (404, "NOT_FOUND"), (method, path)


async def test_updates_racing_a_delete_never_announce_after_it(http, connect):
    """Concurrent PUTs and a DELETE over HTTP: each PUT is 200 (stored and announced before the
    delete) or 404; a subscriber never receives a project.updated after the project.deleted."""
    for _ in range(3):
        token = make_token()
        project = await create_project(http, token)
        watcher = await connect(token)
        await watcher.call("subscribe", {"room": f"project:{project}"})
        order: list[str] = []
        watcher.sio.on("project.updated", lambda e, o=order: o.append("updated"), namespace="/ws")
        watcher.sio.on("project.deleted", lambda e, o=order: o.append("deleted"), namespace="/ws")

        async def put(i: int, project: str = project, token: str = token) -> int:
            response = await http.put(f"/api/v1/projects/{project}", json={"name": f"n{i}"}, headers=bearer(token))
            return response.status_code

        async def delete(project: str = project, token: str = token) -> int:
            return (await http.delete(f"/api/v1/projects/{project}", headers=bearer(token))).status_code

        codes = await asyncio.gather(put(0), put(1), delete(), put(2), put(3))
        assert codes[2] == 200 and set(codes) <= {200, 404}, codes
        await watcher.expect("project.access_revoked")  # sent last, after the deletion
        assert order.count("deleted") == 1 and "updated" not in order[order.index("deleted") :], order
        assert order.count("updated") == [c for i, c in enumerate(codes) if i != 2].count(200)


async def test_projects_are_listed_in_pages(http):
    token = make_token()
    created = [await create_project(http, token, name=f"p{i}") for i in range(5)]
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/api/v1/projects", params=params, headers=bearer(token))).json()
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created
    for params in ({"cursor": "garbage"}, {"limit": 0}, {"limit": 1000}):
        response = await http.get("/api/v1/projects", params=params, headers=bearer(token))
        assert (response.status_code, response.json()["error"]["code"]) == (422, "VALIDATION_ERROR"), params


async def _member_of_a_project(http) -> tuple[str, str, str]:
    owner, member = uuid4(), uuid4()
    owner_token, member_token = make_token(owner), make_token(member)
    project = await create_project(http, owner_token)
    added = await http.post(
        f"/api/v1/projects/{project}/members", json={"user_id": str(member)}, headers=bearer(owner_token)
    )
    assert added.status_code == 201
    return project, owner_token, member_token


async def test_a_subscription_racing_a_removal_does_not_outlive_it(http, connect, monkeypatch):
    """The member is removed after subscribe's membership check and before the join (the removal's
    eviction then finds nobody to take out): the check made once joined refuses, and the connection
    is not left in the room."""
    project, owner_token, member_token = await _member_of_a_project(http)
    member = await connect(member_token)
    user_id = (await member.call("debug:rooms"))["user_id"]
    checking = SqlProjectStore.is_member
    calls = 0

    async def removed_meanwhile(self, project_id, user):
        nonlocal calls
        calls += 1
        answer = await checking(self, project_id, user)
        if calls == 1:
            removal = await http.delete(f"/api/v1/projects/{project}/members/{user_id}", headers=bearer(owner_token))
            assert removal.status_code == 200, removal.text
        return answer

    monkeypatch.setattr(SqlProjectStore, "is_member", removed_meanwhile)
    ack = await member.call("subscribe", {"room": f"project:{project}"})
    assert (ack["status"], ack["code"]) == ("error", "ROOM_ACCESS_DENIED"), ack
    assert calls == 2
    assert f"project:{project}" not in await rooms_of(member)


async def test_a_membership_check_that_fails_never_leaves_the_connection_in_the_room(http, connect, monkeypatch):
    """The database fails on the check before the join, or on the one after it: the ack says
    UNAVAILABLE, the connection is not in the room, and it stays connected and usable."""
    project, _, member_token = await _member_of_a_project(http)
    member = await connect(member_token)
    checking = SqlProjectStore.is_member
    for failing_call in (1, 2):
        calls = 0

        async def flaky(self, project_id, user, failing_call=failing_call):
            nonlocal calls
            calls += 1
            if calls == failing_call:
                raise OperationalError("SELECT count(*) FROM project_members", {}, ConnectionRefusedError())
            return await checking(self, project_id, user)

        monkeypatch.setattr(SqlProjectStore, "is_member", flaky)
        ack = await member.call("subscribe", {"room": f"project:{project}"})
        assert (ack["status"], ack["code"]) == ("error", "UNAVAILABLE"), (failing_call, ack)
        assert calls == failing_call
        assert f"project:{project}" not in await rooms_of(member)
    monkeypatch.setattr(SqlProjectStore, "is_member", checking)
    assert (await member.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
