"""``/api/v1/projects``: the caller's projects and their members. Changes are published through
the broadcaster, after they are stored and before the project's lock is released (see
:mod:`apps.api.stores.projects`), so no event describes a change that was not stored, or
follows its project's deletion."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from apps.api.deps import AuthenticatedRoute, CurrentUser, ProjectStoreDep
from apps.api.errors import ApiError
from apps.api.events.broadcaster import DeliveryError, get_broadcaster
from apps.api.stores.projects import Member, Project
from apps.api.websocket.auth import Principal
from apps.api.websocket.models import Event

router = APIRouter(prefix="/api/v1/projects", tags=["projects"], route_class=AuthenticatedRoute)
logger = logging.getLogger(__name__)

Name = Annotated[str, Field(min_length=1, max_length=200)]
Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://")]
Status = Annotated[str, Field(min_length=1, max_length=50)]
Description = Annotated[str, Field(max_length=10_000)]


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: Description | None = None
    repository_url: Url | None = None
    status: Status = "active"


class ProjectUpdate(BaseModel):
    """The fields to change; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    description: Description | None = None
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


class ProjectList(BaseModel):
    items: list[ProjectPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class MemberPublic(BaseModel):
    user_id: UUID
    role: str
    added_at: datetime

    @classmethod
    def of(cls, member: Member) -> MemberPublic:
        return cls(user_id=member.user_id, role=member.role, added_at=member.added_at)


class MemberList(BaseModel):
    items: list[MemberPublic]


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


class MemberRemoved(BaseModel):
    success: bool = True
    project: ProjectPublic
    event_delivered: bool = Field(description="false when other instances could not be told (Redis down)")


async def _announce(publishing: Awaitable[Event]) -> tuple[str | None, bool]:
    """Publish after a stored change. The change stands either way; an event Redis could not take
    is reported as not delivered rather than failing the request (a retry would change nothing)."""
    try:
        event = await publishing
    except DeliveryError as exc:
        logger.warning("websocket event not delivered to every instance: %s", exc)
        return None, False
    return event.id, True


def require_member(project: Project, user: Principal) -> None:
    """403 unless ``user`` is a member of ``project`` (or an admin)."""
    if not user.is_admin and user.user_id not in project.members:
        raise ApiError(403, f"You are not a member of project {project.id}", code="PROJECT_ACCESS_DENIED")


def require_repository_admin(user: Principal) -> None:
    """403 unless ``user`` is an admin: linking a project to a repository routes that repository's
    webhook deliveries (pull requests, issues) to the project's members, and nothing proves that an
    ordinary user may read that repository."""
    if not user.is_admin:
        raise ApiError(
            403,
            "Only an admin may link a project to a repository (repository_url)",
            code="REPOSITORY_LINK_REQUIRES_ADMIN",
        )


def require_owner(project: Project, user: Principal) -> None:
    """403 unless ``user`` owns ``project`` (or is an admin)."""
    if not user.is_admin and project.owner_id != user.user_id:
        raise ApiError(403, "Only the project's owner may do this", code="PROJECT_ACCESS_DENIED")


async def _visible_project(store: ProjectStoreDep, project_id: UUID, user: Principal) -> Project:
    project = await store.get(project_id)
    if project is None:
        raise ApiError(404, f"Project {project_id} not found")
    require_member(project, user)
    return project


@router.get("", response_model=ProjectList)
async def list_projects(
    user: CurrentUser,
    store: ProjectStoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ProjectList:
    """The caller's projects, oldest first, ``limit`` at a time."""
    page = await store.list_for_user(user.user_id, limit=limit, cursor=cursor)
    return ProjectList(items=[ProjectPublic.of(p) for p in page.items], next_cursor=page.next_cursor)


@router.post("", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectCreate, user: CurrentUser, store: ProjectStoreDep) -> ProjectPublic:
    """Creates a project owned by the caller; only an admin may give it a ``repository_url``."""
    if body.repository_url is not None:
        require_repository_admin(user)
    project = await store.create(owner_id=user.user_id, **body.model_dump())
    return ProjectPublic.of(project)


@router.get("/{project_id}", response_model=ProjectPublic)
async def get_project(project_id: UUID, user: CurrentUser, store: ProjectStoreDep) -> ProjectPublic:
    return ProjectPublic.of(await _visible_project(store, project_id, user))


@router.put("/{project_id}", response_model=ProjectUpdated)
async def update_project(
    project_id: UUID, body: ProjectUpdate, user: CurrentUser, store: ProjectStoreDep
) -> ProjectUpdated:
    """Stores the given fields (members and admins; ``repository_url`` admins only, unless it is
    sent unchanged) and broadcasts ``project.updated`` with what really changed."""
    requested: dict[str, Any] = body.model_dump(exclude_unset=True)
    if any(requested.get(k) is None for k in ("name", "status") if k in requested):
        raise ApiError(422, "name and status cannot be null", code="VALIDATION_ERROR")
    event_id, delivered = None, True
    async with store.editing(project_id) as edit:
        require_member(edit.project, user)
        if requested.get("repository_url") not in (None, edit.project.repository_url):
            require_repository_admin(user)
        changed = await edit.update(requested)
        await edit.commit()
        project = edit.project
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
    """Deletes the project (owner or admin), broadcasts ``project.deleted`` to its room, then takes
    every connection out of the room (each told by ``project.access_revoked``)."""
    async with store.editing(project_id) as edit:
        require_member(edit.project, user)
        require_owner(edit.project, user)
        project = edit.project
        await edit.delete()
        await edit.commit()
        broadcaster = get_broadcaster()
        event_id, delivered = await _announce(
            broadcaster.broadcast_project_deleted(
                project_id=project.id, project_name=project.name, deleted_by=user.user_id
            )
        )
        _, revoked = await _announce(broadcaster.revoke_project_access(project_id=project.id, by=user.user_id))
    return ProjectDeleted(event_id=event_id, event_delivered=delivered and revoked)


@router.get("/{project_id}/members", response_model=MemberList)
async def list_members(project_id: UUID, user: CurrentUser, store: ProjectStoreDep) -> MemberList:
    """The project's members, with their role (``owner`` or ``member``); members and admins."""
    await _visible_project(store, project_id, user)
    return MemberList(items=[MemberPublic.of(m) for m in await store.members(project_id)])


@router.post(
    "/{project_id}/members",
    response_model=ProjectPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "already a member: nothing changed"}},
)
async def add_member(
    project_id: UUID,
    body: Annotated[MemberAdd, Body()],
    user: CurrentUser,
    store: ProjectStoreDep,
    response: Response,
) -> ProjectPublic:
    """Adds a member (owner or admin); members may join ``project:<id>``."""
    async with store.editing(project_id) as edit:
        require_member(edit.project, user)
        require_owner(edit.project, user)
        if not await edit.add_member(body.user_id):
            response.status_code = status.HTTP_200_OK
        return ProjectPublic.of(edit.project)


