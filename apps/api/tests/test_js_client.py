"""The card's JavaScript/TypeScript snippets, run verbatim under Node with the official
socket.io-client against the real server.

Each test starts a script from ``apps/api/tests/js/`` (the snippet pasted between ``BEGIN/END CARD
SNIPPET`` comments, with a small harness around it) as a subprocess of this event loop, so the
in-process server keeps serving while Node talks to it. The "Client Connection" snippet is pasted
once, in ``card_connection.mjs``: the scripts of the snippets that use its ``socket`` import it.
The script prints one JSON object per line: ``{"log": [...]}`` for whatever the snippet passed to
``console.log``, and harness reports. The test reads those lines, acts on the server (HTTP calls,
broadcasts) when the script says it is ready, and asserts on what the snippet logged. Every wait
is bounded.

The only changes made to the snippets: the card's URL ``"http://localhost:8000/ws"`` is the
identifier ``WS_URL`` (the test server's URL) and ``"your-jwt-token"`` is ``JWT_TOKEN`` (a token
made by the test). Even the project id the "Subscribe to Updates" snippet hard-codes is kept: the
test creates a project with that id. Absence of an event is proven with a marker event sent
afterwards to the same connection: Socket.IO keeps per-connection order.

Besides the snippets: the other ways a browser connects (long-polling only, token in the query
string or an Authorization header, the ``/ws/socket.io`` path, the refused default namespace) and
the card's ``websocat ws://localhost:8000/ws`` (a plain WebSocket speaking Engine.IO v4).

Needs ``npm ci`` at the repository root (package.json pins socket.io-client, react,
react-test-renderer and tsx); without ``node_modules`` these tests fail, they are not skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import jwt
import pytest
import websockets

from apps.api.events.broadcaster import get_broadcaster
from apps.api.stores import sql_projects as project_store_module
from apps.api.tests.support import REPO_ROOT, RunningServer, WsClient, make_token
from apps.api.tests.test_docs_run import doc_block

JS_DIR = REPO_ROOT / "apps" / "api" / "tests" / "js"
NODE_MODULES = REPO_ROOT / "node_modules"
#: The project id the card's "Subscribe to Updates" snippet hard-codes.
CARD_PROJECT_ID = UUID("550e8400-e29b-41d4-a716-446655440000")
STEP_TIMEOUT = 10.0
SCRIPT_TIMEOUT = 30.0
NAMESPACE = "/ws"

Message = dict[str, Any]


# --- running Node scripts --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, once ``npm ci`` has installed what the scripts import."""
    executable = shutil.which("node")
    if executable is None:
        pytest.fail("node is not on PATH: install Node.js 20+ to run the card's JavaScript snippets")
    missing = [
        name
        for name in ("socket.io-client", "react", "react-test-renderer", "tsx")
        if not (NODE_MODULES / name).is_dir()
    ]
    if missing:
        pytest.fail(
            f"node_modules is missing {', '.join(missing)}: run `npm ci` in {REPO_ROOT} "
            "(the repository root, where package.json and package-lock.json are)"
        )
    return executable


