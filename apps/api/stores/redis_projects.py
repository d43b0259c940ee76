"""Projects and members in Redis, shared by every instance (used when ``REDIS_URL`` is set).

Keys, under the configured prefix: ``project:<id>`` (the project as JSON), ``project:<id>:members``
(a set of user ids) and ``user:<id>:projects`` (a set of project ids). Changes are MULTI/EXEC
transactions; concurrent updates of one project are last-writer-wins per request.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from redis import asyncio as aioredis

from apps.api.stores.projects import EDITABLE_FIELDS, Project, new_project


class RedisProjectStore:
    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, project_id: UUID) -> str:
        return f"{self._prefix}project:{project_id}"

    def _members_key(self, project_id: UUID) -> str:
        return f"{self._prefix}project:{project_id}:members"

    def _user_key(self, user_id: UUID) -> str:
        return f"{self._prefix}user:{user_id}:projects"

    @staticmethod
    def _dump(project: Project) -> str:
        data = asdict(project)
        data.pop("members")
        return json.dumps(data, default=str)

    def _load(self, raw: bytes | str, members: set[bytes] | set[str]) -> Project:
        data: dict[str, Any] = json.loads(raw)
        return Project(
            id=UUID(data["id"]),
            name=data["name"],
            owner_id=UUID(data["owner_id"]),
            status=data["status"],
            description=data.get("description"),
            repository_url=data.get("repository_url"),
            members=frozenset(UUID(m.decode() if isinstance(m, bytes) else m) for m in members),
            created_at=datetime.fromisoformat(data["created_at"]),
            updated_at=datetime.fromisoformat(data["updated_at"]),
        )

    async def create(self, **fields: Any) -> Project:
        project = new_project(**fields)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(project.id), self._dump(project))
            pipe.sadd(self._members_key(project.id), str(project.owner_id))
            pipe.sadd(self._user_key(project.owner_id), str(project.id))
            await pipe.execute()
        return project

    async def get(self, project_id: UUID) -> Project | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key(project_id))
            pipe.smembers(self._members_key(project_id))
            raw, members = await pipe.execute()
        return None if raw is None else self._load(raw, members)

    async def list_for_user(self, user_id: UUID) -> list[Project]:
        ids = await self._redis.smembers(self._user_key(user_id))
        projects = [await self.get(UUID(i.decode() if isinstance(i, bytes) else i)) for i in ids]
        return sorted((p for p in projects if p is not None), key=lambda p: p.created_at)

    async def is_member(self, project_id: UUID, user_id: UUID) -> bool:
        return bool(await self._redis.sismember(self._members_key(project_id), str(user_id)))

    async def update(self, project_id: UUID, changes: dict[str, Any]) -> tuple[Project, dict[str, Any]]:
        project = await self.get(project_id)
        if project is None:
            raise KeyError(project_id)
        changed = {k: v for k, v in changes.items() if k in EDITABLE_FIELDS and getattr(project, k) != v}
        if changed:
            project = replace(project, **changed, updated_at=datetime.now(UTC))
            await self._redis.set(self._key(project_id), self._dump(project), xx=True)
        return project, changed

    async def add_member(self, project_id: UUID, user_id: UUID) -> Project:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._members_key(project_id), str(user_id))
            pipe.sadd(self._user_key(user_id), str(project_id))
            await pipe.execute()
        project = await self.get(project_id)
        if project is None:
            raise KeyError(project_id)
        return project

    async def delete(self, project_id: UUID) -> Project | None:
        project = await self.get(project_id)
        if project is None:
            return None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(project_id), self._members_key(project_id))
            for member in project.members:
                pipe.srem(self._user_key(member), str(project_id))
            await pipe.execute()
        return project
