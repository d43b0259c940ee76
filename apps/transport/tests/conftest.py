"""Fixtures for this package's tests: an app served by a real uvicorn on a free port of
127.0.0.1, in the test's event loop, with this package's uvicorn options."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn

from apps.transport import SocketIOMiddleware, uvicorn_options
from apps.transport.tests.support import bound_socket

MAX_MESSAGE = 1_000_000


async def not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serve(server: Any, *, path: str = "socket.io", **options: Any) -> AsyncIterator[str]:
    """Serve the Engine.IO or Socket.IO ``server`` at ``/path/``; yields the base URL."""
    sock = bound_socket()
    app = SocketIOMiddleware(not_found, server=server, path=path)
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=1,
        **{**uvicorn_options(max_message_bytes=MAX_MESSAGE), **options},
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


Serve = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def served() -> Serve:
    return serve