@router.delete("/{project_id}/members/{user_id}", response_model=MemberRemoved)
async def remove_member(project_id: UUID, user_id: UUID, user: CurrentUser, store: ProjectStoreDep) -> MemberRemoved:
    """Removes a member (the owner or an admin; any member may remove themselves). Their open
    connections, on every instance, leave ``project:<id>`` at once, each told by
    ``project.access_revoked``."""
    async with store.editing(project_id) as edit:
        require_member(edit.project, user)
        if user_id != user.user_id:
            require_owner(edit.project, user)
        if user_id == edit.project.owner_id:
            raise ApiError(409, "The project's owner cannot be removed from it", code="OWNER_CANNOT_BE_REMOVED")
        if not await edit.remove_member(user_id):
            raise ApiError(404, f"User {user_id} is not a member of project {project_id}", code="MEMBER_NOT_FOUND")
        broadcaster = get_broadcaster()
        # every instance is told before the removal is committed: when Redis cannot take it, the
        # member stays (a removal that other instances never heard of would not take effect there)
        try:
            await broadcaster.revoke_project_access(project_id=project_id, user_id=user_id, by=user.user_id)
        except DeliveryError as exc:
            logger.warning("member not removed: the other instances could not be told: %s", exc)
            raise ApiError(
                503,
                "The removal could not reach every instance (Redis is unreachable); nothing was changed, try again",
                code="UNAVAILABLE",
                headers={"Retry-After": "2"},
            ) from None
        await edit.commit()
        # and again once committed, for a subscription that was checked in between (the user's
        # connections that already left are not told twice)
        _, delivered = await _announce(
            broadcaster.revoke_project_access(project_id=project_id, user_id=user_id, by=user.user_id)
        )
        return MemberRemoved(project=ProjectPublic.of(edit.project), event_delivered=delivered)
