"""The project store in the relational database (SQLite or PostgreSQL, through SQLAlchemy)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Row, delete, func, insert, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from apps.api.db.engine import writer
from apps.api.db.tables import project_members, projects
from apps.api.github.events import normalize_repository
from apps.api.stores.projects import (
    EDITABLE_FIELDS,
    Member,
    Page,
    Project,
    ProjectBusy,
    ProjectNotFound,
    decode_cursor,
    encode_cursor,
)

#: Seconds a change waits for another change of the same project before it is refused (503).
LOCK_WAIT_SECONDS = 10.0
#: PostgreSQL's SQLSTATE for a lock not obtained within ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"


def _utc(value: datetime) -> datetime:
    """SQLite gives datetimes back without their zone; they were stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _project(row: Row[Any], members: Iterable[UUID]) -> Project:
    return Project(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        status=row.status,
        description=row.description,
        repository_url=row.repository_url,
        members=frozenset(members),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


async def _with_members(connection: AsyncConnection, rows: list[Row[Any]]) -> list[Project]:
    """Projects for ``rows``, with their members (one query for all of them)."""
    if not rows:
        return []
    members: dict[UUID, list[UUID]] = {row.id: [] for row in rows}
    query = select(project_members.c.project_id, project_members.c.user_id).where(
        project_members.c.project_id.in_(members)
    )
    for project_id, user_id in await connection.execute(query):
        members[project_id].append(user_id)
    return [_project(row, members[row.id]) for row in rows]


class SqlProjectStore:
    def __init__(self, engine: AsyncEngine, *, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self._engine = engine
        self._writer = writer(engine)
        self._locks = ProjectLocks(engine, lock_wait_seconds)

    async def create(
        self,
        *,
        name: str,
        owner_id: UUID,
        status: str = "active",
        description: str | None = None,
        repository_url: str | None = None,
    ) -> Project:
        now = _now()
        project = Project(
            id=uuid4(),
            name=name,
            owner_id=owner_id,
            status=status,
            description=description,
            repository_url=repository_url,
            members=frozenset({owner_id}),
            created_at=now,
            updated_at=now,
        )
        async with self._writer.begin() as connection:
            await connection.execute(
                insert(projects).values(
                    id=project.id,
                    name=name,
                    owner_id=owner_id,
                    status=status,
                    description=description,
                    repository_url=repository_url,
                    repository_key=_repository_key(repository_url),
                    created_at=now,
                    updated_at=now,
                )
            )
            await connection.execute(
                insert(project_members).values(project_id=project.id, user_id=owner_id, role="owner", added_at=now)
            )
        return project

    async def get(self, project_id: UUID) -> Project | None:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(projects).where(projects.c.id == project_id))).all()
            found = await _with_members(connection, list(rows))
        return found[0] if found else None

    async def list_for_user(self, user_id: UUID, *, limit: int = 50, cursor: str | None = None) -> Page:
        query = (
            select(projects)
            .join(project_members, project_members.c.project_id == projects.c.id)
            .where(project_members.c.user_id == user_id)
            .order_by(projects.c.created_at, projects.c.id)
            .limit(limit + 1)
        )
        if cursor is not None:
            created_at, after_id = decode_cursor(cursor)
            query = query.where(tuple_(projects.c.created_at, projects.c.id) > tuple_(created_at, after_id))
        async with self._engine.connect() as connection:
            rows = list((await connection.execute(query)).all())
            items = await _with_members(connection, rows[:limit])
        return Page(items, encode_cursor(items[-1]) if len(rows) > limit else None)

    async def members(self, project_id: UUID) -> list[Member]:
        query = (
            select(project_members)
            .where(project_members.c.project_id == project_id)
            .order_by(project_members.c.added_at, project_members.c.user_id)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [Member(row.user_id, row.role, _utc(row.added_at)) for row in rows]

    async def is_member(self, project_id: UUID, user_id: UUID) -> bool:
        query = select(func.count()).where(
            project_members.c.project_id == project_id, project_members.c.user_id == user_id
        )
        async with self._engine.connect() as connection:
            return bool((await connection.execute(query)).scalar_one())

    @asynccontextmanager
    async def editing(self, project_id: UUID) -> AsyncIterator[SqlProjectEdit]:
        # the process's own lock first, then a connection: writers queued behind one slow change
        # of a project wait without holding a pooled connection each
        async with (
            self._locks.local(project_id),
            self._writer.connect() as connection,
            self._locks.shared(connection, project_id),
        ):
            transaction = await connection.begin()
            try:
                locked = select(projects).where(projects.c.id == project_id).with_for_update()
                rows = list((await connection.execute(locked)).all())
                if not rows:
                    raise ProjectNotFound(project_id)
                (project,) = await _with_members(connection, rows)
                edit = SqlProjectEdit(connection, project)
                yield edit
                await edit.commit()
            finally:
                if transaction.is_active:
                    await transaction.rollback()

    async def for_repository(self, keys: frozenset[str]) -> list[Project]:
        if not keys:
            return []
        query = select(projects).where(projects.c.repository_key.in_(keys)).order_by(projects.c.created_at)
        async with self._engine.connect() as connection:
            return await _with_members(connection, list((await connection.execute(query)).all()))


class SqlProjectEdit:
    def __init__(self, connection: AsyncConnection, project: Project) -> None:
        self._connection = connection
        self._project = project
        self._deleted = False
        self._committed = False

    @property
    def project(self) -> Project:
        return self._project

    def _live(self) -> None:
        if self._committed:
            raise RuntimeError("this edit is committed: open another to change the project again")
        if self._deleted:
            raise ProjectNotFound(self._project.id)

    async def commit(self) -> None:
        if not self._committed:
            self._committed = True
            await self._connection.commit()

    async def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        self._live()
        project = self._project
        changed = {k: v for k, v in changes.items() if k in EDITABLE_FIELDS and getattr(project, k) != v}
        if not changed:
            return {}
        now = _now()
        values: dict[str, Any] = {**changed, "updated_at": now}
        if "repository_url" in changed:
            values["repository_key"] = _repository_key(changed["repository_url"])
        await self._connection.execute(update(projects).where(projects.c.id == project.id).values(**values))
        self._project = replace(project, **changed, updated_at=now)
        return changed

    async def add_member(self, user_id: UUID) -> bool:
        self._live()
        if user_id in self._project.members:
            return False
        await self._connection.execute(
            insert(project_members).values(project_id=self._project.id, user_id=user_id, role="member", added_at=_now())
        )
        self._project = replace(self._project, members=self._project.members | {user_id})
        return True

    async def remove_member(self, user_id: UUID) -> bool:
        self._live()
        if user_id == self._project.owner_id:
            raise ValueError("the owner of a project cannot be removed from it")
        if user_id not in self._project.members:
            return False
        await self._connection.execute(
            delete(project_members).where(
                project_members.c.project_id == self._project.id, project_members.c.user_id == user_id
            )
        )
        self._project = replace(self._project, members=self._project.members - {user_id})
        return True

    async def delete(self) -> None:
        self._live()
        project_id = self._project.id
        await self._connection.execute(delete(project_members).where(project_members.c.project_id == project_id))
        await self._connection.execute(delete(projects).where(projects.c.id == project_id))
        self._deleted = True


class ProjectLocks:
    """One writer at a time per project, held from before its transaction until its events are
    published. In this process, an asyncio lock per project, taken before a connection is checked
    out of the pool; across processes (PostgreSQL), a session advisory lock on that connection
    (SQLite serves one process; see Settings). Neither waits longer than ``wait_seconds``: then
    :class:`ProjectBusy`, so a stuck writer cannot pile up requests without bound."""

    def __init__(self, engine: AsyncEngine, wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self._postgres = engine.dialect.name == "postgresql"
        self._wait = wait_seconds
        self._local: weakref.WeakValueDictionary[UUID, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def local(self, project_id: UUID) -> AsyncIterator[None]:
        lock = self._local.get(project_id)
        if lock is None:
            lock = self._local[project_id] = asyncio.Lock()
        try:
            await asyncio.wait_for(lock.acquire(), self._wait)
        except TimeoutError:
            raise ProjectBusy(project_id, self._wait) from None
        try:
            yield
        finally:
            lock.release()

    @asynccontextmanager
    async def shared(self, connection: AsyncConnection, project_id: UUID) -> AsyncIterator[None]:
        if not self._postgres:
            yield
            return
        key = int.from_bytes(project_id.bytes[:8], "big", signed=True)
        async with connection.begin():  # the lock outlives this transaction; lock_timeout does not
            await connection.execute(text(f"SET LOCAL lock_timeout = '{int(self._wait * 1000)}ms'"))
            try:
                await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                raise ProjectBusy(project_id, self._wait) from None
        try:
            yield
        finally:
            try:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                await connection.commit()
            except (DBAPIError, OSError):
                # the session is broken: discarding it releases its locks, and the error that
                # broke it (if any) is the one worth raising
                await connection.invalidate()


def _repository_key(url: str | None) -> str | None:
    return normalize_repository(url) if url else None