class NodeScript:
    """A running script: read its JSON lines one at a time, each read bounded."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.seen: list[Message] = []
        self.stderr: list[str] = []
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr.append(line.decode(errors="replace"))

    def _context(self) -> str:
        lines = "\n".join(json.dumps(m) for m in self.seen[-20:])
        return f"\n--- {self.name} stdout (last lines) ---\n{lines}\n--- stderr ---\n{''.join(self.stderr)[-4000:]}"

    async def _read(self) -> Message | None:
        assert self.process.stdout is not None
        raw = await self.process.stdout.readline()
        if not raw:
            return None
        text = raw.decode(errors="replace").strip()
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            message = {"raw": text}
        if not isinstance(message, dict):
            message = {"raw": message}
        self.seen.append(message)
        return message

    async def next(self, match: Callable[[Message], bool], what: str, timeout: float = STEP_TIMEOUT) -> Message:
        """The next line ``match`` accepts (lines before it are kept in ``seen``)."""

        async def find() -> Message:
            while (message := await self._read()) is not None:
                if "error" in message:
                    raise AssertionError(f"{self.name} failed: {message['error']}{self._context()}")
                if match(message):
                    return message
            await self._exited()
            raise AssertionError(f"{self.name} exited (code {self.process.returncode}) before {what}{self._context()}")

        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name}: no {what} within {timeout} s{self._context()}") from None

    async def report(self, key: str, timeout: float = STEP_TIMEOUT) -> Any:
        """The value of the next ``{key: value}`` harness report."""
        return (await self.next(lambda m: key in m, f'report "{key}"', timeout))[key]

    async def log(self, first: str, timeout: float = STEP_TIMEOUT) -> list[Any]:
        """The arguments of the next ``console.log(first, ...)`` of the snippet."""
        message = await self.next(lambda m: bool(m.get("log")) and m["log"][0] == first, f'log "{first}"', timeout)
        return message["log"]

    def logs(self, first: Any) -> list[list[Any]]:
        """Every ``console.log(first, ...)`` read so far."""
        return [m["log"] for m in self.seen if m.get("log") and m["log"][0] == first]

    async def _exited(self) -> None:
        await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT)
        await asyncio.wait_for(self._stderr_task, STEP_TIMEOUT)

    async def finish(self) -> list[Message]:
        """Read to the end; the script must have printed ``{"done": true}`` and exited 0."""
        await self.next(lambda m: m.get("done") is True, "the end of the script")
        await self._exited()
        assert self.process.returncode == 0, f"{self.name} exited with {self.process.returncode}{self._context()}"
        return self.seen

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task


@pytest.fixture
def run_js(node: str, server: RunningServer) -> Callable[..., contextlib.AbstractAsyncContextManager[NodeScript]]:
    """``async with run_js("script.mjs", JWT_TOKEN=..., ...) as js:``: the script runs against the
    test server; it is killed on the way out if it is still running."""

    @contextlib.asynccontextmanager
    async def start(script: str, **env: str) -> AsyncIterator[NodeScript]:
        path = JS_DIR / script
        assert path.is_file(), path
        loader = ["--import", "tsx"] if script.endswith((".ts", ".tsx")) else []
        full_env = {
            **os.environ,
            "WS_URL": server.ws_url,
            "SERVER_URL": server.url,
            "JS_STEP_TIMEOUT_MS": str(int((STEP_TIMEOUT - 2) * 1000)),  # Node's own error comes first
            "JS_SCRIPT_TIMEOUT_MS": str(int((SCRIPT_TIMEOUT - 2) * 1000)),
            "NODE_ENV": "development",
            **env,
        }
        full_env.pop("NODE_OPTIONS", None)
        process = await asyncio.create_subprocess_exec(
            node,
            *loader,
            str(path),
            cwd=REPO_ROOT,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        js = NodeScript(script, process)
        try:
            yield js
        finally:
            await js.kill()

    return start


# --- server-side helpers ---------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_project(http: httpx.AsyncClient, owner_token: str, *members: UUID) -> str:
    response = await http.post(
        "/api/v1/projects",
        json={"name": "AI Agent Framework"},
        headers=bearer(owner_token),
    )
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    for member in members:
        await add_member(http, owner_token, project_id, member)
    return project_id


async def add_member(http: httpx.AsyncClient, token: str, project_id: str | UUID, member: UUID) -> None:
    response = await http.post(
        f"/api/v1/projects/{project_id}/members", json={"user_id": str(member)}, headers=bearer(token)
    )
    assert response.status_code == 201, response.text


async def set_status(http: httpx.AsyncClient, token: str, project_id: str | UUID, status: str) -> None:
    """PUT a new status; the server broadcasts ``project.updated`` to ``project:<id>``."""
    response = await http.put(f"/api/v1/projects/{project_id}", json={"status": status}, headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed_fields"] == ["status"], body
    assert body["event_id"], body


async def send_marker(user: UUID) -> str:
    """A ``workflow.progress`` to ``user:<user>`` only: once a script has it, every event sent
    to that connection before it has arrived too."""
    workflow = uuid4()
    await get_broadcaster().broadcast_workflow_progress(
        workflow_id=workflow, status="running", progress=50, current_step="marker", total_steps=5, user_id=user
    )
    return str(workflow)


def app_state(server: RunningServer) -> Any:
    """``app.state`` of the FastAPI app (the Socket.IO server, connections)."""
    return server.app.state


def sio(server: RunningServer) -> Any:
    return app_state(server).sio


def connection(server: RunningServer, sid: str) -> Any:
    return app_state(server).connections.get(sid)


@pytest.fixture
def member_id() -> UUID:
    """The user the Node client connects as."""
    return uuid4()


@pytest.fixture
def member_token(member_id: UUID) -> str:
    return make_token(member_id)


@pytest.fixture
def owner_token() -> str:
    """Another user, who owns the test's projects and makes the changes (``project.updated`` also
    goes to ``user:<updated_by>``, so changes by the client's own user would prove nothing)."""
    return make_token(uuid4())


