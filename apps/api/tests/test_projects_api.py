"""``/api/v1/projects`` over real HTTP: CRUD, membership, error shapes, and the events it publishes."""

from __future__ import annotations

from uuid import uuid4

import pytest

from apps.api.tests.support import make_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_create_list_get(http, token, user_id):
    created = await http.post("/api/v1/projects", json={"name": "Alpha", "description": "d"}, headers=bearer(token))
    assert created.status_code == 201
    body = created.json()
    assert body["owner_id"] == str(user_id)
    assert body["members"] == [str(user_id)]
    assert body["status"] == "active"
    listed = await http.get("/api/v1/projects", headers=bearer(token))
    assert [p["id"] for p in listed.json()["items"]] == [body["id"]]
    assert listed.json()["next_cursor"] is None
    fetched = await http.get(f"/api/v1/projects/{body['id']}", headers=bearer(token))
    assert fetched.json()["name"] == "Alpha"
    other = await http.get("/api/v1/projects", headers=bearer(make_token()))
    assert other.json() == {"items": [], "next_cursor": None}


async def test_put_stores_and_broadcasts_what_changed(http, connect, token, user_id):
    project = (await http.post("/api/v1/projects", json={"name": "Beta"}, headers=bearer(token))).json()
    client = await connect(token)
    await client.call("subscribe", {"room": f"project:{project['id']}"})
    admin_id = uuid4()
    response = await http.put(
        f"/api/v1/projects/{project['id']}",
        json={"status": "archived", "name": "Beta", "repository_url": "https://github.com/u/beta"},
        headers=bearer(make_token(admin_id, roles=["admin"])),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["changed_fields"] == ["repository_url", "status"]
    assert body["project"]["status"] == "archived"
    event = await client.expect("project.updated")
    assert event["id"] == body["event_id"]
    assert event["data"]["changes"]["fields"] == ["repository_url", "status"]
    assert event["data"]["changes"]["status"] == "archived"
    assert event["data"]["status"] == "archived"
    assert event["data"]["repository_url"] == "https://github.com/u/beta"
    assert event["data"]["updated_by"] == str(admin_id)
    stored = await http.get(f"/api/v1/projects/{project['id']}", headers=bearer(token))
    assert stored.json()["status"] == "archived"


async def test_only_an_admin_links_a_project_to_a_repository(http, connect, token):
    """A repository_url routes that repository's webhook deliveries to the project's members, so an
    ordinary user (even the owner) cannot set or change it; sending it unchanged, or unlinking, is
    allowed."""
    url = "https://github.com/acme/private-repo"
    refused = await http.post("/api/v1/projects", json={"name": "Spy", "repository_url": url}, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "REPOSITORY_LINK_REQUIRES_ADMIN"
    mine = await http.get("/api/v1/projects", headers=bearer(token))
    assert mine.json()["items"] == [], "a refused create stored nothing"

    project = (await http.post("/api/v1/projects", json={"name": "Gamma"}, headers=bearer(token))).json()
    client = await connect(token)
    await client.call("subscribe", {"room": f"project:{project['id']}"})
    link = await http.put(f"/api/v1/projects/{project['id']}", json={"repository_url": url}, headers=bearer(token))
    assert (link.status_code, link.json()["error"]["code"]) == (403, "REPOSITORY_LINK_REQUIRES_ADMIN")
    assert (await http.get(f"/api/v1/projects/{project['id']}", headers=bearer(token))).json()["repository_url"] is None

    admin = bearer(make_token(roles=["admin"]))
    linked = await http.put(f"/api/v1/projects/{project['id']}", json={"repository_url": url}, headers=admin)
    assert linked.status_code == 200 and linked.json()["changed_fields"] == ["repository_url"]
    assert (await client.expect("project.updated"))["id"] == linked.json()["event_id"]
    # a frontend that sends the whole project back, repository_url unchanged, may still rename it
    same = await http.put(
        f"/api/v1/projects/{project['id']}", json={"name": "Gamma 2", "repository_url": url}, headers=bearer(token)
    )
    assert same.status_code == 200 and same.json()["changed_fields"] == ["name"]
    moved = await http.put(
        f"/api/v1/projects/{project['id']}", json={"repository_url": url + "-fork"}, headers=bearer(token)
    )
    assert moved.status_code == 403
    unlinked = await http.put(f"/api/v1/projects/{project['id']}", json={"repository_url": None}, headers=bearer(token))
    assert unlinked.status_code == 200 and unlinked.json()["project"]["repository_url"] is None


async def test_put_without_changes_publishes_nothing(http, token):
    project = (await http.post("/api/v1/projects", json={"name": "Same"}, headers=bearer(token))).json()
    response = await http.put(f"/api/v1/projects/{project['id']}", json={"name": "Same"}, headers=bearer(token))
    assert response.json()["changed_fields"] == [] and response.json()["event_id"] is None


async def test_delete_broadcasts_and_removes(http, connect, token):
    project = (await http.post("/api/v1/projects", json={"name": "Gamma"}, headers=bearer(token))).json()
    client = await connect(token)
    await client.call("subscribe", {"room": f"project:{project['id']}"})
    response = await http.delete(f"/api/v1/projects/{project['id']}", headers=bearer(token))
    assert response.status_code == 200
    event = await client.expect("project.deleted")
    assert event["data"]["project_id"] == project["id"]
    assert event["id"] == response.json()["event_id"]
    gone = await http.get(f"/api/v1/projects/{project['id']}", headers=bearer(token))
    assert gone.status_code == 404


async def test_members_may_update_but_only_owner_deletes_or_adds(http, token):
    project = (await http.post("/api/v1/projects", json={"name": "Delta"}, headers=bearer(token))).json()
    member_id = uuid4()
    member = make_token(member_id)
    added = await http.post(
        f"/api/v1/projects/{project['id']}/members", json={"user_id": str(member_id)}, headers=bearer(token)
    )
    assert added.status_code == 201 and str(member_id) in added.json()["members"]
    assert (
        await http.put(f"/api/v1/projects/{project['id']}", json={"status": "x"}, headers=bearer(member))
    ).is_success
    denied = await http.delete(f"/api/v1/projects/{project['id']}", headers=bearer(member))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "PROJECT_ACCESS_DENIED"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/projects", None),
        ("POST", "/api/v1/projects", {"name": "x"}),
        ("PUT", f"/api/v1/projects/{uuid4()}", {"status": "x"}),
        ("DELETE", f"/api/v1/projects/{uuid4()}", None),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer garbage", "Basic abc"])
async def test_401_without_a_valid_token(http, method, path, body, header):
    headers = {"Authorization": header} if header else {}
    response = await http.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "AUTH_FAILED"
    assert error["reason"] in ("missing", "malformed")


async def test_403_for_non_member_and_404_for_unknown(http, token):
    project = (await http.post("/api/v1/projects", json={"name": "Eps"}, headers=bearer(token))).json()
    stranger = make_token()
    for method, body in (("GET", None), ("PUT", {"status": "x"}), ("DELETE", None)):
        response = await http.request(method, f"/api/v1/projects/{project['id']}", json=body, headers=bearer(stranger))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "PROJECT_ACCESS_DENIED"
    missing = await http.get(f"/api/v1/projects/{uuid4()}", headers=bearer(token))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x", "unknown": 1}, {"name": "x", "repository_url": "ftp://x"}, {"name": "x" * 300}],
)
async def test_422_for_invalid_bodies(http, token, body):
    response = await http.post("/api/v1/projects", json=body, headers=bearer(token))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]


