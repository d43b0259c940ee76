"""``/api/v1/projects``: the caller's projects. Changes are published through the broadcaster."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, status
from pydantic import BaseModel, ConfigDict, Field

from apps.api.deps import CurrentUser, ProjectStoreDep
from apps.api.errors import ApiError
from apps.api.events.broadcaster import DeliveryError, get_broadcaster
from apps.api.stores.projects import Project
from apps.api.websocket.auth import Principal
from apps.api.websocket.models import Event

router = APIRouter(prefix="/api/v1/projects", tags=["projects"])
logger = logging.getLogger(__name__)

Name = Annotated[str, Field(min_length=1, max_length=200)]
Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")]
Status = Annotated[str, Field(min_length=1, max_length=50)]


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: Annotated[str, Field(max_length=10_000)] | None = None
    repository_url: Url | None = None
    status: Status = "active"


class ProjectUpdate(BaseModel):
    """The fields to change; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    description: Annotated[str, Field(max_length=10_000)] | None = None
    repository_url: Url | None = None
    status: Status | None = None


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UUID


class ProjectPublic(BaseModel):
    id: UUID
    name: str
    description: str | None
    repository_url: str | None
    status: str
    owner_id: UUID
    members: list[UUID]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, project: Project) -> ProjectPublic:
        return cls(
            id=project.id,
            name=project.name,
            description=project.description,
            repository_url=project.repository_url,
            status=project.status,
            owner_id=project.owner_id,
            members=sorted(project.members, key=str),
            created_at=project.created_at,
            updated_at=project.updated_at,
        )


class ProjectUpdated(BaseModel):
    success: bool = True
    project: ProjectPublic
    changed_fields: list[str]
    event_id: str | None = Field(description="id of the project.updated event; null when nothing changed or not sent")
    event_delivered: bool = Field(description="false when the event could not reach every instance (Redis down)")


class ProjectDeleted(BaseModel):
    success: bool = True
    event_id: str | None
    event_delivered: bool


async def _announce(publishing: Awaitable[Event]) -> tuple[str | None, bool]:
    """Publish after a stored change. The change stands either way; an event Redis could not take
    is reported as not delivered rather than failing the request (a retry would change nothing)."""
    try:
        event = await publishing
    except DeliveryError as exc:
        logger.warning("websocket event not delivered to every instance: %s", exc)
        return None, False
    return event.id, True


async def _visible_project(store: ProjectStoreDep, project_id: UUID, user: Principal) -> Project:
    project = await store.get(project_id)
    if project is None:
        raise ApiError(404, f"Project {project_id} not found")
    if not user.is_admin and user.user_id not in project.members:
        raise ApiError(403, f"You are not a member of project {project_id}", code="PROJECT_ACCESS_DENIED")
    return project


def _require_owner(project: Project, user: Principal) -> None:
    if not user.is_admin and project.owner_id != user.user_id:
        raise ApiError(403, "Only the project's owner may do this", code="PROJECT_ACCESS_DENIED")


@router.get("", response_model=list[ProjectPublic])
async def list_projects(user: CurrentUser, store: ProjectStoreDep) -> list[ProjectPublic]:
    return [ProjectPublic.of(p) for p in await store.list_for_user(user.user_id)]


@router.post("", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectCreate, user: CurrentUser, store: ProjectStoreDep) -> ProjectPublic:
    project = await store.create(owner_id=user.user_id, **body.model_dump())
    return ProjectPublic.of(project)


@router.get("/{project_id}", response_model=ProjectPublic)
async def get_project(project_id: UUID, user: CurrentUser, store: ProjectStoreDep) -> ProjectPublic:
    return ProjectPublic.of(await _visible_project(store, project_id, user))


@router.put("/{project_id}", response_model=ProjectUpdated)
async def update_project(
    project_id: UUID, body: ProjectUpdate, user: CurrentUser, store: ProjectStoreDep
) -> ProjectUpdated:
    """Stores the given fields and broadcasts ``project.updated`` with what really changed."""
    await _visible_project(store, project_id, user)
    requested: dict[str, Any] = body.model_dump(exclude_unset=True)
    if any(requested.get(k) is None for k in ("name", "status") if k in requested):
        raise ApiError(422, "name and status cannot be null", code="VALIDATION_ERROR")
    project, changed = await store.update(project_id, requested)
    event_id, delivered = None, True
    if changed:
        event_id, delivered = await _announce(
            get_broadcaster().broadcast_project_updated(
                project_id=project.id,
                project_name=project.name,
                repository_url=project.repository_url,
                status=project.status,
                updated_by=user.user_id,
                changes=changed,
            )
        )
    return ProjectUpdated(
        project=ProjectPublic.of(project), changed_fields=list(changed), event_id=event_id, event_delivered=delivered
    )


@router.delete("/{project_id}", response_model=ProjectDeleted)
async def delete_project(project_id: UUID, user: CurrentUser, store: ProjectStoreDep) -> ProjectDeleted:
    """Deletes the project (owner or admin) and broadcasts ``project.deleted``."""
    project = await _visible_project(store, project_id, user)
    _require_owner(project, user)
    await store.delete(project_id)
    event_id, delivered = await _announce(
        get_broadcaster().broadcast_project_deleted(
            project_id=project.id, project_name=project.name, deleted_by=user.user_id
        )
    )
    return ProjectDeleted(event_id=event_id, event_delivered=delivered)


@router.post("/{project_id}/members", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
async def add_member(
    project_id: UUID, body: Annotated[MemberAdd, Body()], user: CurrentUser, store: ProjectStoreDep
) -> ProjectPublic:
    """Adds a member (owner or admin); members may join ``project:<id>``."""
    project = await _visible_project(store, project_id, user)
    _require_owner(project, user)
    return ProjectPublic.of(await store.add_member(project_id, body.user_id))
