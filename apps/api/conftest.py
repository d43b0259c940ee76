"""Fixtures shared by every test: a real server on a free port, clients, tokens."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from uuid import UUID, uuid4

import httpx
import pytest

from apps.api.app import create_app
from apps.api.tests.postgres_support import prepared_postgres
from apps.api.tests.redis_support import DEFAULT_REDIS_URL, HOW_TO_PROVIDE, own_redis, reachable
from apps.api.tests.support import (
    SERVER_OUTPUTS,
    LogCapture,
    RunningServer,
    WsClient,
    leaked_secrets,
    make_token,
    serve_in_process,
    sqlite_url,
    test_settings,
)

# What a test starts without naming a database (a process of the service, a script) gets a SQLite
# file in the tests' temporary folder, never ./data/events.db in the checkout.
os.environ.setdefault("DATABASE_URL", sqlite_url())


@pytest.fixture(scope="session")
async def server() -> AsyncIterator[RunningServer]:
    """The service, started once for the session under a real uvicorn on 127.0.0.1."""
    async with serve_in_process(create_app(test_settings())) as running:
        yield running


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


ClientFactory = Callable[..., Awaitable[WsClient]]


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[ClientFactory]:
    """``await connect(token)`` gives a connected :class:`WsClient`; all are closed afterwards."""
    clients: list[WsClient] = []

    async def factory(token: str | None = None, **kwargs: object) -> WsClient:
        client = WsClient(server.url)
        clients.append(client)
        return await client.connect(token, **kwargs)  # type: ignore[arg-type]

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def user_id() -> UUID:
    return uuid4()


@pytest.fixture
def token(user_id: UUID) -> str:
    return make_token(user_id)


@pytest.fixture(scope="session")
async def redis_url() -> AsyncIterator[str]:
    """The machine's Redis (127.0.0.1:6379 or TEST_REDIS_URL), else one started for the session."""
    if await reachable(DEFAULT_REDIS_URL):
        yield DEFAULT_REDIS_URL
        return
    if shutil.which("redis-server") is None:
        pytest.fail(f"Redis is not reachable at {DEFAULT_REDIS_URL}. {HOW_TO_PROVIDE}")
    async with own_redis() as server:
        yield server.url


@pytest.fixture(scope="session")
async def postgres_url() -> str:
    """The machine's PostgreSQL test database (TEST_DATABASE_URL), created and migrated once."""
    return await prepared_postgres()


@pytest.fixture(scope="session", autouse=True)
def no_token_or_secret_in_any_log() -> Iterator[None]:
    """Every log record of the whole session, and everything the server processes printed, is
    checked at its end: no token make_token made, TEST_SECRET or registered secret may appear
    (apps/api/tests/support.py, LogCapture and leaked_secrets)."""
    capture = LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        yield
    finally:
        root.removeHandler(capture)
    leaks = leaked_secrets([*capture.lines, *(line for output in SERVER_OUTPUTS for line in output)])
    if leaks:
        shown = "\n".join(text[:300] for text in leaks[:10])
        pytest.fail(f"{len(leaks)} log line(s) show a token or a secret, e.g.:\n{shown}", pytrace=False)
