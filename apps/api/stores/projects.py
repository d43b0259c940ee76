"""Projects and their members: what room access checks, and what the project routes change.

The contract (:class:`ProjectStore`) and its values, free of I/O; the store itself is
:class:`apps.api.stores.sql_projects.SqlProjectStore`.

Every change goes through :meth:`ProjectStore.editing`: the project is locked and read, the
caller checks what it must (membership, ownership) and changes it, commits
(:meth:`ProjectEdit.commit`), then publishes the change, all before the lock is released. So
changes to one project, and their events, follow one another in one order on every instance: a
change racing another waits for it, and one racing a delete finds the project gone
(:class:`ProjectNotFound`) and changes, reports and publishes nothing. An event is published only
for what was committed.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

#: Fields a caller may change with :meth:`ProjectEdit.update`.
EDITABLE_FIELDS = ("name", "status", "description", "repository_url")


@dataclass(frozen=True, slots=True)
class Project:
    id: UUID
    name: str
    owner_id: UUID
    status: str
    description: str | None
    repository_url: str | None
    members: frozenset[UUID]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    user_id: UUID
    role: Literal["owner", "member"]
    added_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``next_cursor`` fetches the next (None: this is the last)."""

    items: list[Project]
    next_cursor: str | None


class ProjectNotFound(LookupError):
    def __init__(self, project_id: UUID) -> None:
        super().__init__(f"Project {project_id} not found")
        self.project_id = project_id


class ProjectBusy(RuntimeError):
    """Another change of the project held its lock longer than a writer may wait (the request is
    answered 503 with ``Retry-After``)."""

    def __init__(self, project_id: UUID, waited: float) -> None:
        super().__init__(f"Project {project_id} is being changed by another request; try again shortly")
        self.project_id = project_id
        self.waited = waited


class InvalidCursor(ValueError):
    pass


def encode_cursor(project: Project) -> str:
    raw = json.dumps([project.created_at.isoformat(), str(project.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, project_id = json.loads(raw)
        return datetime.fromisoformat(created_at), UUID(project_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursor("cursor is not one this API returned") from None


class ProjectEdit(Protocol):
    """A project read and locked for change, inside one transaction."""

    @property
    def project(self) -> Project:
        """The project as it stands now (after this edit's changes so far)."""
        ...

    async def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Store ``changes`` (editable fields only); returns what really changed."""
        ...

    async def add_member(self, user_id: UUID) -> bool:
        """Whether ``user_id`` was not a member before."""
        ...

    async def remove_member(self, user_id: UUID) -> bool:
        """Whether ``user_id`` was a member (the owner cannot be removed: ValueError)."""
        ...

    async def delete(self) -> None: ...

    async def commit(self) -> None:
        """Store the changes now (the block's end does it otherwise). The lock is held until the
        block ends: publish what changed after this, inside the block."""
        ...


class ProjectStore(Protocol):
    async def create(
        self,
        *,
        name: str,
        owner_id: UUID,
        status: str = "active",
        description: str | None = None,
        repository_url: str | None = None,
    ) -> Project:
        """A new project; its owner is its first member."""
        ...

    async def get(self, project_id: UUID) -> Project | None: ...

    async def list_for_user(self, user_id: UUID, *, limit: int = 50, cursor: str | None = None) -> Page:
        """The projects ``user_id`` is a member of, oldest first (InvalidCursor for a bad cursor)."""
        ...

    async def members(self, project_id: UUID) -> list[Member]: ...

    async def is_member(self, project_id: UUID, user_id: UUID) -> bool: ...

    def editing(self, project_id: UUID) -> AbstractAsyncContextManager[ProjectEdit]:
        """The project, locked until the block ends (ProjectNotFound if there is no such project).
        Changes commit at :meth:`ProjectEdit.commit` or at the block's end; an exception before
        then discards them."""
        ...

    async def for_repository(self, keys: frozenset[str]) -> list[Project]:
        """The projects whose repository is any of ``keys`` (normalised repository names)."""
        ...
