"""Instances sharing one Redis: events on a channel, workflow routes in keys."""

from __future__ import annotations

from redis.exceptions import RedisError

from apps.api.backends import RedisLink
from apps.api.config import Settings
from apps.api.events.emitter import DeliveryError, Emitter
from apps.api.events.workflow_routes import RedisWorkflowRoutes, WorkflowDirectory
from apps.api.websocket.models import Event
from apps.api.websocket.protocol import NAMESPACE
from apps.transport.managers import event_packet
from apps.transport.redis_manager import PacketPublisher, PublishError, bounded_client


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
                packet = event_packet(NAMESPACE, event.type.value, event.wire_json())
                await self._publisher.publish_packet(packet, NAMESPACE, rooms)
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

    def workflow_routes(self) -> WorkflowDirectory:
        return RedisWorkflowRoutes(self._client, prefix=self._settings.redis_key_prefix)

    def publisher(self) -> Emitter | None:
        publisher = PacketPublisher(
            self._client,
            url=self._settings.redis_url or "",
            channel=self._settings.redis_channel,
            timeout=self._settings.redis_timeout_seconds,
        )
        return RedisEmitter(publisher, standard=self._settings.websocket_transport == "stock")

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())  # bounded: the client has a socket timeout
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        await self._client.aclose()
