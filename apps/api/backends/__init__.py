"""How this service's processes share events and state: one backend, chosen from the settings
in one place (:func:`backend_for`), used by the app, the Socket.IO server and the broadcaster.

- ``memory`` (``REDIS_URL`` unset): one process; workflow routes in memory; a process that serves
  no clients has nowhere to publish.
- ``redis`` (``REDIS_URL`` set): instances share events through a Redis channel, and workflow
  routes in Redis keys; any process can publish (:meth:`Backend.publisher`).

Projects and their members live in the database (``DATABASE_URL``, :mod:`apps.api.db`), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from apps.api.config import Settings
from apps.api.events.emitter import Emitter
from apps.api.events.workflow_routes import WorkflowDirectory


@dataclass(frozen=True)
class RedisLink:
    """What a Redis client manager needs: the server, the channel, and a client for commands
    (every command bounded by ``timeout`` seconds)."""

    url: str
    channel: str
    timeout: float
    client: Any  # redis.asyncio.Redis


class Backend(Protocol):
    name: str
    #: The Redis the instances share, or None.
    redis: RedisLink | None

    def workflow_routes(self) -> WorkflowDirectory: ...

    def publisher(self) -> Emitter | None:
        """How a process that serves no clients publishes (None: it cannot)."""
        ...

    async def ping(self) -> bool:
        """Whether what the backend depends on answers (always True in memory)."""
        ...

    async def aclose(self) -> None:
        """Release the backend's connections."""
        ...


def backend_for(settings: Settings) -> Backend:
    """The backend the settings select (``REDIS_URL``)."""
    if settings.redis_url:
        from apps.api.backends.redis import RedisBackend

        return RedisBackend(settings)
    from apps.api.backends.memory import MemoryBackend

    return MemoryBackend()