async def test_422_for_bad_id_and_null_name(http, token):
    assert (await http.get("/api/v1/projects/not-a-uuid", headers=bearer(token))).status_code == 422
    project = (await http.post("/api/v1/projects", json={"name": "Zeta"}, headers=bearer(token))).json()
    response = await http.put(f"/api/v1/projects/{project['id']}", json={"name": None}, headers=bearer(token))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_health(http):
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["mode"] == "single"


async def test_stats_are_for_admins(http, connect, token, user_id):
    await connect(token)
    assert (await http.get("/api/v1/websocket/stats")).status_code == 401
    assert (await http.get("/api/v1/websocket/stats", headers=bearer(token))).status_code == 403
    response = await http.get("/api/v1/websocket/stats", headers=bearer(make_token(roles=["admin"])))
    assert response.status_code == 200
    stats = response.json()
    assert stats["connections"] >= 1
    assert stats["rooms"][f"user:{user_id}"] == 1
    assert stats["rooms"]["global"] >= 1


async def test_unknown_route_is_json_404(http):
    response = await http.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


async def test_a_stored_change_whose_event_cannot_be_delivered_says_so(http, token, monkeypatch):
    from apps.api.events.broadcaster import DeliveryError, get_broadcaster

    class RedisDown:
        async def emit(self, event: object, *, rooms: list[str]) -> None:
            raise DeliveryError("could not publish to Redis at redis://example:6379: ConnectionError")

        async def evict(self, notice: object, *, room: str, only_in: str | None = None) -> None:
            raise DeliveryError("could not publish to Redis at redis://example:6379: ConnectionError")

    project = (await http.post("/api/v1/projects", json={"name": "Eta"}, headers=bearer(token))).json()
    monkeypatch.setattr(get_broadcaster(), "_emitter", RedisDown())
    response = await http.put(f"/api/v1/projects/{project['id']}", json={"status": "paused"}, headers=bearer(token))
    assert response.status_code == 200
    body = response.json()
    assert (body["changed_fields"], body["event_id"], body["event_delivered"]) == (["status"], None, False)
    stored = await http.get(f"/api/v1/projects/{project['id']}", headers=bearer(token))
    assert stored.json()["status"] == "paused"
    deleted = await http.delete(f"/api/v1/projects/{project['id']}", headers=bearer(token))
    assert deleted.status_code == 200 and deleted.json()["event_delivered"] is False