# --- "Client Connection (JavaScript)" --------------------------------------------------------


async def test_client_connection_snippet(run_js, server, member_id, member_token):
    async with run_js("client_connection.mjs", JWT_TOKEN=member_token) as js:
        logged = await js.log("Connected:")
        connected = await js.report("connected")
        connection_id = logged[1]
        assert isinstance(connection_id, str) and connection_id
        assert connection_id == connected["socket_id"]  # the id socket.io-client knows this connection by
        event = connected["event"]
        assert event["type"] == "connection_established"
        assert event["data"]["user_id"] == str(member_id)
        assert sorted(event["data"]["rooms"]) == sorted([f"user:{member_id}", "global"])
        assert connection(server, connection_id).principal.user_id == member_id

        await sio(server).disconnect(connection_id, namespace=NAMESPACE)
        assert await js.log("Disconnected") == ["Disconnected"]
        disconnected = await js.report("disconnected")
        assert disconnected == {"reason": "io server disconnect", "still_connected": False}
        await js.finish()
    assert len(js.logs("Connected:")) == 1


# --- "Subscribe to Updates" ------------------------------------------------------------------


@pytest.fixture
async def card_project(http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[UUID, str]]:
    """Project ``550e8400-...`` (the id the snippet hard-codes) and an admin who may change it.

    The project is created over HTTP, with the store's id generator pinned to the card's id for
    that one request, and deleted afterwards (unless it already existed)."""
    admin_id = uuid4()
    admin = make_token(admin_id, roles=("admin",))
    existing = await http.get(f"/api/v1/projects/{CARD_PROJECT_ID}", headers=bearer(admin))
    created = existing.status_code == 404
    if created:
        with monkeypatch.context() as patch:
            patch.setattr(project_store_module, "uuid4", lambda: CARD_PROJECT_ID)
            response = await http.post(
                "/api/v1/projects",
                json={"name": "AI Agent Framework", "repository_url": "https://github.com/user/ai-agent-framework"},
                headers=bearer(admin),
            )
        assert response.status_code == 201, response.text
        assert response.json()["id"] == str(CARD_PROJECT_ID), (
            "could not create the card's project 550e8400-...: the test pins apps.api.stores.sql_projects.uuid4"
        )
    else:
        assert existing.status_code == 200, existing.text
    yield admin_id, admin
    if created:
        response = await http.delete(f"/api/v1/projects/{CARD_PROJECT_ID}", headers=bearer(admin))
        assert response.status_code == 200, response.text


