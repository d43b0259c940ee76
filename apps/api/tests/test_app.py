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


def test_no_route_runs_in_the_thread_pool(monkeypatch):
    """FastAPI runs a plain-function endpoint or dependency in its thread pool: a thread hand-off
    per request (and a GIL round trip) for code that does no blocking I/O. Every endpoint and
    dependency of every route the app has (each router it includes, hidden routes too, and the
    dependencies given with a router) is a coroutine function."""
    import inspect

    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    included: list[tuple[object, list[object]]] = []
    include_router = FastAPI.include_router

    def recording(self: FastAPI, router: object, *args: object, **kwargs: object) -> None:
        included.append((router, list(kwargs.get("dependencies") or ())))  # type: ignore[call-overload]
        include_router(self, router, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FastAPI, "include_router", recording)
    app = create_app()
    plain: list[str] = []

    def check(call: object, what: str) -> None:
        if call is not None and not inspect.iscoroutinefunction(call):
            plain.append(f"{what} {getattr(call, '__qualname__', call)}")

    def walk(dependant: Dependant, where: str) -> None:
        for sub in dependant.dependencies:
            check(sub.call, f"{where}: dependency")
            walk(sub, where)

    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    for router, dependencies in included:
        routes += [route for route in router.routes if isinstance(route, APIRoute)]  # type: ignore[attr-defined]
        for dependency in dependencies:
            check(dependency.dependency, "a router's dependency")  # type: ignore[attr-defined]
    assert len(included) >= 8 and len(routes) > 10
    for route in routes:
        where = f"{sorted(route.methods)} {route.path}"
        check(route.endpoint, f"{where}: endpoint")
        walk(route.dependant, where)
    assert "/metrics" in {route.path for route in routes}  # a hidden route (not in the schema) is walked too
    assert not plain, plain
