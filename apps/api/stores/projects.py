"""Projects and their members. In memory for now: the interface is async so that a database
backend can replace it without touching callers. Membership here is what room access checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID, uuid4


@dataclass(frozen=True, slots=True)
class Project:
    id: UUID
    name: str
    owner_id: UUID
    status: str = "active"
    description: str | None = None
    repository_url: str | None = None
    members: frozenset[UUID] = frozenset()
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def new_project(
    *,
    name: str,
    owner_id: UUID,
    status: str = "active",
    description: str | None = None,
    repository_url: str | None = None,
) -> Project:
    """A new project, with a new id; its owner is its first member."""
    return Project(
        id=uuid4(),
        name=name,
        owner_id=owner_id,
        status=status,
        description=description,
        repository_url=repository_url,
        members=frozenset({owner_id}),
    )


#: Fields a caller may change with :meth:`ProjectStore.update`.
EDITABLE_FIELDS = ("name", "status", "description", "repository_url")


class ProjectStore(Protocol):
    """Where projects and their members live: in memory (one instance) or Redis (several)."""

    async def create(
        self,
        *,
        name: str,
        owner_id: UUID,
        status: str = "active",
        description: str | None = None,
        repository_url: str | None = None,
    ) -> Project: ...

    async def get(self, project_id: UUID) -> Project | None: ...

    async def list_for_user(self, user_id: UUID) -> list[Project]: ...

    async def is_member(self, project_id: UUID, user_id: UUID) -> bool: ...

    async def update(self, project_id: UUID, changes: dict[str, Any]) -> tuple[Project, dict[str, Any]]:
        """Apply ``changes`` (editable fields only); returns the project and what really changed."""
        ...

    async def add_member(self, project_id: UUID, user_id: UUID) -> Project: ...

    async def delete(self, project_id: UUID) -> Project | None: ...


class InMemoryProjectStore:
    def __init__(self) -> None:
        self._projects: dict[UUID, Project] = {}

    async def create(self, **fields: Any) -> Project:
        project = new_project(**fields)
        self._projects[project.id] = project
        return project

    async def get(self, project_id: UUID) -> Project | None:
        return self._projects.get(project_id)

    async def list_for_user(self, user_id: UUID) -> list[Project]:
        return sorted((p for p in self._projects.values() if user_id in p.members), key=lambda p: p.created_at)

    async def is_member(self, project_id: UUID, user_id: UUID) -> bool:
        project = self._projects.get(project_id)
        return project is not None and user_id in project.members

    async def update(self, project_id: UUID, changes: dict[str, Any]) -> tuple[Project, dict[str, Any]]:
        """Apply ``changes`` (editable fields only); returns the project and what really changed."""
        project = self._projects[project_id]
        changed = {k: v for k, v in changes.items() if k in EDITABLE_FIELDS and getattr(project, k) != v}
        if changed:
            project = replace(project, **changed, updated_at=datetime.now(UTC))
            self._projects[project_id] = project
        return project, changed

    async def add_member(self, project_id: UUID, user_id: UUID) -> Project:
        project = self._projects[project_id]
        project = replace(project, members=project.members | {user_id})
        self._projects[project_id] = project
        return project

    async def delete(self, project_id: UUID) -> Project | None:
        return self._projects.pop(project_id, None)