async def two_status_changes(http: httpx.AsyncClient, token: str, project_id: str | UUID) -> tuple[str, str]:
    """Two statuses that each change the project (its current status may be either)."""
    response = await http.get(f"/api/v1/projects/{project_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return ("active", "archived") if response.json()["status"] == "archived" else ("archived", "active")


async def test_subscribe_to_updates_snippet(run_js, http, card_project, member_id, member_token):
    admin_id, admin = card_project
    await add_member(http, admin, CARD_PROJECT_ID, member_id)
    first, second = await two_status_changes(http, admin, CARD_PROJECT_ID)
    room = f"project:{CARD_PROJECT_ID}"
    async with run_js("subscribe_updates.mjs", JWT_TOKEN=member_token) as js:
        ack = await js.report("subscribed")
        assert ack == {"status": "success", "room": room, "message": f"Subscribed to {room}"}

        await set_status(http, admin, CARD_PROJECT_ID, first)
        _, data = await js.log("Project updated:")
        assert data["project_id"] == str(CARD_PROJECT_ID)
        assert data["project_name"] == "AI Agent Framework"
        assert data["status"] == first
        assert data["updated_by"] == str(admin_id)
        assert data["changes"] == {"status": first, "fields": ["status"]}

        # The unsubscribe snippet ran: the room is gone, and a later change is not delivered.
        assert await js.report("rooms_after_unsubscribe") == sorted(["global", f"user:{member_id}"])
        await set_status(http, admin, CARD_PROJECT_ID, second)
        workflow = await send_marker(member_id)
        assert await js.report("marker") == {"workflow_id": workflow, "updates": 1}
        await js.finish()
    assert js.logs(ack) == [[ack]]  # console.log(response): the ack object itself, logged once
    assert len(js.logs("Project updated:")) == 1


# --- "React Hook Example" and "Unsubscribe on Cleanup" ---------------------------------------


async def test_react_hook_and_cleanup_snippets(run_js, http, member_id, member_token, owner_token):
    project_id = await create_project(http, owner_token, member_id)
    room = f"project:{project_id}"
    async with run_js("react_hook.tsx", JWT_TOKEN=member_token, PROJECT_ID=project_id) as js:
        ready = await js.report("ready")
        assert ready["hook_subscribe"] == [{"room": room}]  # emitted by the hook on "connect"
        assert ready["hook_rooms"] == sorted(["global", room, f"user:{member_id}"])
        assert ready["returned"] == [None]  # useState(null) before any update

        await set_status(http, owner_token, project_id, "archived")
        updated = await js.report("updated")
        project = updated["returned"][-1]
        assert updated["returned"] == [None, project]
        assert project == updated["event_data"]  # the hook returns event.data as it came
        assert project["project_id"] == project_id
        assert project["status"] == "archived"
        assert project["changes"]["fields"] == ["status"]

        # Unmounting ran both cleanups: the hook's socket.disconnect() and the card's
        # "Unsubscribe on Cleanup" effect on the other socket.
        unmounted = await js.report("unmounted")
        assert unmounted["hook_socket_connected"] is False
        assert unmounted["cleanup_unsubscribe"] == [[{"room": room}]]
        assert unmounted["cleanup_socket_rooms"] == sorted(["global", f"user:{member_id}"])
        await set_status(http, owner_token, project_id, "active")
        workflow = await send_marker(member_id)
        assert await js.report("marker") == {"workflow_id": workflow, "updates": 1}
        await js.finish()
    assert "Warning" not in "".join(js.stderr), js.stderr  # no React warnings (act, keys, ...)


# --- "Handle Connection Errors" --------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "reason"),
    [("expired", "expired"), ("bad_signature", "bad_signature"), ("malformed", "malformed"), ("empty", "missing")],
)
async def test_handle_connection_errors_snippet(run_js, member_id, case, reason):
    tokens = {
        "expired": make_token(member_id, ttl=-60),
        "bad_signature": make_token(member_id, secret="another-secret-0123456789abcdef0123456789"),
        "malformed": "not-a-jwt",
        "empty": "",
    }
    async with run_js("connection_errors.mjs", JWT_TOKEN=tokens[case]) as js:
        refused = await js.report("refused")
        await js.finish()
    error = refused["error"]
    content = error["data"]["content"]
    assert content["code"] == "AUTH_FAILED"
    assert content["reason"] == reason
    assert error["message"] == content["message"] and error["message"]  # human-readable text
    assert refused["initial_href"] != "/login"
    assert refused["href"] == "/login"  # the snippet redirected
    assert refused["connected"] is False
    assert refused["connected_logs"] == 0


# --- "Auto-Reconnect with Token Refresh" -----------------------------------------------------


