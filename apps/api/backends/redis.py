"""Instances sharing one Redis: events on a channel, workflow routes in keys."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from apps.api.backends import RedisLink
from apps.api.config import Settings
from apps.api.events.emitter import DeliveryError, Emitter
from apps.api.events.workflow_routes import RedisWorkflowRoutes, WorkflowDirectory
from apps.api.websocket.models import Event
from apps.api.websocket.protocol import NAMESPACE
from apps.transport.managers import event_packet
from apps.transport.redis_manager import PacketPublisher, PublishError, bounded_client
from apps.transport.redis_recovery import RedisRecovery

logger = logging.getLogger(__name__)


class RedisEmitter:
    """Publishes events for the instances to deliver, from a process that serves no clients.
    ``standard``: in python-socketio's own message format (for instances on the stock
    transport), instead of the encoded packet this service's instances take as is."""

    def __init__(self, publisher: PacketPublisher, *, standard: bool = False) -> None:
        self._publisher = publisher
        self._standard = standard

    async def emit(self, event: Event, *, rooms: list[str]) -> None:
        try:
            if self._standard:
                await self._publisher.publish_emit(event.type.value, event.wire(), NAMESPACE, rooms)
            else:
                await self._publisher.publish_event(
                    event.type.value, event.wire_json(), NAMESPACE, rooms, key=str(event.id)
                )
        except PublishError as exc:
            raise DeliveryError(str(exc)) from None

    async def evict(self, notice: Event, *, room: str, only_in: str | None = None) -> None:
        packet = event_packet(NAMESPACE, notice.type.value, notice.wire_json())
        try:
            await self._publisher.publish_evict(NAMESPACE, room, only_in, packet)
        except PublishError as exc:
            raise DeliveryError(str(exc)) from None


class RedisBackend:
    name = "redis"

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url
        self._settings = settings
        client = bounded_client(settings.redis_url, settings.redis_timeout_seconds)
        self.redis: RedisLink | None = RedisLink(
            settings.redis_url, settings.redis_channel, settings.redis_timeout_seconds, client
        )
        self._client = client
        self._publishers: list[PacketPublisher] = []

    def recovery(self) -> RedisRecovery | None:
        """Connection state recovery across instances: the history and the sessions in Redis
        (None when RECOVERY_ENABLED is false, or on the stock transport, which cannot recover)."""
        settings = self._settings
        if not settings.recovery_enabled or settings.websocket_transport == "stock":
            return None
        prefix = f"{settings.redis_key_prefix}recovery:{settings.redis_channel}:"
        return RedisRecovery(
            self._client,
            stream=f"{prefix}history",
            sessions_prefix=f"{prefix}session:",
            window=settings.recovery_window_seconds,
            max_events=settings.recovery_max_events,
            timeout=settings.redis_timeout_seconds,
        )

    def workflow_routes(self) -> WorkflowDirectory:
        return RedisWorkflowRoutes(self._client, prefix=self._settings.redis_key_prefix)

    def publisher(self) -> Emitter | None:
        publisher = PacketPublisher(
            self._client,
            url=self._settings.redis_url or "",
            channel=self._settings.redis_channel,
            timeout=self._settings.redis_timeout_seconds,
            recovery=self.recovery(),
            outbox_max=self._settings.redis_outbox_max_events,
        )
        self._publishers.append(publisher)
        return RedisEmitter(publisher, standard=self._settings.websocket_transport == "stock")

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())  # bounded: the client has a socket timeout
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Publish what waits in the outboxes first (for a few timeouts at most), then close."""
        for publisher in self._publishers:
            if not await publisher.flush(self._settings.redis_timeout_seconds * 5):
                logger.error("%d events of the outbox could not be published before closing", len(publisher.outbox))
            await publisher.aclose()
        await self._client.aclose()
