"""PostgreSQL for tests: the machine's server on 127.0.0.1:5432 (``TEST_DATABASE_URL`` names
another). Never skipped: without it, the tests that need it fail and say how to provide it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/events_test")
HOW_TO_PROVIDE = (
    "PostgreSQL is needed on 127.0.0.1:5432 (or set TEST_DATABASE_URL): start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`; .ci/run does this."
)


def _dsn(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin(url: str) -> asyncpg.Connection:
    """A connection to the server's maintenance database, to create and drop test databases."""
    try:
        return await asyncpg.connect(_dsn(url, "postgres"), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"{HOW_TO_PROVIDE} ({type(exc).__name__}: {exc})") from None


async def ensure_database(url: str) -> None:
    """Create ``url``'s database if it does not exist."""
    name = make_url(url).database
    admin = await _admin(url)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_database(url: str = DEFAULT_POSTGRES_URL) -> AsyncIterator[str]:
    """A new empty database on ``url``'s server, dropped afterwards."""
    name = f"events_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await _admin(url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


_prepared: list[str] = []


async def prepared_postgres() -> str:
    """The test database (TEST_DATABASE_URL), created and migrated once per session. Tests share
    it: each uses ids of its own."""
    if not _prepared:
        from apps.api.db.migrate import on_url, upgrade

        await ensure_database(DEFAULT_POSTGRES_URL)
        await on_url(DEFAULT_POSTGRES_URL, upgrade)
        _prepared.append(DEFAULT_POSTGRES_URL)
    return _prepared[0]