async def test_auto_reconnect_with_token_refresh_snippet(run_js, member_id):
    expiring = make_token(member_id, ttl=2)
    expires_at = jwt.decode(expiring, options={"verify_signature": False})["exp"]
    refreshed = make_token(member_id, ttl=3600)
    async with run_js("auto_reconnect.mjs", JWT_TOKEN=expiring, REFRESH_TOKEN=refreshed) as js:
        first = await js.report("first")
        second = await js.report("second", timeout=STEP_TIMEOUT + 3)
        await js.finish()
    first_id = first["event"]["data"]["connection_id"]
    second_id = second["event"]["data"]["connection_id"]
    assert first_id == first["socket_id"]
    assert second_id == second["socket_id"]
    assert second_id != first_id  # a new connection
    assert second["event"]["data"]["user_id"] == str(member_id)
    # The second connection was made after the first token expired (the server refuses expired
    # tokens, leeway 0): the server accepted the refreshed one.
    assert datetime.fromisoformat(second["event"]["data"]["server_time"]).timestamp() >= expires_at
    assert second["disconnects"] == ["io server disconnect"]  # the server ended the expired connection
    assert second["refresh_calls"] == 1
    assert second["stored_token_is_refreshed"] is True
    assert second["auth_token_is_refreshed"] is True
    assert second["connected_logs"] == 2
    assert second["disconnected_logs"] == 1
    assert second["debug_rooms"]["status"] == "success"
    assert second["debug_rooms"]["connection_id"] == second_id
    assert second["debug_rooms"]["rooms"] == sorted(["global", f"user:{member_id}"])


async def test_the_guides_token_refresh_in_place(run_js, server, member_id):
    """The integration guide's token.expiring handler, in the official client: the connection takes
    the fresh token over and is still connected, in its rooms, after the old token expired (another
    connection with the old token was closed at that moment, told token_expired)."""
    expiring = make_token(member_id, ttl=4)  # the server warns 60 s ahead: at once
    agent = uuid4()
    control = await WsClient(server.url).connect(expiring)
    try:
        env = {
            "JWT_TOKEN": expiring,
            "REFRESH_TOKEN": make_token(member_id, ttl=3600),
            "GUIDE_SNIPPET": doc_block("test_the_guides_token_refresh_in_place"),
            "AGENT_ROOM": f"agent:{agent}",
            "MARKER_AGENT": str(agent),
        }
        async with run_js("refresh_in_place.mjs", **env) as js:
            first = await js.report("first")
            assert first["subscribed"]["status"] == "success"
            assert first["warning"]["data"]["seconds_left"] <= 4
            closing = await control.expect("connection.closing", timeout=10)
            assert closing["data"]["reason"] == "token_expired"
            # an event to the room the script joined, sent after the old token's expiry
            await get_broadcaster().broadcast_agent_connected(agent_id=agent, agent_name="after expiry")
            after = await js.report("after", timeout=STEP_TIMEOUT + 5)
            await js.finish()
    finally:
        await control.close()
    assert after["connected"] is True and after["connections"] == 1
    assert after["closings"] == [] and after["disconnects"] == []
    assert after["refresh_calls"] == 1 and after["stored"] is True and after["auth_token"] is True
    assert f"agent:{agent}" in after["rooms"]


# --- the docs' own blocks --------------------------------------------------------------------


async def test_the_readmes_connect_example(node, server, member_id, member_token):
    """README's "Try it" client, as an ES module under Node, with the token in ``TOKEN`` (README's
    command before it exports it). The one change: the test server's URL for localhost:8000."""
    code = doc_block("test_the_readmes_connect_example").replace("http://localhost:8000", server.url)
    env = {**os.environ, "TOKEN": member_token}
    env.pop("NODE_OPTIONS", None)
    process = await asyncio.create_subprocess_exec(
        node, "--input-type=module", "-e", code, cwd=REPO_ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), STEP_TIMEOUT)).decode()
        if line.startswith("Connected: "):  # the client still connected
            assert connection(server, line.split()[1]).principal.user_id == member_id
    finally:
        if process.returncode is None:
            process.kill()
        _, stderr = await asyncio.wait_for(process.communicate(), STEP_TIMEOUT)
    assert line.startswith("Connected: "), (line, stderr.decode()[-2000:])


