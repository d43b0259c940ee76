"""Remembers which rooms a workflow's events go to, so a later call that names only the
``workflow_id`` (the card's Temporal example) reaches the same people.

:class:`WorkflowRoutes` keeps them in this process's memory (bounded: the oldest are forgotten
first); :class:`RedisWorkflowRoutes` in Redis, shared by every process that publishes, for a week.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Protocol
from uuid import UUID

from redis.exceptions import RedisError

from apps.api.events.emitter import DeliveryError


class WorkflowDirectory(Protocol):
    async def remember(self, workflow_id: UUID, rooms: list[str]) -> None: ...

    async def lookup(self, workflow_id: UUID) -> list[str]: ...


class WorkflowRoutes:
    def __init__(self, max_workflows: int = 10_000) -> None:
        self._rooms: OrderedDict[UUID, tuple[str, ...]] = OrderedDict()
        self._max = max_workflows

    async def remember(self, workflow_id: UUID, rooms: list[str]) -> None:
        self._rooms[workflow_id] = tuple(rooms)
        self._rooms.move_to_end(workflow_id)
        while len(self._rooms) > self._max:
            self._rooms.popitem(last=False)

    async def lookup(self, workflow_id: UUID) -> list[str]:
        return list(self._rooms.get(workflow_id, ()))


class RedisWorkflowRoutes:
    def __init__(self, redis: Any, *, prefix: str, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._prefix = f"{prefix}workflow:"
        self._ttl = ttl_seconds

    async def remember(self, workflow_id: UUID, rooms: list[str]) -> None:
        try:
            await self._redis.set(f"{self._prefix}{workflow_id}", json.dumps(rooms), ex=self._ttl)
        except (RedisError, OSError) as exc:
            raise DeliveryError(
                f"could not record workflow {workflow_id}'s rooms in Redis: {type(exc).__name__}"
            ) from None

    async def lookup(self, workflow_id: UUID) -> list[str]:
        try:
            raw = await self._redis.get(f"{self._prefix}{workflow_id}")
        except (RedisError, OSError) as exc:
            raise DeliveryError(
                f"could not read workflow {workflow_id}'s rooms from Redis: {type(exc).__name__}"
            ) from None
        rooms = json.loads(raw) if raw else []
        return [r for r in rooms if isinstance(r, str)]
