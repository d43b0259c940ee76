"""The app ``create_app()`` returns is a FastAPI app users extend, and a broadcaster in a process
that serves no clients releases what it opened."""

from __future__ import annotations

import asyncio
import os
import sys
from uuid import UUID, uuid4

import httpx
from fastapi import FastAPI

from apps.api.app import create_app
from apps.api.tests.redis_support import isolation
from apps.api.tests.support import REPO_ROOT, TEST_SECRET, WsClient, free_port, make_token, start_server_process
from apps.api.tests.test_redis_fanout import server_env

CARD_USER = UUID("660e8400-e29b-41d4-a716-446655440001")  # the snippet's updated_by


def test_create_app_returns_a_fastapi_app_with_socketio_mounted():
    from apps.transport import SocketIOMiddleware

    app = create_app()
    assert isinstance(app, FastAPI)
    assert {"/health", "/api/v1/projects"} <= set(app.openapi()["paths"])
    assert [m.kwargs["server"] for m in app.user_middleware if m.cls is SocketIOMiddleware] == [app.state.sio]


async def test_the_cards_fastapi_snippet_runs_in_a_router_a_user_adds():
    port = free_port()
    env = {
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "REDIS_URL": "",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'apps' / 'api'}",  # the card's `events.` imports
    }
    args = [sys.executable, "-m", "uvicorn", "apps.api.tests.examples.user_routes:app", "--port", str(port)]
    server = await start_server_process(args, env=env)
    client = WsClient(f"http://127.0.0.1:{port}")
    try:
        token = make_token(CARD_USER)
        await client.connect(token)
        await client.expect("connection_established")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            # project.updated goes to the project's room: a member subscribes to it
            created = await http.post(
                "/api/v1/projects", json={"name": "P"}, headers={"Authorization": f"Bearer {token}"}
            )
            project = created.json()["id"]
            assert (await client.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
            response = await http.put(f"/projects/{project}")
            assert (response.status_code, response.json()) == (200, {"success": True})
            assert (await http.get("/health")).status_code == 200  # the service's own routes still there
        event = await client.expect("project.updated")
        assert event["data"]["project_id"] == str(project) and event["data"]["updated_by"] == str(CARD_USER)
    finally:
        await client.close()
        await server.stop()


async def test_a_publishing_process_leaves_no_unclosed_connection(redis_url):
    """example_usage.py publishes through Redis and closes its broadcaster (``async with``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "always::ResourceWarning", "apps/api/events/example_usage.py",
        cwd=REPO_ROOT, env={**os.environ, **server_env(redis_url, isolation())},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
    assert process.returncode == 0, output
    assert "published to project:" in output
    assert "ResourceWarning" not in output and "unclosed" not in output, output


async def test_closing_a_broadcaster_lets_the_next_call_open_a_new_connection(redis_url, monkeypatch):
    from apps.api.config import get_settings
    from apps.api.events.broadcaster import Broadcaster

    for name, value in server_env(redis_url, isolation()).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        broadcaster = Broadcaster()
        async with broadcaster:
            await broadcaster.broadcast_agent_connected(agent_id=uuid4(), agent_name="first")
        assert not broadcaster.attached
        await broadcaster.broadcast_agent_connected(agent_id=uuid4(), agent_name="second")
        await broadcaster.close()
    finally:
        get_settings.cache_clear()


def test_no_route_runs_in_the_thread_pool():
    """FastAPI runs a plain-function endpoint or dependency in its thread pool: a thread hand-off
    per request (and a GIL round trip) for code that does no blocking I/O. Every endpoint and
    dependency of the app's routes is a coroutine function."""
    import inspect

    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from apps.api.routes import admin, events, github, health, projects, rooms, websocket_info
    from apps.api.routes import metrics as metrics_route

    plain: list[str] = []

    def walk(dependant: Dependant, where: str) -> None:
        for sub in dependant.dependencies:
            if sub.call is not None and not inspect.iscoroutinefunction(sub.call):
                plain.append(f"{where}: dependency {getattr(sub.call, '__qualname__', sub.call)}")
            walk(sub, where)

    paths = set()
    for module in (health, projects, events, github, websocket_info, rooms, admin, metrics_route):
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            paths.add(route.path_format)
            where = f"{sorted(route.methods)} {route.path}"
            if not inspect.iscoroutinefunction(route.endpoint):
                plain.append(f"{where}: endpoint {route.endpoint.__qualname__}")
            walk(route.dependant, where)
    assert set(create_app().openapi()["paths"]) <= paths  # every router of the app was walked
    assert not plain, plain