async def run_doc_snippet(run_js: Callable[..., Any], test: str, logs: int, token: str) -> tuple[list[Any], str]:
    """What the block marked as run by ``test`` logged (``logs`` calls), run on a connected socket;
    and that socket's connection id."""
    env = {"JWT_TOKEN": token, "DOC_SNIPPET": doc_block(test), "DOC_LOGS": str(logs)}
    async with run_js("doc_snippet.mjs", **env) as js:
        logged = await js.report("snippet_logs")
        await js.finish()
    return logged, js.logs("Connected:")[0][1]


def assert_rooms_reply(reply: Message, connection_id: str, member_id: UUID) -> None:
    assert reply == {
        "status": "success",
        "connection_id": connection_id,
        "user_id": str(member_id),
        "rooms": sorted(["global", f"user:{member_id}"]),
    }


def assert_pong(reply: Message) -> None:
    assert set(reply) == {"status", "timestamp"} and reply["status"] == "pong", reply
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", reply["timestamp"]), reply  # as the doc shows


async def test_the_guides_debugging_snippet(run_js, member_id, member_token):
    logged, connection_id = await run_doc_snippet(run_js, "test_the_guides_debugging_snippet", 2, member_token)
    replies = {entry[0]["status"]: entry[0] for entry in logged}
    assert_rooms_reply(replies["success"], connection_id, member_id)
    assert_pong(replies["pong"])


async def test_the_apis_debug_rooms_example(run_js, member_id, member_token):
    [[reply]], connection_id = await run_doc_snippet(run_js, "test_the_apis_debug_rooms_example", 1, member_token)
    assert_rooms_reply(reply, connection_id, member_id)


async def test_the_apis_ping_example(run_js, member_token):
    [[reply]], _ = await run_doc_snippet(run_js, "test_the_apis_ping_example", 1, member_token)
    assert_pong(reply)


# --- "Listen for Multiple Events" ------------------------------------------------------------


async def test_listen_for_multiple_events_snippet(run_js, http, member_id, member_token, owner_token):
    project_id = await create_project(http, owner_token, member_id)
    agent_id = uuid4()
    workflow_id = uuid4()
    async with run_js(
        "multiple_events.mjs", JWT_TOKEN=member_token, PROJECT_ID=project_id, AGENT_ID=str(agent_id)
    ) as js:
        acks = await js.report("ready")
        assert [(a["status"], a["room"]) for a in acks] == [
            ("success", f"project:{project_id}"),
            ("success", f"agent:{agent_id}"),
        ]
        await set_status(http, owner_token, project_id, "archived")
        await get_broadcaster().broadcast_agent_status_changed(
            agent_id=agent_id, agent_name="GPT-4", status="online", availability=85
        )
        await get_broadcaster().broadcast_workflow_progress(
            workflow_id=workflow_id,
            status="running",
            progress=50,
            current_step="Step 2",
            total_steps=5,
            project_id=UUID(project_id),
        )
        await js.finish()
    logged = {entry[0]: entry[1] for entry in (m["log"] for m in js.seen if m.get("log")) if len(entry) == 2}
    project = logged["project.updated:"]
    assert project["type"] == "project.updated"
    assert project["data"]["project_id"] == project_id
    assert project["data"]["changes"]["fields"] == ["status"]
    agent = logged["agent.status_changed:"]
    assert agent["type"] == "agent.status_changed"
    assert agent["data"]["agent_id"] == str(agent_id)
    assert (agent["data"]["agent_name"], agent["data"]["status"], agent["data"]["availability"]) == (
        "GPT-4",
        "online",
        85,
    )
    progress = logged["workflow.progress:"]
    assert progress["type"] == "workflow.progress"
    assert progress["data"]["workflow_id"] == str(workflow_id)
    assert (progress["data"]["progress"], progress["data"]["current_step"], progress["data"]["total_steps"]) == (
        50,
        "Step 2",
        5,
    )
    for name in ("project.updated:", "agent.status_changed:", "workflow.progress:"):
        assert len(js.logs(name)) == 1, name


# --- other ways a browser connects (not card snippets) -----------------------------------------


