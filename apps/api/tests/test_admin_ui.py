"""The Socket.IO Admin UI on the real app (apps/api/admin_ui.py, WEBSOCKET_API.md "Admin UI"): off
by default, behind its username and password, reporting /ws connections without their tokens,
read-only unless ADMIN_UI_READ_ONLY=false, and refused by Settings without a usable password.
(The instrumentation itself is tested in apps/transport/tests/test_admin.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import uuid4

import httpx
import pytest
import socketio
from pydantic import ValidationError

from apps.api.app import create_app
from apps.api.settings_errors import describe
from apps.api.tests.redis_support import isolation
from apps.api.tests.support import (
    NAMESPACE,
    TIMEOUT,
    RunningServer,
    WsClient,
    make_token,
    register_secret,
    serve_in_process,
)
from apps.api.tests.support import (
    test_settings as settings_for,
)

ADMIN = "/admin"
PASSWORD = register_secret(f"admin-ui-{uuid4().hex}")  # the session's log check looks for it too
CREDENTIALS = {"username": "ops", "password": PASSWORD}
ENABLED = {
    "admin_ui_enabled": True,
    "admin_ui_username": "ops",
    "admin_ui_password": PASSWORD,
    "admin_ui_stats_interval_seconds": 0.1,
}


class AdminRefused(Exception):
    def __init__(self, data: Any) -> None:
        self.data = data
        super().__init__(repr(data))


class AdminClient:
    """A python-socketio client on ``/admin``, as the Admin UI connects, queueing what it is sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, asyncio.Queue[tuple[Any, ...]]] = defaultdict(asyncio.Queue)
        self.connect_error: Any = None
        self.sio.on("*", self._record, namespace=ADMIN)
        self.sio.on("connect_error", self._on_connect_error, namespace=ADMIN)

    async def _record(self, event: str, *args: Any) -> None:
        self.events[event].put_nowait(args)

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data

    async def connect(self, auth: Any, headers: dict[str, str] | None = None) -> AdminClient:
        try:
            await self.sio.connect(
                self.url,
                namespaces=[ADMIN],
                auth=auth,
                headers=headers or {},
                transports=["websocket"],
                wait_timeout=TIMEOUT,
            )
        except socketio.exceptions.ConnectionError as exc:
            raise AdminRefused(self.connect_error) from exc
        return self

    async def expect(self, event: str, where: Callable[[tuple[Any, ...]], bool] = lambda args: True) -> Any:
        """The next ``event`` whose arguments satisfy ``where`` (earlier ones are passed over)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                args = await self.events[event].get()
                if where(args):
                    return args

    async def command(self, event: str, *args: Any) -> None:
        """Send an Admin UI command and wait until the server has taken it: the instrumentation
        reports every event it receives, the admin's own too, before it handles it (on this
        connection, in order), and nothing handles a command the server does not offer."""
        await self.sio.emit(event, args, namespace=ADMIN)
        sid = self.sio.get_sid(ADMIN)
        await self.expect("event_received", lambda got: got[0] == ADMIN and got[1] == sid and got[2][0] == event)

    def received(self, event: str) -> list[tuple[Any, ...]]:
        """What is queued for ``event`` now, without waiting."""
        queue = self.events[event]
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


@contextlib.asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[RunningServer]:
    """The app under a real uvicorn, past its start-up (serve_in_process yields before it)."""
    async with serve_in_process(create_app(settings_for(**overrides))) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
        yield server


@contextlib.asynccontextmanager
async def clients(server: RunningServer) -> AsyncIterator[Callable[..., Any]]:
    """``await new(kind, ...)`` makes a connected AdminClient or WsClient; all closed afterwards."""
    made: list[AdminClient | WsClient] = []

    async def new(kind: type[AdminClient] | type[WsClient], *args: Any, **kwargs: Any) -> Any:
        client = kind(server.url)
        made.append(client)
        return await client.connect(*args, **kwargs)

    try:
        yield new
    finally:
        for client in made:
            await client.close()


# --- off unless ADMIN_UI_ENABLED -------------------------------------------------------------


async def test_the_admin_namespace_is_refused_by_default():
    async with running() as server, clients(server) as new:
        with pytest.raises(AdminRefused) as refused:
            await new(AdminClient, CREDENTIALS)
        assert refused.value.data["data"]["content"]["code"] == "INVALID_NAMESPACE"  # as any unknown namespace
        # the service itself is unaffected
        ws = await new(WsClient, make_token())
        assert ws.sid is not None


# --- its credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {"username": "ops", "password": PASSWORD + "x"},
        {"username": "ops", "password": PASSWORD[:-1]},
        {"username": "admin", "password": PASSWORD},
        {"username": "ops"},
        {"username": "ops", "password": None},
        {"password": PASSWORD},
        f"ops:{PASSWORD}",
        ["ops", PASSWORD],
        None,
    ],
    ids=[
        "wrong-password",
        "password-prefix",
        "wrong-username",
        "no-password",
        "password-null",
        "no-username",
        "auth-string",
        "auth-list",
        "no-auth",
    ],
)
async def test_wrong_credentials_are_refused(auth: Any):
    async with running(**ENABLED) as server, clients(server) as new:
        with pytest.raises(AdminRefused) as refused:
            await new(AdminClient, auth)
        if isinstance(auth, dict) or auth is None:  # (the client sends no auth as {})
            assert refused.value.data == {"message": "authentication failed"}
        else:  # not an object: a malformed CONNECT, the connection is closed (apps/transport/server.py)
            assert refused.value.data is None
        admin = await new(AdminClient, CREDENTIALS)  # the right ones still work
        await admin.expect("server_stats")


async def test_the_right_credentials_get_the_servers_stats_and_the_ws_connections_without_tokens():
    async with running(**ENABLED) as server, clients(server) as new:
        admin = await new(AdminClient, CREDENTIALS)
        [config] = await admin.expect("config")
        assert "ALL_EVENTS" in config["supportedFeatures"]  # ENVIRONMENT=test: ADMIN_UI_MODE development
        [stats] = await admin.expect("server_stats")
        assert isinstance(stats["clientsCount"], int)
        assert any(entry["name"] == NAMESPACE for entry in stats["namespaces"])

        token = make_token()
        ws = await new(
            WsClient,
            auth={"token": token},
            headers={"Authorization": f"Bearer {token}"},
            query=f"token={token}&access_token={token}&client=test",
        )
        [socket, _] = await admin.expect("socket_connected", lambda args: args[0]["id"] == ws.sid)
        assert socket["nsp"] == NAMESPACE
        handshake = socket["handshake"]
        assert handshake["headers"]["authorization"] == "[redacted]"
        assert handshake["query"]["token"] == "[redacted]"
        assert handshake["query"]["access_token"] == "[redacted]"
        assert handshake["query"]["client"] == "test"
        assert "auth" not in handshake  # the CONNECT packet's auth ({"token": ...}) is never reported
        shown = json.dumps(socket)
        assert token not in shown
        assert all(part not in shown for part in token.split("."))


async def test_the_hosted_ui_connects_only_from_an_origin_cors_origins_lists():
    hosted = {"Origin": "https://admin.socket.io"}
    async with running(**ENABLED, cors_origins=["http://localhost:3000"]) as server, clients(server) as new:
        with pytest.raises(AdminRefused):
            await new(AdminClient, CREDENTIALS, headers=hosted)
    origins = ["http://localhost:3000", "https://admin.socket.io"]
    async with running(**ENABLED, cors_origins=origins) as server, clients(server) as new:
        admin = await new(AdminClient, CREDENTIALS, headers=hosted)
        await admin.expect("server_stats")


# --- read-only unless ADMIN_UI_READ_ONLY=false ---------------------------------------------------


async def _send_commands(admin: AdminClient, sid: str) -> None:
    """Put connection ``sid`` of /ws in a room, send it an event and disconnect it, as the Admin UI's
    buttons do (python-socketio's socketio/async_admin.py: ``join``, ``emit``, ``_disconnect``),
    then one more event: the admin's events are handled one after the other, so once that one is
    reported, whatever the commands did is done."""
    await admin.command("join", NAMESPACE, "admin-room", sid)
    await admin.command("emit", NAMESPACE, sid, "admin.says", {"hello": "from the admin UI"})
    await admin.command("_disconnect", NAMESPACE, True, sid)
    await admin.command("after-the-commands")


async def _rooms(server: RunningServer) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {make_token(roles=['admin'])}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get("/api/v1/websocket/stats", headers=headers)
    assert response.status_code == 200, response.text
    rooms: dict[str, int] = response.json()["rooms"]
    return rooms


async def test_read_only_by_default_commands_have_no_effect():
    async with running(**ENABLED) as server, clients(server) as new:
        admin = await new(AdminClient, CREDENTIALS)
        [config] = await admin.expect("config")
        assert not {"EMIT", "JOIN", "LEAVE", "DISCONNECT"} & set(config["supportedFeatures"])
        ws = await new(WsClient, make_token())
        await admin.expect("socket_connected", lambda args: args[0]["id"] == ws.sid)

        assert ws.sid is not None
        await _send_commands(admin, ws.sid)

        # still connected and answering (after anything the commands would have sent it), sent
        # nothing, in no new room
        room = f"agent:{uuid4()}"
        assert (await ws.call("subscribe", {"room": room}))["status"] == "success"
        assert ws.received("admin.says") == []
        assert ws.sio.connected and not ws.disconnected.is_set()
        rooms = await _rooms(server)
        assert rooms.get(room) == 1 and "admin-room" not in rooms
        assert [args for args in admin.received("room_joined") if args[1] == "admin-room"] == []


async def test_with_read_only_off_the_same_commands_act():
    async with running(**ENABLED, admin_ui_read_only=False) as server, clients(server) as new:
        admin = await new(AdminClient, CREDENTIALS)
        [config] = await admin.expect("config")
        assert {"EMIT", "JOIN", "DISCONNECT"} <= set(config["supportedFeatures"])
        ws = await new(WsClient, make_token())
        sid = ws.sid
        assert sid is not None
        await admin.expect("socket_connected", lambda args: args[0]["id"] == sid)

        await _send_commands(admin, sid)

        await admin.expect("room_joined", lambda args: args[1] == "admin-room" and args[2] == sid)
        assert await ws.expect("admin.says") == {"hello": "from the admin UI"}
        async with asyncio.timeout(TIMEOUT):
            await ws.disconnected.wait()
        await admin.expect("socket_disconnected", lambda args: args[1] == sid)


# --- several instances (REDIS_URL) ------------------------------------------------------------


async def test_with_redis_an_admin_hears_every_instance_but_its_commands_mostly_act_on_its_own(redis_url: str):
    """What WEBSOCKET_API.md says of several instances: each reports itself (its own server_stats)
    to every admin, through Redis; join, leave and disconnect act on the connections of the
    instance the admin is connected to, emit reaches a connection wherever it is."""
    tags = {name.lower(): value for name, value in isolation().items()}
    shared = {**ENABLED, "admin_ui_read_only": False, "redis_url": redis_url, **tags}
    async with running(**shared) as one, running(**shared) as other:
        async with clients(one) as new_here, clients(other) as new_there:
            admin = await new_here(AdminClient, CREDENTIALS)
            ws = await new_there(WsClient, make_token())
            sid = ws.sid
            assert sid is not None
            await admin.expect("socket_connected", lambda args: args[0]["id"] == sid)  # through Redis
            servers: set[str] = set()
            async with asyncio.timeout(TIMEOUT):
                while len(servers) < 2:
                    [stats] = await admin.expect("server_stats")
                    servers.add(stats["serverId"])
                    assert stats["clientsCount"] == 1  # each instance its own: the admin, or the /ws client

            await _send_commands(admin, sid)

            assert await ws.expect("admin.says") == {"hello": "from the admin UI"}
            assert (await ws.call("subscribe", {"room": "global"}))["status"] == "success"
            assert ws.sio.connected and not ws.disconnected.is_set()
            assert [args for args in admin.received("room_joined") if args[1] == "admin-room"] == []


# --- refused by Settings without a usable password -------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"admin_ui_enabled": True}, "ADMIN_UI_PASSWORD is not set"),
        ({"admin_ui_enabled": True, "admin_ui_password": "   "}, "ADMIN_UI_PASSWORD is not set"),
        ({"admin_ui_enabled": True, "admin_ui_username": " ", "admin_ui_password": PASSWORD}, "ADMIN_UI_USERNAME"),
        (
            {"environment": "production", "admin_ui_enabled": True, "admin_ui_password": "short-pw-9"},
            "ADMIN_UI_PASSWORD is shorter than 16 characters",
        ),
        (
            {
                "environment": "production",
                "admin_ui_enabled": True,
                "admin_ui_username": "ops-user-0123456789",
                "admin_ui_password": "ops-user-0123456789",
            },
            "ADMIN_UI_PASSWORD is shorter than 16 characters or the username",
        ),
    ],
    ids=["no-password", "blank-password", "blank-username", "short-in-production", "username-in-production"],
)
def test_settings_refuse_the_admin_ui_without_a_usable_password(overrides: dict[str, Any], message: str):
    with pytest.raises(ValidationError) as info:
        settings_for(**overrides)
    messages = [str(error["msg"]) for error in info.value.errors()]
    assert any(message in text for text in messages), messages
    lines = describe(info.value)  # what start-up prints (apps/api/settings_errors.py)
    assert len(lines) == 1 and lines[0].startswith("invalid setting ADMIN_UI_"), lines
    password = overrides.get("admin_ui_password", "").strip()
    if password:
        assert all(password not in text for text in messages)
        assert password not in lines[0]


def test_a_short_password_is_accepted_outside_production_and_a_long_one_in_production():
    assert settings_for(admin_ui_enabled=True, admin_ui_password="pw").admin_ui_enabled
    production = settings_for(environment="production", admin_ui_enabled=True, admin_ui_password="p" * 16)
    assert production.admin_ui_reporting == "production"
    assert settings_for().admin_ui_enabled is False
