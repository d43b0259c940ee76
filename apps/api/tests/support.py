"""Test helpers: tokens, a real in-process uvicorn server, server subprocesses, and a Socket.IO
client that records what it receives. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import jwt
import pytest
import socketio
import uvicorn

from apps.api.config import Settings
from apps.api.events.broadcaster import get_broadcaster
from apps.api.logging_setup import JsonFormatter, redact
from apps.api.serving import uvicorn_options
from apps.transport.tests.support import bound_socket

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_SECRET = "test-secret-" + "0123456789abcdef" * 4
NAMESPACE = "/ws"
TIMEOUT = 5.0
#: Each test app gets a SQLite file of its own in here (unless it names a DATABASE_URL).
DATABASE_DIR = Path(tempfile.mkdtemp(prefix="event-service-tests-"))


def sqlite_url() -> str:
    """A new, empty SQLite database for one app."""
    return f"sqlite+aiosqlite:///{DATABASE_DIR / uuid4().hex}.db"


#: The suites that also run on plain python-socketio (``WEBSOCKET_TRANSPORT=stock``, see the
#: Makefile) mark what only the service's transport does with :func:`stock_differs`.
STOCK = os.environ.get("WEBSOCKET_TRANSPORT") == "stock"

#: What plain python-socketio / python-engineio on uvicorn's own protocols get wrong that the
#: service's transport gets right; each is listed in apps/transport/README.md (a test checks).
STOCK_DIFFERENCES = {
    "malformed": "a malformed packet is logged with a traceback and the connection is kept",
    "reserved": "a client event named connect, disconnect, ... runs the server's own handler",
    "connect-timeout": "a connection that never joins a namespace is kept as long as it answers pings",
    "slow-client": "a client that leaves more than WEBSOCKET_MAX_BUFFER_BYTES unread is never dropped",
    "pending-poll": "closing a long-polling session leaves its pending GET open until it times out",
    "remote-addr": "every connection's REMOTE_ADDR is 127.0.0.1, whoever the client is",
}


def stock_differs(key: str) -> pytest.MarkDecorator:
    """Under ``WEBSOCKET_TRANSPORT=stock`` the test must fail (a strict xfail), for the listed reason."""
    return pytest.mark.xfail(STOCK, reason=f"stock python-socketio: {STOCK_DIFFERENCES[key]}", strict=True)


def make_token(
    user_id: UUID | str | None = None,
    *,
    roles: Sequence[str] = (),
    ttl: float = 3600,
    secret: str = TEST_SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"sub": str(user_id or uuid4()), "exp": int(time.time() + ttl), "iat": int(time.time())}
    if roles:
        payload["roles"] = list(roles)
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    token = jwt.encode(payload, secret, algorithm=algorithm)
    ISSUED_TOKENS.add(token)  # no log line may ever show it (apps/api/conftest.py checks)
    register_secret(secret)
    return token


#: HTTP rate limits no test meets, for every app and server process a test starts unless it sets
#: its own (test_http_limits does): tests send bursts from one address and one user.
HIGH_HTTP_LIMITS = {
    "HTTP_RATE_LIMIT_PER_USER": "1000000/second",
    "HTTP_RATE_LIMIT_PER_SERVICE": "1000000/second",
    "HTTP_RATE_LIMIT_PER_ADDRESS": "1000000/second",
}
for _name, _value in HIGH_HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)  # server processes inherit the environment


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "jwt_secret_key": TEST_SECRET,
        "jwt_leeway_seconds": 0,
        "log_file": None,
        "log_level": "INFO",
        "redis_url": None,
        "max_rooms_per_connection": 10,
        "connect_timeout_seconds": 3,
        "database_url": sqlite_url(),
        # the WebSocket and JavaScript-client suites also run on plain python-socketio (Makefile)
        "websocket_transport": os.environ.get("WEBSOCKET_TRANSPORT", "service"),
        # tests send bursts no caller would: the HTTP rate limits are tested on their own (test_http_limits)
        **{name.lower(): value for name, value in HIGH_HTTP_LIMITS.items()},
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningServer:
    url: str
    port: int
    app: Any

    @property
    def ws_url(self) -> str:
        return f"{self.url}{NAMESPACE}"


@contextlib.asynccontextmanager
async def serve_in_process(app: Any) -> AsyncIterator[RunningServer]:
    """Run ``app`` under a real uvicorn on a free port in this event loop. The socket is bound and
    listening before the server starts, so clients can connect at once."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    options = {**uvicorn_options(test_settings()), "timeout_graceful_shutdown": 2}  # as apps/api/main.py runs it
    for bound_elsewhere in ("host", "port"):
        options.pop(bound_elsewhere)
    config = uvicorn.Config(app, lifespan="on", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield RunningServer(url=f"http://127.0.0.1:{port}", port=port, app=app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def free_port() -> int:
    with contextlib.closing(bound_socket()) as sock:
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    process: asyncio.subprocess.Process
    url: str
    output: list[str]
    reader: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Stop the server; afterwards ``output`` holds everything it printed."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)


async def start_server_process(
    args: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path = REPO_ROOT,
    ready: str = "Uvicorn running on",
    ready_count: int = 1,
) -> ServerProcess:
    """Start the service as a child process and wait (bounded) until its log has said ``ready``
    ``ready_count`` times. Its output is read all along (a full pipe would block the server).
    It gets a new SQLite database unless ``env`` names a ``DATABASE_URL``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "DATABASE_URL": sqlite_url(), **env}
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output: list[str] = []
    SERVER_OUTPUTS.append(output)  # checked for tokens and secrets at the end of the session
    is_ready = asyncio.Event()

    async def read() -> None:
        assert process.stdout is not None
        seen = 0
        while line := await process.stdout.readline():
            output.append(line.decode(errors="replace"))
            if ready in output[-1]:
                seen += 1
                if seen == ready_count:
                    is_ready.set()

    server = ServerProcess(process, "", output, asyncio.create_task(read()))
    waiting = asyncio.create_task(is_ready.wait())
    try:
        await asyncio.wait_for(asyncio.wait({waiting, server.reader}, return_when=asyncio.FIRST_COMPLETED), 20)
        if not is_ready.is_set():
            raise AssertionError("server exited before it was ready:\n" + "".join(output))
    except BaseException:
        waiting.cancel()
        await server.stop()
        raise
    server.url = f"http://127.0.0.1:{env.get('PORT', '8000')}"
    return server


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


class ConnectRefused(Exception):
    def __init__(self, data: Any) -> None:
        self.data = data
        super().__init__(repr(data))


class WsClient:
    """A python-socketio ``AsyncClient`` on namespace ``/ws`` that queues every event it receives."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self.connect_error: Any = None
        self.disconnected = asyncio.Event()
        self.sio.on("*", self._record, namespace=NAMESPACE)
        self.sio.on("connect_error", self._on_connect_error, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)

    async def _record(self, event: str, *args: Any) -> None:
        self.events[event].put_nowait(args[0] if len(args) == 1 else args)

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnected.set()

    async def connect(
        self,
        token: str | None = None,
        *,
        transports: Sequence[str] = ("websocket",),
        headers: dict[str, str] | None = None,
        query: str = "",
        auth: Any = None,
    ) -> WsClient:
        if auth is None and token is not None:
            auth = {"token": token}
        url = self.server_url + (f"?{query}" if query else "")
        try:
            await self.sio.connect(
                url,
                namespaces=[NAMESPACE],
                auth=auth,
                headers=headers or {},
                transports=list(transports),
                wait_timeout=TIMEOUT,
            )
        except socketio.exceptions.ConnectionError as exc:
            raise ConnectRefused(self.connect_error) from exc
        return self

    async def expect(self, event: str, timeout: float = TIMEOUT) -> Any:
        return await asyncio.wait_for(self.events[event].get(), timeout)

    def received(self, event: str) -> list[Any]:
        """What is queued for ``event`` now, without waiting."""
        queue = self.events[event]
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def call(self, event: str, data: Any = None, timeout: float = TIMEOUT) -> Any:
        return await self.sio.call(event, data, namespace=NAMESPACE, timeout=timeout)

    async def emit(self, event: str, data: Any = None) -> None:
        await self.sio.emit(event, data, namespace=NAMESPACE)

    @property
    def sid(self) -> str | None:
        return self.sio.get_sid(NAMESPACE)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def create_project(
    http: httpx.AsyncClient, token: str, name: str = "AI Agent Framework", repository_url: str | None = None
) -> str:
    """A project owned by ``token``'s user; linked to ``repository_url`` by an admin when given."""
    response = await http.post("/api/v1/projects", json={"name": name}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    if repository_url is not None:
        await link_repository(http, project_id, repository_url)
    return project_id


async def link_repository(http: httpx.AsyncClient, project_id: str, repository_url: str | None) -> dict[str, Any]:
    """Link (or unlink) a project's repository as an admin, the only role that may."""
    response = await http.put(
        f"/api/v1/projects/{project_id}",
        json={"repository_url": repository_url},
        headers={"Authorization": f"Bearer {make_token(roles=['admin'])}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["project"]["repository_url"] == repository_url
    body: dict[str, Any] = response.json()
    return body


async def marker(*clients: WsClient) -> None:
    """Send one agent event every given client is subscribed to, and wait until each has it."""
    agent = uuid4()
    for client in clients:
        assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
    await get_broadcaster().broadcast_agent_connected(agent_id=agent, agent_name="marker")
    for client in clients:
        event = await client.expect("agent.connected")
        assert event["data"]["agent_id"] == str(agent)


async def eventually(check: Any, *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``await check()`` until it returns something truthy, for at most ``timeout`` seconds.
    For state that changes outside the test's control (a server noticing Redis is back)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s (last: {result!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def raw_subscriber(
    server: RunningServer, http: httpx.AsyncClient, token: str, room: str, *, members: int = 1
) -> AsyncIterator[Any]:
    """A plain WebSocket client (``websockets``) speaking Engine.IO by hand, connected to ``/ws``
    and subscribed to ``room``; it reads nothing more unless the test does. Returns once the
    server's stats show ``members`` connections in the room."""
    import json

    import websockets

    url = f"ws://127.0.0.1:{server.port}/ws"
    async with websockets.connect(url, max_queue=1, max_size=None, close_timeout=0.1) as raw:
        await asyncio.wait_for(raw.recv(), TIMEOUT)  # Engine.IO handshake
        await raw.send("40/ws," + json.dumps({"token": token}))
        assert (await asyncio.wait_for(raw.recv(), TIMEOUT)).startswith("40/ws,")
        await raw.send(f'42/ws,1["subscribe",{{"room":"{room}"}}]')
        admin = {"Authorization": f"Bearer {make_token(roles=['admin'])}"}

        async def joined() -> bool:
            stats = (await http.get("/api/v1/websocket/stats", headers=admin)).json()
            return bool(stats["rooms"].get(room) == members)

        await eventually(joined, what=f"{members} connection(s) in {room}")
        yield raw


# --- no token or secret in any log ------------------------------------------------------------
# apps/api/conftest.py captures every log record of the test session (LogCapture on the root
# logger) and, at its end, fails if any of them, or anything a server process started with
# start_server_process printed, shows a token make_token made or a registered secret.

#: Every token make_token made in this session.
ISSUED_TOKENS: set[str] = set()
#: Secrets no log may show: TEST_SECRET, every secret make_token signed with, and those tests register.
SECRETS: set[str] = set()
#: The output of every server process started in this session (each ServerProcess.output).
SERVER_OUTPUTS: list[list[str]] = []


def register_secret(secret: str) -> str:
    """Have the session's log check look for ``secret`` too; returns it. Placeholder-like values
    (short ones, one character repeated, the published development default) are left out: they
    could appear in a log for other reasons, and protect nothing."""
    from apps.api.config import DEFAULT_JWT_SECRET

    if len(secret) >= 8 and len(set(secret)) >= 4 and secret != DEFAULT_JWT_SECRET:
        SECRETS.add(secret)
    return secret


register_secret(TEST_SECRET)

#: Runs of base64url characters: a JWT's segments, each a run of its own between its dots.
_BASE64URL_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")


class LogCapture(logging.Handler):
    """Keeps each record as ``LOG_FORMAT=json`` would write it (message, context, traceback) after
    the service's token redaction, which its handlers apply too; the record itself is not changed."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[str] = []
        self._formatter = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            copy = logging.makeLogRecord(vars(record))
            copy.msg, copy.args = redact(record.getMessage()), ()
            self.lines.append(self._formatter.format(copy))
        except Exception:
            self.handleError(record)


def leaked_secrets(texts: Iterable[str]) -> list[str]:
    """The texts that show a token of ISSUED_TOKENS (its payload or signature is enough) or one of
    SECRETS. Tokens are found by their base64url runs, looked up in a set: fast for any number."""
    pieces = {part for token in ISSUED_TOKENS for part in token.split(".")[1:] if len(part) >= 16}
    secrets = sorted(SECRETS)
    found = []
    for text in texts:
        if any(run in pieces for run in _BASE64URL_RUN.findall(text)) or any(s in text for s in secrets):
            found.append(text)
    return found