@pytest.mark.parametrize(
    ("mode", "transport"),
    [("polling", "polling"), ("query", "websocket"), ("path", "websocket"), ("header", "websocket")],
)
async def test_connect_options(run_js, member_id, member_token, mode, transport):
    """Long-polling only; the token in the query string or an Authorization header; the
    ``/ws/socket.io`` path alias: each connects, answers, and receives broadcasts."""
    async with run_js("connect_options.mjs", JWT_TOKEN=member_token, MODE=mode) as js:
        ready = await js.report("ready")
        event = ready["event"]
        assert event["type"] == "connection_established"
        assert event["data"]["user_id"] == str(member_id)
        assert event["data"]["connection_id"] == ready["socket_id"]
        assert ready["debug_rooms"]["rooms"] == sorted(["global", f"user:{member_id}"])
        assert ready["pong"] == ready["binary_pong"] == "pong"
        assert ready["transport"] == transport
        assert ready["upgrades"] == ([] if transport == "polling" else ["websocket"])
        workflow = await send_marker(member_id)
        received = await js.report("received")
        await js.finish()
    assert received["event"]["type"] == "workflow.progress"
    assert received["event"]["data"]["workflow_id"] == workflow
    # Default options upgrade to WebSocket once connected; polling-only stays on polling.
    assert received["transport"] == transport


async def test_default_namespace_is_refused_with_invalid_namespace(run_js, member_token):
    async with run_js("connect_options.mjs", JWT_TOKEN=member_token, MODE="default_namespace") as js:
        refused = await js.report("refused")
        await js.finish()
    content = refused["error"]["data"]["content"]
    assert content["code"] == "INVALID_NAMESPACE"
    assert "/ws" in content["message"]
    assert refused["error"]["message"] == content["message"]
    assert refused["connected"] is False


# --- "Test with websocat": a plain WebSocket to /ws --------------------------------------------


async def test_websocat_plain_websocket_speaks_engineio_v4(server, member_id, member_token):
    """``websocat ws://localhost:8000/ws``: Engine.IO v4 frames; a client that types the
    Socket.IO packets by hand connects to /ws, gets its welcome and can ping."""

    async def frame(ws: Any) -> str:
        while True:
            text = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
            if text != "2":  # Engine.IO ping: answer it and read on
                return str(text)
            await ws.send("3")

    url = server.url.replace("http://", "ws://", 1) + NAMESPACE
    async with websockets.connect(url, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT) as ws:
        opened = await frame(ws)
        assert opened.startswith("0{"), opened  # Engine.IO OPEN
        handshake = json.loads(opened[1:])
        assert handshake["sid"] and handshake["upgrades"] == [] and handshake["pingInterval"] > 0

        await ws.send("40/ws," + json.dumps({"token": member_token}))  # Socket.IO CONNECT to /ws
        connected = await frame(ws)
        assert connected.startswith("40/ws,"), connected
        sid = json.loads(connected[len("40/ws,") :])["sid"]

        welcome = await frame(ws)
        assert welcome.startswith("42/ws,"), welcome  # Socket.IO EVENT
        name, event = json.loads(welcome[len("42/ws,") :])
        assert name == "connection_established"
        assert event["data"]["connection_id"] == sid
        assert event["data"]["user_id"] == str(member_id)

        await ws.send('42/ws,7["ping",{}]')  # EVENT with ack id 7
        ack = await frame(ws)
        assert ack.startswith("43/ws,7["), ack  # ACK 7
        assert json.loads(ack[len("43/ws,7") :])[0]["status"] == "pong"


async def test_websocat_without_token_is_refused(server):
    url = server.url.replace("http://", "ws://", 1) + NAMESPACE
    async with websockets.connect(url, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT) as ws:
        opened = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
        assert str(opened).startswith("0{")
        await ws.send("40/ws,")
        refused = str(await asyncio.wait_for(ws.recv(), STEP_TIMEOUT))
    assert refused.startswith("44/ws,"), refused  # Socket.IO CONNECT_ERROR
    error = json.loads(refused[len("44/ws,") :])
    assert error["data"]["content"]["code"] == "AUTH_FAILED"
    assert error["data"]["content"]["reason"] == "missing"
