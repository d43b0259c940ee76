"""The admin disconnect endpoints (apps/api/routes/admin.py): ``DELETE
/api/v1/websocket/users/{user_id}/connections`` and ``DELETE /api/v1/websocket/connections/{sid}``.
Real servers and real clients: who may call them, what each closed connection is told and that it
is then disconnected (and nobody else), across two instances sharing Redis, what is refused, and
that a disconnected user may connect again."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import socketio

from apps.api.tests.redis_support import delete_prefix, isolation
from apps.api.tests.support import (
    TEST_SECRET,
    TIMEOUT,
    ServerProcess,
    WsClient,
    eventually,
    free_port,
    make_token,
    marker,
    start_server_process,
)

ADMIN_ID = uuid4()
ADMIN_TOKEN = make_token(ADMIN_ID, roles=["admin"])
#: python-socketio's name for socket.io-client's "io server disconnect": no reconnecting after it
SERVER_DISCONNECT = socketio.AsyncClient.reason.SERVER_DISCONNECT


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user_path(user_id: UUID | str) -> str:
    return f"/api/v1/websocket/users/{user_id}/connections"


def sid_path(sid: str) -> str:
    return f"/api/v1/websocket/connections/{sid}"


async def delete(
    http: httpx.AsyncClient, path: str, token: str | None = ADMIN_TOKEN, body: Any = None
) -> httpx.Response:
    headers = bearer(token) if token is not None else {}
    return await http.request("DELETE", path, headers=headers, json=body)


class Client(WsClient):
    """A WsClient that also keeps the order of what happened to it and why it was disconnected."""

    def __init__(self, server_url: str) -> None:
        super().__init__(server_url)
        self.log: list[str] = []
        self.disconnect_reason: Any = None

    async def _record(self, event: str, *args: Any) -> None:
        self.log.append(event)
        await super()._record(event, *args)

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.log.append("disconnect")
        self.disconnect_reason = reason
        await super()._on_disconnect(reason)


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        await client.close()


async def connected(url: str, clients: list[Client], user: UUID) -> Client:
    client = Client(url)
    clients.append(client)
    await client.connect(make_token(user))
    welcome = await client.expect("connection_established")
    assert welcome["data"]["connection_id"] == client.sid
    return client


async def closed_with_notice(client: Client, message: str, by: UUID = ADMIN_ID) -> None:
    """``client`` is told (connection.closing) and then disconnected by the server."""
    notice = await client.expect("connection.closing")
    assert notice["type"] == "connection.closing"
    assert notice["data"] == {"reason": "disconnected", "message": message, "by": str(by)}
    await asyncio.wait_for(client.disconnected.wait(), TIMEOUT)
    assert client.disconnect_reason == SERVER_DISCONNECT
    assert client.log.index("connection.closing") < client.log.index("disconnect")
    assert not client.sio.connected


async def still_connected(client: Client) -> None:
    assert client.sio.connected and not client.disconnected.is_set()
    assert (await client.call("ping"))["status"] == "pong"
    assert client.received("connection.closing") == []


def accepted(response: httpx.Response, here: int, *, cluster: bool = False) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["accepted"] is True and body["cluster"] is cluster
    assert body["disconnected_here"] == here
    assert isinstance(body["instance_id"], str) and body["instance_id"]
    return body


async def users_on(http: httpx.AsyncClient, user: UUID) -> int:
    stats = (await http.get("/api/v1/websocket/stats", headers=bearer(ADMIN_TOKEN))).json()
    return int(stats["rooms"].get(f"user:{user}", 0))


# --- who may ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [user_path(uuid4()), sid_path("someSid_-123")], ids=["user", "sid"])
async def test_only_admins_and_services_may_disconnect(http, path):
    missing = await delete(http, path, token=None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "AUTH_FAILED"
    bad = await delete(http, path, token="not-a-jwt")
    assert bad.status_code == 401
    plain = await delete(http, path, token=make_token(uuid4()))
    assert plain.status_code == 403 and plain.json()["error"]["code"] == "FORBIDDEN"
    # refused before the body is read: a plain user learns nothing from a bad body either
    assert (await delete(http, path, token=make_token(uuid4()), body={"nope": 1})).status_code == 403
    assert (await delete(http, path, token=None, body={"nope": 1})).status_code == 401

    for roles in (["service"], ["admin"]):
        accepted(await delete(http, path, token=make_token(uuid4(), roles=roles)), 0)


# --- one instance -----------------------------------------------------------------------------


async def test_a_users_connections_are_told_and_closed_and_others_keep_theirs(server, http, clients):
    a, b = uuid4(), uuid4()
    a1, a2 = await connected(server.url, clients, a), await connected(server.url, clients, a)
    b1 = await connected(server.url, clients, b)
    assert await users_on(http, a) == 2

    answer = accepted(await delete(http, user_path(a), body={"message": "Maintenance, back soon"}), 2)
    assert answer["instance_id"] == (await http.get("/health")).json()["instance_id"]
    # this instance's connections are gone when the answer is sent
    assert await users_on(http, a) == 0

    for client in (a1, a2):
        await closed_with_notice(client, "Maintenance, back soon")
    await still_connected(b1)
    await marker(b1)  # still receives events


async def test_without_a_body_the_default_message_is_sent_and_a_service_is_named_as_by(server, http, clients):
    user, service = uuid4(), uuid4()
    client = await connected(server.url, clients, user)
    accepted(await delete(http, user_path(user), token=make_token(service, roles=["service"])), 1)
    await closed_with_notice(client, "An administrator closed this connection", by=service)


async def test_one_connection_is_closed_by_its_sid(server, http, clients):
    user = uuid4()
    goes, stays = await connected(server.url, clients, user), await connected(server.url, clients, user)
    other = await connected(server.url, clients, uuid4())
    assert goes.sid is not None

    accepted(await delete(http, sid_path(goes.sid), body={"message": "just this tab"}), 1)
    await closed_with_notice(goes, "just this tab")
    await still_connected(stays)
    await still_connected(other)
    await marker(stays, other)
    assert await users_on(http, user) == 1

    # that sid is gone now: nothing more to do
    accepted(await delete(http, sid_path(goes.sid)), 0)
    await still_connected(stays)


async def test_a_disconnected_user_may_connect_again(server, http, clients):
    user = uuid4()
    first = await connected(server.url, clients, user)
    accepted(await delete(http, user_path(user)), 1)
    await closed_with_notice(first, "An administrator closed this connection")

    again = await connected(server.url, clients, user)  # accepted as usual, with a new sid
    assert again.sid != first.sid
    await still_connected(again)
    await marker(again)
    assert await users_on(http, user) == 1


# --- what is not an error, and what is refused ------------------------------------------------


async def test_an_unknown_user_or_sid_is_accepted_with_nothing_disconnected(server, http, clients):
    bystander = await connected(server.url, clients, uuid4())
    accepted(await delete(http, user_path(uuid4())), 0)
    accepted(await delete(http, sid_path("x" * 64), body={"message": "m"}), 0)
    await still_connected(bystander)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(sid_path("x" * 65), None, id="sid-too-long"),
        pytest.param(sid_path("a.b"), None, id="sid-dot"),
        pytest.param(sid_path("a%2Fb"), None, id="sid-encoded-slash"),
        pytest.param(sid_path("a/b"), None, id="sid-slash"),
        pytest.param(sid_path(""), None, id="sid-empty"),
        pytest.param(sid_path("a%20b"), None, id="sid-space"),
        pytest.param(user_path("not-a-uuid"), None, id="user-not-a-uuid"),
        pytest.param(user_path(uuid4()), {"message": "m", "reason": "x"}, id="unknown-field"),
        pytest.param(sid_path("abc"), {"msg": "m"}, id="unknown-field-sid"),
        pytest.param(user_path(uuid4()), {"message": ""}, id="empty-message"),
        pytest.param(user_path(uuid4()), {"message": "m" * 501}, id="long-message"),
        pytest.param(user_path(uuid4()), {"message": 5}, id="message-not-a-string"),
        pytest.param(user_path(uuid4()), ["message"], id="body-not-an-object"),
    ],
)
async def test_what_is_refused_is_a_422_in_json(server, http, clients, path, body):
    bystander = await connected(server.url, clients, uuid4())
    response = await delete(http, path, body=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    await still_connected(bystander)


# --- two instances sharing Redis ----------------------------------------------------------------


@pytest.fixture
async def instances(redis_url: str) -> AsyncIterator[list[ServerProcess]]:
    """Two server processes sharing Redis (a channel and key prefix of their own), both ready."""
    tags = {k: v for k, v in isolation().items() if k != "DATABASE_URL"}  # a database each: nothing is stored
    servers: list[ServerProcess] = []
    try:
        for _ in range(2):
            env = {
                "REDIS_URL": redis_url,
                "JWT_SECRET_KEY": TEST_SECRET,
                "LOG_FILE": "",
                "HOST": "127.0.0.1",
                "PORT": str(free_port()),
                **tags,
            }
            servers.append(await start_server_process([sys.executable, "apps/api/main.py"], env=env))
        for server in servers:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

                async def ready(http: httpx.AsyncClient = http) -> bool:
                    return (await http.get("/ready")).status_code == 200

                await eventually(ready, what="the instance subscribed to Redis")
        yield servers
    finally:
        for server in servers:
            await server.stop()
        await delete_prefix(redis_url, tags["REDIS_KEY_PREFIX"])


async def test_a_connection_on_another_instance_is_told_and_closed(instances, clients):
    one, two = instances
    user, other = uuid4(), uuid4()
    there = await connected(two.url, clients, user)
    there_too = await connected(two.url, clients, user)
    bystander = await connected(two.url, clients, other)
    bystander_here = await connected(one.url, clients, other)

    async with httpx.AsyncClient(base_url=one.url, timeout=10) as http:
        answer = accepted(await delete(http, user_path(user), body={"message": "cluster-wide"}), 0, cluster=True)
        assert answer["instance_id"] == (await http.get("/health")).json()["instance_id"]
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as http:
        assert answer["instance_id"] != (await http.get("/health")).json()["instance_id"]

    for client in (there, there_too):
        await closed_with_notice(client, "cluster-wide")
    await still_connected(bystander)
    await still_connected(bystander_here)


async def test_one_connection_on_another_instance_is_closed_by_its_sid(instances, clients):
    one, two = instances
    user = uuid4()
    goes, stays = await connected(two.url, clients, user), await connected(two.url, clients, user)
    stays_here = await connected(one.url, clients, user)
    assert goes.sid is not None

    async with httpx.AsyncClient(base_url=one.url, timeout=10) as http:
        accepted(await delete(http, sid_path(goes.sid), body={"message": "that one"}), 0, cluster=True)
    await closed_with_notice(goes, "that one")
    await still_connected(stays)
    await still_connected(stays_here)

    # and reconnecting to either instance is accepted as usual
    for server in (one, two):
        await still_connected(await connected(server.url, clients, user))
