"""The async engine for ``DATABASE_URL``, with what each database needs to be safe under
concurrent writers (several tasks, several processes).

SQLite: WAL (readers never wait for a writer), foreign keys on, a busy timeout, and transactions
begun by us: a read takes ``BEGIN``, a write ``BEGIN IMMEDIATE`` (the write lock at once, so two
read-then-write transactions queue instead of deadlocking; pysqlite's own implicit transactions
would take it at the first write, too late). PostgreSQL: pre-pinged pooled connections; writes
lock the rows they read (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

#: Seconds a SQLite writer waits for another's lock before failing.
SQLITE_BUSY_TIMEOUT = 30


def database_url(text: str) -> URL:
    """``text`` as a URL, with its scheme's async driver (``sqlite://`` -> aiosqlite,
    ``postgresql://`` -> asyncpg)."""
    url = make_url(text)
    if url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    return url


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(text: str) -> AsyncEngine:
    """The engine for ``text`` (``DATABASE_URL``). A SQLite file's folder is created if missing."""
    url = database_url(text)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
    event.listen(engine.sync_engine, "connect", _sqlite_connected)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def writer(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for transactions that write (SQLite: ``BEGIN IMMEDIATE``)."""
    return engine.execution_options(sqlite_write=True)


def _sqlite_connected(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we begin transactions ourselves (_sqlite_begin)
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", f"busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get("sqlite_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


async def reachable(engine: AsyncEngine, timeout: float = 2.0) -> bool:
    """Whether the database answers a trivial query within ``timeout`` seconds."""

    async def ping() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(ping(), timeout)
    except (SQLAlchemyError, OSError, TimeoutError):
        return False
    return True
