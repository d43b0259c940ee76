"""The process's event broadcaster: one typed ``broadcast_<event>`` method per event type.

Routes, webhooks and workers publish only through :func:`get_broadcaster`. Each method validates
its arguments against the event's Pydantic model (raising :class:`EventValidationError`, and
sending nothing, when they are wrong), wraps them in the envelope ``{id, type, timestamp, source,
data}`` and sends it to the event's rooms (see :mod:`apps.api.events.routing`). It returns the
:class:`~apps.api.websocket.models.Event` it sent.

The card imports this module as ``events.broadcaster`` from ``apps/api``; that name is an alias
of this module (see ``apps/api/events/__init__.py``), so a process has exactly one broadcaster.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import ValidationError

if TYPE_CHECKING:
    from apps.api.backends import Backend

from apps.api import metrics
from apps.api.events.emitter import DeliveryError, Emitter
from apps.api.events.routing import FALLBACK_ROOMS, rooms_for
from apps.api.events.workflow_routes import WorkflowDirectory, WorkflowRoutes
from apps.api.websocket.models import (
    PAYLOADS,
    SERVER_ONLY,
    Event,
    EventType,
    ProjectAccessRevokedData,
    WorkflowData,
)
from apps.api.websocket.rooms import project_room, user_room

logger = logging.getLogger(__name__)

#: ``source`` of each event family unless the caller names one.
DEFAULT_SOURCES = {
    "project": "project_service",
    "agent": "agent_service",
    "workflow": "workflow_service",
    "pr": "github_service",
    "issue": "github_service",
    "ai": "ai_service",
}


#: Each publishable event type's default ``source``, looked up once.
_DEFAULT_SOURCE = {
    kind: DEFAULT_SOURCES[family] for kind in PAYLOADS if (family := kind.value.split(".")[0]) in DEFAULT_SOURCES
}

#: The event types a caller may publish (the others are the server's own).
PUBLISHABLE = frozenset(PAYLOADS) - SERVER_ONLY

#: Each event type's payload validation: ``model_validate``'s own validator, called without the
#: classmethod around it.
_VALIDATE: dict[EventType, Callable[[Any], Any]] = {
    kind: model.__pydantic_validator__.validate_python for kind, model in PAYLOADS.items()
}


class EventValidationError(ValueError):
    """A ``broadcast_*`` call's arguments do not fit the event's model; nothing was sent."""

    def __init__(self, event_type: EventType, error: ValidationError) -> None:
        self.event_type = event_type
        self.errors = error.errors(include_url=False, include_input=False)
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(data)'}: {e['msg']}" for e in self.errors)
        super().__init__(f"invalid {event_type.value} event: {details}")


class BroadcasterNotConfigured(RuntimeError):
    """The process has no Socket.IO server attached and no Redis to publish through."""


__all__ = [
    "PUBLISHABLE",
    "Broadcaster",
    "BroadcasterNotConfigured",
    "DeliveryError",
    "EventValidationError",
    "get_broadcaster",
]


class Broadcaster:
    """Publishes typed events. In the service it sends through the local Socket.IO server (which
    shares them through Redis when configured); in any other process, through Redis directly.

    A call raises :class:`EventValidationError` for bad arguments (nothing sent),
    :class:`DeliveryError` when Redis cannot be reached (no other instance got the event), and
    :class:`BroadcasterNotConfigured` where there is no server and no ``REDIS_URL``.

    A process that publishes without serving opens its connection to Redis at its first call;
    ``await broadcaster.close()`` (or ``async with get_broadcaster():``) releases it.
    """

    def __init__(self, emitter: Emitter | None = None, workflow_routes: WorkflowDirectory | None = None) -> None:
        self._emitter = emitter
        self._workflows: WorkflowDirectory = workflow_routes or WorkflowRoutes()
        self._backend: Backend | None = None  # opened by this broadcaster, for a process without a server

    async def __aenter__(self) -> Broadcaster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the connection a process without a server opened to publish (nothing to do
        in the service, whose app owns its connections). The next call opens a new one."""
        backend, self._backend = self._backend, None
        if backend is not None:
            self.attach(None)
            await backend.aclose()

    def attach(self, emitter: Emitter | None, workflow_routes: WorkflowDirectory | None = None) -> None:
        """Send through ``emitter`` from now on (the app does this at startup, and detaches with
        ``None`` at shutdown)."""
        self._emitter = emitter
        self._workflows = workflow_routes or WorkflowRoutes()

    def swap(self, emitter: Emitter, workflow_routes: WorkflowDirectory | None = None) -> tuple[Any, Any]:
        """Send through ``emitter`` (an app, at its start-up); returns what it replaced, for
        :meth:`restore`."""
        previous = (self._emitter, self._workflows)
        self.attach(emitter, workflow_routes)
        return previous

    def restore(self, emitter: Emitter, previous: tuple[Any, Any]) -> None:
        """Undo :meth:`swap` (an app, at its shutdown), if ``emitter`` is still the one in use: two
        apps in one process (tests, an app mounted in another) each get theirs back."""
        if self._emitter is emitter:
            self._emitter, self._workflows = previous

    @property
    def attached(self) -> bool:
        return self._emitter is not None

    def _transport(self) -> Emitter:
        if self._emitter is None:
            from apps.api.backends import backend_for
            from apps.api.config import get_settings

            backend = backend_for(get_settings())
            publisher = backend.publisher()
            if publisher is None:
                raise BroadcasterNotConfigured(
                    "get_broadcaster() has nowhere to send: this process runs no Socket.IO server and "
                    "REDIS_URL is not set. Set REDIS_URL (the service's Redis) to publish from here."
                )
            self.attach(publisher, backend.workflow_routes())
            self._backend = backend
            return publisher
        return self._emitter

    async def publish(self, event: Event, rooms: list[str]) -> Event:
        """Send an already-built event to ``rooms``."""
        return await self._emit(self._transport(), event, rooms)

    async def _emit(self, transport: Emitter, event: Event, rooms: list[str]) -> Event:
        started = time.perf_counter()
        try:
            await transport.emit(event, rooms=rooms)
        except DeliveryError:
            metrics.publish_failed(event.type)
            raise
        metrics.published(event.type, time.perf_counter() - started)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("sent %s %s to %s", event.type.value, event.id, rooms)
        return event

    async def broadcast(self, event_type: EventType, data: Mapping[str, Any], *, source: str | None = None) -> Event:
        """Any event type with its ``data`` as a mapping (what ``POST /api/v1/events`` calls):
        validated, routed and sent as the typed ``broadcast_*`` method for that type would."""
        if event_type not in PUBLISHABLE:
            raise ValueError(f"{event_type.value} events are sent by the server only")
        return await self._validated_send(event_type, data, source)

    def _send(self, event_type: EventType, arguments: Mapping[str, Any]) -> Coroutine[Any, Any, Event]:
        """A typed method's call: its arguments (``locals()``), None meaning "not given". Returns
        the send, for the typed method to await (one coroutine fewer per emit)."""
        fields = {k: v for k, v in arguments.items() if v is not None and k != "self" and k != "source"}
        return self._validated_send(event_type, fields, arguments.get("source"))

    async def _validated_send(self, event_type: EventType, fields: Mapping[str, Any], source: str | None) -> Event:
        source = source or _DEFAULT_SOURCE[event_type]
        try:
            data = _VALIDATE[event_type](fields)
            event = Event.of(event_type, source, data)
        except ValidationError as exc:
            raise EventValidationError(event_type, exc) from None
        transport = self._transport()  # before the workflow directory is used: it may be Redis's
        rooms = rooms_for(data)
        if isinstance(data, WorkflowData):
            rooms = await self._workflow_rooms(data, rooms)
            transport = self._transport()  # the one in use now (an app may have stopped meanwhile)
        return await self._emit(transport, event, rooms or list(FALLBACK_ROOMS))

    async def _workflow_rooms(self, data: WorkflowData, rooms: list[str]) -> list[str]:
        """A workflow event's rooms: its owner's, remembered for the workflow's later events that
        name none; else those remembered (empty: none known)."""
        if rooms:
            await self._workflows.remember(data.workflow_id, rooms)
            return rooms
        return await self._workflows.lookup(data.workflow_id)

    # --- project -------------------------------------------------------------------------

    async def broadcast_project_updated(
        self,
        *,
        project_id: UUID,
        project_name: str,
        status: str,
        updated_by: UUID,
        repository_url: str | None = None,
        changes: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Event:
        """``project.updated`` to ``project:<project_id>``."""
        return await self._send(EventType.PROJECT_UPDATED, locals())

    async def broadcast_project_deleted(
        self, *, project_id: UUID, deleted_by: UUID, project_name: str | None = None, source: str | None = None
    ) -> Event:
        """``project.deleted`` to ``project:<project_id>``."""
        return await self._send(EventType.PROJECT_DELETED, locals())

    async def revoke_project_access(
        self, *, project_id: UUID, by: UUID, user_id: UUID | None = None, source: str | None = None
    ) -> Event:
        """Take connections out of ``project:<project_id>`` on every instance, each told by a
        ``project.access_revoked`` event: ``user_id``'s connections when a member is removed,
        everyone's when the project is deleted (``user_id`` None)."""
        room = project_room(project_id)
        reason = "member_removed" if user_id is not None else "project_deleted"
        try:
            data = ProjectAccessRevokedData(project_id=project_id, room=room, reason=reason, user_id=user_id, by=by)
        except ValidationError as exc:
            raise EventValidationError(EventType.PROJECT_ACCESS_REVOKED, exc) from None
        event = Event.of(EventType.PROJECT_ACCESS_REVOKED, source or DEFAULT_SOURCES["project"], data)
        transport = self._transport()
        started = time.perf_counter()
        try:
            await transport.evict(event, room=room, only_in=user_room(user_id) if user_id is not None else None)
        except DeliveryError:
            metrics.publish_failed(event.type)
            raise
        metrics.published(event.type, time.perf_counter() - started)
        logger.debug("revoked %s for %s", room, user_id or "everyone")
        return event

    # --- agent ---------------------------------------------------------------------------

    async def broadcast_agent_status_changed(
        self,
        *,
        agent_id: UUID,
        agent_name: str,
        status: str,
        availability: float,
        previous_status: str | None = None,
        current_task: str | None = None,
        source: str | None = None,
    ) -> Event:
        """``agent.status_changed`` to ``agent:<agent_id>``."""
        return await self._send(EventType.AGENT_STATUS_CHANGED, locals())

    async def broadcast_agent_connected(
        self,
        *,
        agent_id: UUID,
        agent_name: str,
        capabilities: list[str] | None = None,
        version: str | None = None,
        source: str | None = None,
    ) -> Event:
        """``agent.connected`` to ``agent:<agent_id>``."""
        return await self._send(EventType.AGENT_CONNECTED, locals())

    async def broadcast_agent_disconnected(
        self, *, agent_id: UUID, agent_name: str, reason: str | None = None, source: str | None = None
    ) -> Event:
        """``agent.disconnected`` to ``agent:<agent_id>``."""
        return await self._send(EventType.AGENT_DISCONNECTED, locals())

    # --- workflow ------------------------------------------------------------------------
    # ``project_id``/``user_id`` route the event; a call without both goes where the
    # workflow's earlier events went, or to admins if none is known.

    async def broadcast_workflow_started(
        self,
        *,
        workflow_id: UUID,
        project_id: UUID | None = None,
        user_id: UUID | None = None,
        workflow_name: str | None = None,
        status: str | None = None,
        total_steps: int | None = None,
        source: str | None = None,
    ) -> Event:
        """``workflow.started``; records the workflow's rooms for its later events."""
        return await self._send(EventType.WORKFLOW_STARTED, locals())

    async def broadcast_workflow_progress(
        self,
        *,
        workflow_id: UUID,
        status: str,
        progress: float,
        current_step: str,
        total_steps: int,
        current_step_number: int | None = None,
        estimated_time_remaining: float | None = None,
        logs: list[str] | None = None,
        errors: list[str] | None = None,
        project_id: UUID | None = None,
        user_id: UUID | None = None,
        source: str | None = None,
    ) -> Event:
        """``workflow.progress``; ``progress`` is 0 to 100."""
        return await self._send(EventType.WORKFLOW_PROGRESS, locals())

    async def broadcast_workflow_completed(
        self,
        *,
        workflow_id: UUID,
        duration_seconds: float | None = None,
        result: Mapping[str, Any] | None = None,
        project_id: UUID | None = None,
        user_id: UUID | None = None,
        source: str | None = None,
    ) -> Event:
        """``workflow.completed``."""
        return await self._send(EventType.WORKFLOW_COMPLETED, locals())

    async def broadcast_workflow_failed(
        self,
        *,
        workflow_id: UUID,
        error: str,
        status: str | None = None,
        failed_step: str | None = None,
        errors: list[str] | None = None,
        project_id: UUID | None = None,
        user_id: UUID | None = None,
        source: str | None = None,
    ) -> Event:
        """``workflow.failed`` (``status`` ``failed`` or ``cancelled``)."""
        return await self._send(EventType.WORKFLOW_FAILED, locals())

    # --- pull requests -------------------------------------------------------------------

    async def broadcast_pr_created(
        self,
        *,
        pr_id: str | int | UUID,
        project_id: UUID,
        title: str,
        author: str,
        branch: str,
        github_url: str,
        created_at: datetime,
        description: str | None = None,
        status: str | None = None,
        pr_number: int | None = None,
        source: str | None = None,
    ) -> Event:
        """``pr.created`` to ``project:<project_id>``."""
        return await self._send(EventType.PR_CREATED, locals())

    async def broadcast_pr_updated(
        self,
        *,
        pr_id: str | int | UUID,
        project_id: UUID,
        title: str,
        author: str,
        branch: str,
        github_url: str,
        created_at: datetime,
        description: str | None = None,
        status: str | None = None,
        pr_number: int | None = None,
        changes: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Event:
        """``pr.updated`` to ``project:<project_id>``."""
        return await self._send(EventType.PR_UPDATED, locals())

    async def broadcast_pr_closed(
        self,
        *,
        pr_id: str | int | UUID,
        project_id: UUID,
        title: str,
        author: str,
        branch: str,
        github_url: str,
        created_at: datetime,
        status: str | None = None,
        closed_at: datetime | None = None,
        description: str | None = None,
        pr_number: int | None = None,
        source: str | None = None,
    ) -> Event:
        """``pr.closed`` (``status`` ``closed`` or ``merged``) to ``project:<project_id>``."""
        return await self._send(EventType.PR_CLOSED, locals())

    # --- issues --------------------------------------------------------------------------

    async def broadcast_issue_created(
        self,
        *,
        issue_id: str | int | UUID,
        project_id: UUID,
        title: str,
        description: str | None = None,
        status: str | None = None,
        priority: str | None = None,
        assigned_to: UUID | None = None,
        created_by: UUID | None = None,
        issue_number: int | None = None,
        github_url: str | None = None,
        author: str | None = None,
        source: str | None = None,
    ) -> Event:
        """``issue.created`` to ``project:<project_id>``."""
        return await self._send(EventType.ISSUE_CREATED, locals())

    async def broadcast_issue_updated(
        self,
        *,
        issue_id: str | int | UUID,
        project_id: UUID,
        title: str,
        description: str | None = None,
        status: str | None = None,
        priority: str | None = None,
        assigned_to: UUID | None = None,
        created_by: UUID | None = None,
        issue_number: int | None = None,
        github_url: str | None = None,
        author: str | None = None,
        changes: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Event:
        """``issue.updated`` to ``project:<project_id>``."""
        return await self._send(EventType.ISSUE_UPDATED, locals())

    async def broadcast_issue_closed(
        self,
        *,
        issue_id: str | int | UUID,
        project_id: UUID,
        title: str,
        description: str | None = None,
        priority: str | None = None,
        assigned_to: UUID | None = None,
        created_by: UUID | None = None,
        issue_number: int | None = None,
        github_url: str | None = None,
        author: str | None = None,
        closed_by: UUID | None = None,
        source: str | None = None,
    ) -> Event:
        """``issue.closed`` to ``project:<project_id>``."""
        return await self._send(EventType.ISSUE_CLOSED, locals())

    # --- AI ------------------------------------------------------------------------------

    async def broadcast_ai_suggestion(
        self,
        *,
        suggestion_id: UUID,
        target_type: str,
        target_id: str | int | UUID,
        category: str,
        title: str,
        description: str,
        severity: str,
        confidence: float,
        project_id: UUID | None = None,
        user_id: UUID | None = None,
        suggested_action: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Event:
        """``ai.suggestion``; ``confidence`` is 0 to 1."""
        return await self._send(EventType.AI_SUGGESTION, locals())

    async def broadcast_ai_analysis_complete(
        self,
        *,
        analysis_id: UUID,
        target_type: str,
        target_id: str | int | UUID,
        summary: str,
        suggestions_count: int | None = None,
        duration_seconds: float | None = None,
        project_id: UUID | None = None,
        user_id: UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Event:
        """``ai.analysis_complete``."""
        return await self._send(EventType.AI_ANALYSIS_COMPLETE, locals())


_broadcaster = Broadcaster()


def get_broadcaster() -> Broadcaster:
    """The process's one broadcaster."""
    return _broadcaster
