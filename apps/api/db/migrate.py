"""Applying the migrations: at start-up (every instance may try at once) and from the command line.

Instances starting together take turns: on PostgreSQL an advisory lock held for the upgrade's
transaction, on SQLite the database's write lock (``BEGIN IMMEDIATE``). The first applies what is
missing; the others then find the schema at head and do nothing.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.api.db.engine import create_engine, writer

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_xact_lock key of the upgrade (any constant the service's database does not use).
_PG_LOCK_KEY = 0x6576656E7473  # "events"

T = TypeVar("T")


_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _in_process_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database to ``revision``, one process at a time."""
    await locked(engine, lambda connection: command.upgrade(_config_on(connection), revision))


async def locked(engine: AsyncEngine, work: Callable[[Connection], None]) -> None:
    """Run ``work`` on a connection in one transaction that no other ``locked`` runs beside:
    in other processes (PostgreSQL: an advisory lock; SQLite: the write lock), nor in this one
    (Alembic keeps a migration's context in module globals)."""
    async with _in_process_lock(), writer(engine).begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        await connection.run_sync(work)


def _config_on(connection: Connection) -> Config:
    config = alembic_config()
    config.attributes["connection"] = connection
    return config


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def on_url(url: str | None, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """``work`` on an engine for ``url`` (``DATABASE_URL`` when None), disposed of afterwards."""
    if url is None:
        from apps.api.config import get_settings

        url = get_settings().database_url
    engine = create_engine(url)
    try:
        return await work(engine)
    finally:
        await engine.dispose()
