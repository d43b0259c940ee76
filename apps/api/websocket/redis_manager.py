"""python-socketio's Redis client manager, made to fail loudly and recover quickly.

The stock ``AsyncRedisManager`` logs and drops an event it cannot publish, and retries a lost
subscription with a backoff that grows to 60 s. This subclass changes three things and nothing
else (the wire format stays python-socketio's, so any python-socketio emitter interoperates):

- a publish that fails raises :class:`RedisUnavailable` within ``timeout`` seconds;
- the subscription is retried with a backoff capped at ``max_backoff`` seconds;
- ``listening`` says whether the subscription is live, for readiness checks;
- local delivery goes through :func:`~apps.api.websocket.manager.deliver_locally`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import socketio
from redis import asyncio as aioredis

from apps.api.events.emitter import DeliveryError
from apps.api.websocket.manager import RoomIndex, deliver_locally, deliver_packet, event_packet

#: Our message on the channel: an EVENT packet already encoded, so no instance encodes it again.
#: python-socketio instances that do not know it ignore it (they only read "emit", ...).
EMIT_PACKET = "emit_packet"

logger = logging.getLogger(__name__)


class RedisUnavailable(DeliveryError):
    """Redis could not be reached: the event did not reach other instances (clients of this
    instance may have received it)."""


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class ResilientRedisManager(RoomIndex, socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(
        self,
        url: str,
        *,
        channel: str,
        write_only: bool = False,
        timeout: float = 2.0,
        max_backoff: float = 2.0,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(
            url,
            channel=channel,
            write_only=write_only,
            logger=logger,
            redis_options={"socket_connect_timeout": timeout, "health_check_interval": 5},
        )
        self._timeout = timeout
        self._max_backoff = max_backoff
        self._publisher: aioredis.Redis | None = None
        self.redis: aioredis.Redis | None = None
        self.pubsub: Any = None
        self.listening = False

    @property
    def publisher(self) -> aioredis.Redis:
        """A client for publishing and pings: every command bounded by ``timeout``."""
        if self._publisher is None:
            self._publisher = aioredis.Redis.from_url(
                self.redis_url, socket_connect_timeout=self._timeout, socket_timeout=self._timeout
            )
        return self._publisher

    async def _publish(self, data: Any) -> Any:
        try:
            return await asyncio.wait_for(self.publisher.publish(self.channel, self.json.dumps(data)), self._timeout)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(
                f"could not publish to Redis at {redacted(self.redis_url)}: {type(exc).__name__}"
            ) from None

    async def emit_json(self, event: str, json_args: str, namespace: str, room: Any) -> None:
        """Emit ``event`` (one argument, already JSON text) to ``room`` on every instance: this
        one's clients directly, the others' through one Redis message carrying the encoded packet."""
        encoded = event_packet(namespace, event, json_args)
        if not self.write_only:
            await deliver_packet(self, encoded, namespace, room)
        await self._publish(
            {"method": EMIT_PACKET, "packet": encoded, "namespace": namespace, "room": room, "host_id": self.host_id}
        )

    async def _listen(self) -> AsyncIterator[Any]:
        async for raw in super()._listen():
            try:
                message = self.json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("method") == EMIT_PACKET:
                if message.get("host_id") != self.host_id and isinstance(message.get("packet"), str):
                    await deliver_packet(self, message["packet"], message.get("namespace") or "/", message.get("room"))
                continue
            yield message

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """Deliver to this instance's clients (a message from Redis, or this instance's own emit)
        through :func:`deliver_locally`; acks and binary data take python-socketio's path."""
        if message.get("callback") is None and not message.get("binary"):
            data = message["data"]
            if isinstance(data, list):
                data = data[0] if len(data) == 1 else tuple(data)
            delivered = await deliver_locally(
                self,
                message["event"],
                data,
                message.get("namespace") or "/",
                message.get("room"),
                message.get("skip_sid"),
            )
            if delivered:
                return
        await super()._handle_emit(message)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.publisher.ping(), self._timeout))
        except (aioredis.RedisError, OSError, TimeoutError):
            return False

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        delay = 0.1
        while True:
            try:
                await self._drop_subscription()
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                self.listening = True
                if delay > 0.1:
                    logger.warning("websocket redis subscription restored on %s", redacted(self.redis_url))
                delay = 0.1
                async for message in self.pubsub.listen():
                    yield message
            except asyncio.CancelledError:
                self.listening = False
                raise
            except Exception as exc:
                if self.listening or delay == 0.1:
                    logger.error(
                        "websocket redis subscription lost (%s): retrying every %.1f s at most",
                        type(exc).__name__,
                        self._max_backoff,
                    )
                self.listening = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)

    async def _drop_subscription(self) -> None:
        """Close the previous attempt's connections before making new ones."""
        old = (self.pubsub, self.redis)
        self.pubsub = self.redis = None
        for client in old:
            if client is not None:
                try:
                    await client.aclose()
                except Exception:  # noqa: S110 - it is being thrown away
                    pass

    async def close(self) -> None:
        """Release both connections (the listener task is the server's to cancel)."""
        for client in (self._publisher, self.redis):
            if client is not None:
                await client.aclose()
