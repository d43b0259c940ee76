"""One process, nothing shared: what the service runs on with no ``REDIS_URL``."""

from __future__ import annotations

from apps.api.backends import RedisLink
from apps.api.events.emitter import Emitter
from apps.api.events.workflow_routes import WorkflowDirectory, WorkflowRoutes


class MemoryBackend:
    name = "memory"
    redis: RedisLink | None = None

    def workflow_routes(self) -> WorkflowDirectory:
        return WorkflowRoutes()

    def publisher(self) -> Emitter | None:
        return None

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass
