"""python-socketio's Redis client manager, made to fail loudly where a caller can act on it,
recover quickly, and keep local things local.

The wire format on the channel stays python-socketio's (any python-socketio emitter or server
interoperates), plus messages of our own, which python-socketio instances ignore:
``emit_packet``, an EVENT packet already encoded, so that no instance encodes it again;
``evict``, which takes connections out of a room on every instance, telling each; and
``disconnect_connections``, which disconnects connections on every instance, telling each. What
changes:

- :meth:`RedisManager.emit_json` (the fast path a publisher uses) raises :class:`PublishError`
  within ``timeout`` when Redis cannot be reached. python-socketio's own callers (``emit``,
  ``close_room``, a remote ``enter_room``, ack callbacks) keep python-socketio's documented
  behaviour: a failed publish is logged and dropped, never raised into them.
- An emit addressed to one connection of this instance (a welcome, an error) is delivered here
  and never published.
- Every message from the channel is handled in its own ``try``: an error handling one is logged
  and the next is handled, on the same subscription (python-socketio's loop delivered inside its
  generator, so an error dropped the subscription and lost what was published meanwhile).
- A lost subscription is retried with a backoff capped at ``max_backoff`` seconds (python-socketio:
  60 s); ``listening`` says whether it is live, for readiness checks.
- Local delivery goes through :func:`~apps.transport.managers.deliver_locally` (no Task per
  recipient).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import socketio
from redis import asyncio as aioredis

from apps.transport.managers import (
    RoomIndex,
    deliver_locally,
    deliver_packet,
    disconnect_locally,
    event_packet,
    evict_locally,
    packet_head,
)
from apps.transport.recovery import format_offset, parse_offset
from apps.transport.redis_recovery import RedisRecovery, recorded_body, recorded_message

#: Our messages on the channel: an EVENT packet already encoded; connections to take out of a room.
EMIT_PACKET = "emit_packet"
EVICT = "evict"
#: ... and connections to disconnect, told first. Not python-socketio's own ``disconnect`` (one
#: sid, no notice), which keeps its meaning on the channel.
DISCONNECT = "disconnect_connections"

logger = logging.getLogger(__name__)


class PublishError(RuntimeError):
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


def bounded_client(url: str, timeout: float) -> aioredis.Redis:
    """A Redis client whose every command (and connect) is bounded by ``timeout`` seconds."""
    return aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


class PacketPublisher:
    """Publishes on the channel for instances to deliver: what a process that serves no clients
    uses (a worker, a script), and what :class:`RedisManager` publishes through. Every publish
    raises :class:`PublishError` when Redis cannot be reached within ``timeout``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        url: str,
        channel: str,
        timeout: float,
        host_id: str = "",
        recovery: RedisRecovery | None = None,
        outbox_max: int = 10_000,
    ) -> None:
        self.client = client
        #: with connection state recovery: every event is added to the history as it is published
        self.recovery = recovery
        #: events Redis could not take yet, oldest first (with recovery only; see publish_event)
        self.outbox: deque[tuple[str, str, Any, tuple[str, ...], str]] = deque()
        self.outbox_max = outbox_max
        self._drain: asyncio.Task[None] | None = None
        self.url = url
        self.channel = channel
        self.timeout = timeout
        self.host_id = host_id
        self._encode = socketio.packet.Packet.json.dumps

    async def publish(self, message: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.client.publish(self.channel, self._encode(message)), self.timeout)
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            raise PublishError(f"could not publish to Redis at {redacted(self.url)}: {type(exc).__name__}") from None

    async def publish_event(self, event: str, json_args: str, namespace: str, room: Any, key: str = "") -> None:
        """An event with one argument given as JSON text, for instances of this transport.

        With recovery it is added to the history as it is published (one script: the channel's
        order is the history's), once per ``key`` (the event's id). When Redis cannot take it,
        it waits in the outbox, and so does every later event (order is kept), until Redis is
        back: the outbox publishes them in order, retrying, and a retry of one Redis did take
        (an answer lost) does nothing. :class:`PublishError` only when the outbox is full
        (``outbox_max``): that event was not taken. Without recovery, a failure raises at once."""
        if self.recovery is None:
            await self.publish_packet(event_packet(namespace, event, json_args), namespace, room)
            return
        body = recorded_body(packet_head(namespace, event), json_args)
        item = (body, namespace, room, recorded_message(EMIT_PACKET, body, namespace, room, self.host_id), key)
        if not self.outbox:
            try:
                await self._publish_recorded(item)
                return
            except PublishError as exc:
                logger.warning("%s: keeping events in the outbox until Redis takes them", exc)
        if len(self.outbox) >= self.outbox_max:
            raise PublishError(
                f"Redis at {redacted(self.url)} is unreachable and the outbox is full ({self.outbox_max} events)"
            )
        self.outbox.append(item)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.ensure_future(self._drain_outbox())

    async def _publish_recorded(self, item: tuple[str, str, Any, tuple[str, ...], str]) -> None:
        assert self.recovery is not None
        body, namespace, room, message, key = item
        try:
            await asyncio.wait_for(
                self.recovery.publish(self.channel, body, namespace, room, message, key), self.timeout
            )
        except (aioredis.RedisError, OSError, TimeoutError) as exc:
            raise PublishError(f"could not publish to Redis at {redacted(self.url)}: {type(exc).__name__}") from None

    async def _drain_outbox(self) -> None:
        delay = 0.05
        while self.outbox:
            try:
                await self._publish_recorded(self.outbox[0])
            except PublishError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.outbox.popleft()
            delay = 0.05
            if not self.outbox:
                logger.warning("Redis took every event of the outbox")

    async def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the outbox is empty; whether it is."""
        if self._drain is not None and not self._drain.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drain), timeout)
        return not self.outbox

    async def aclose(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain

    async def publish_packet(self, encoded: str, namespace: str, room: Any) -> None:
        """An encoded EVENT packet, for instances of this transport."""
        await self.publish(
            {"method": EMIT_PACKET, "packet": encoded, "namespace": namespace, "room": room, "host_id": self.host_id}
        )

    async def publish_evict(self, namespace: str, room: Any, only_in: Any = None, notice: str | None = None) -> None:
        """Every instance takes its connections out of ``room`` (only those also in ``only_in``,
        when given), sending each the encoded packet ``notice`` first."""
        await self.publish(
            {
                "method": EVICT,
                "namespace": namespace,
                "room": room,
                "only_in": only_in,
                "notice": notice,
                "host_id": self.host_id,
            }
        )

    async def publish_disconnect(self, namespace: str, target: Any, notice: str | None = None) -> None:
        """Every instance disconnects its connections that ``target`` names (see
        :meth:`~apps.transport.managers.RoomIndex.select_connections`), sending each the encoded
        packet ``notice`` first."""
        await self.publish(
            {"method": DISCONNECT, "namespace": namespace, "target": target, "notice": notice, "host_id": self.host_id}
        )

    async def publish_emit(self, event: str, data: Any, namespace: str, room: Any) -> None:
        """An event with one JSON argument in python-socketio's own format, which any
        python-socketio server with a Redis manager delivers."""
        await self.publish(
            {
                "method": "emit",
                "event": event,
                "data": [data],
                "binary": False,
                "namespace": namespace,
                "room": room,
                "skip_sid": None,
                "callback": None,
                "host_id": self.host_id,
            }
        )


class RedisManager(RoomIndex, socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's ``AsyncRedisManager`` (see the module docstring for what differs).

    ``client`` is the Redis client to publish through (one is made, with ``timeout`` on every
    command, when it is not given); the subscription has a connection of its own.
    """

    def __init__(
        self,
        url: str,
        *,
        channel: str,
        write_only: bool = False,
        timeout: float = 2.0,
        max_backoff: float = 2.0,
        logger: logging.Logger | None = None,
        client: aioredis.Redis | None = None,
        recovery: RedisRecovery | None = None,
        outbox_max: int = 10_000,
    ) -> None:
        super().__init__(
            url,
            recovery=recovery,
            channel=channel,
            write_only=write_only,
            logger=logger,
            redis_options={"socket_connect_timeout": timeout, "health_check_interval": 5},
        )
        self._owns_client = client is None
        self.publisher = PacketPublisher(
            client or bounded_client(url, timeout),
            url=url,
            channel=channel,
            timeout=timeout,
            host_id=self.host_id,
            recovery=recovery,
            outbox_max=outbox_max,
        )
        self._max_backoff = max_backoff
        self.redis: aioredis.Redis | None = None
        self.pubsub: Any = None
        self.listening = False
        #: the newest position of the history delivered from the channel (None before the first)
        self._last_seen: tuple[int, int] | None = None

    # --- publishing -----------------------------------------------------------------------

    async def _publish(self, data: Any) -> None:
        """python-socketio's internal publish: a failure is logged, not raised (its documented
        behaviour; its callers do not expect an exception)."""
        try:
            await self.publisher.publish(data)
        except PublishError as exc:
            logger.warning("%s (%s dropped)", exc, data.get("method") if isinstance(data, dict) else data)

    async def emit_json(self, event: str, json_args: str, namespace: str, room: Any, key: str = "") -> None:
        """Emit ``event`` (one argument, already JSON text) to ``room`` on every instance: this
        one's clients directly, the others' through one message carrying the encoded packet.
        Raises :class:`PublishError` when Redis cannot be reached. With recovery, this instance's
        clients get it as the others' do, from the channel (in the history's order), and an event
        Redis cannot take waits in the outbox (:meth:`PacketPublisher.publish_event`)."""
        if self.publisher.recovery is not None:
            await self.publisher.publish_event(event, json_args, namespace, room, key)
            return
        encoded = event_packet(namespace, event, json_args)
        if not self.write_only:
            await deliver_packet(self, encoded, namespace, room)
        await self.publisher.publish_packet(encoded, namespace, room)

    async def evict(self, namespace: str, room: Any, *, only_in: Any = None, notice: str | None = None) -> None:
        """Take connections out of ``room`` on every instance (see :func:`evict_locally`): here at
        once, on the others through the channel. Raises :class:`PublishError` when Redis cannot be
        reached (this instance's connections have left)."""
        if not self.write_only:
            evict_locally(self, namespace, room, only_in, notice)
        await self.publisher.publish_evict(namespace, room, only_in, notice)

    async def disconnect_connections(self, namespace: str, target: Any, *, notice: str | None = None) -> int:
        """Disconnect the connections ``target`` names on every instance, telling each first (see
        :func:`~apps.transport.managers.disconnect_locally`): here at once, on the others through
        the channel. Returns how many were here. Raises :class:`PublishError` when Redis cannot be
        reached (this instance's have been disconnected)."""
        here = [] if self.write_only else await disconnect_locally(self, namespace, target, notice)
        await self.publisher.publish_disconnect(namespace, target, notice)
        return len(here)

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        namespace = namespace or "/"
        if not self.write_only and self.is_local_sid(namespace, room):
            # one connection of this instance: nothing for the other instances to do
            if callback is None and await deliver_locally(self, event, data, namespace, room, skip_sid):
                return
            await socketio.AsyncManager.emit(
                self, event, data, namespace, room=room, skip_sid=skip_sid, callback=callback
            )
            return
        await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)

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

    # --- listening ------------------------------------------------------------------------

    async def _thread(self) -> None:
        """Handle every message published on the channel, each on its own (python-socketio's
        loop, with an error in one message isolated from the rest)."""
        while True:
            try:
                async for raw in self._listen():
                    await self._handle_message(raw)
                logger.error("websocket redis listener ended unexpectedly; listening again")
            except asyncio.CancelledError:
                raise
            except Exception:  # the subscription's own machinery, not a message
                logger.exception("websocket redis listener failed; listening again")
            await asyncio.sleep(0.1)

    async def _handle_message(self, raw: Any) -> None:
        try:
            message = raw if isinstance(raw, dict) else self.json.loads(raw)
        except ValueError:
            return
        if not isinstance(message, dict) or "method" not in message:
            return
        method = message["method"]
        try:
            if method == "callback":
                await self._handle_callback(message)
            elif method == EMIT_PACKET and isinstance(message.get("offset"), str):
                await self._deliver_recorded(message)  # this instance's own too: in the history's order
            elif message.get("host_id") == self.host_id:
                return
            elif method == EMIT_PACKET:
                if isinstance(message.get("packet"), str):
                    await deliver_packet(self, message["packet"], message.get("namespace") or "/", message.get("room"))
            elif method == EVICT:
                notice = message.get("notice")
                evict_locally(
                    self,
                    message.get("namespace") or "/",
                    message.get("room"),
                    message.get("only_in"),
                    notice if isinstance(notice, str) else None,
                )
            elif method == DISCONNECT:
                notice = message.get("notice")
                await disconnect_locally(
                    self,
                    message.get("namespace") or "/",
                    message.get("target"),
                    notice if isinstance(notice, str) else None,
                )
            elif method == "emit":
                await self._handle_emit(message)
            elif method == "disconnect":
                await self._handle_disconnect(message)
            elif method == "enter_room":
                await self._handle_enter_room(message)
            elif method == "leave_room":
                await self._handle_leave_room(message)
            elif method == "close_room":
                await self._handle_close_room(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("websocket redis message %r could not be handled; handling the next", method)

    async def _deliver_recorded(self, message: dict[str, Any]) -> None:
        """An event of the history: its packet carries its offset (``<body>,"<offset>"]``), taken
        off for the connections that take none."""
        packet, offset = message.get("packet"), message["offset"]
        position = parse_offset(offset)
        suffix = f',"{offset}"]'
        if self.write_only or not isinstance(packet, str) or position is None or not packet.endswith(suffix):
            return
        if self._last_seen is not None and position <= self._last_seen:
            return  # delivered already (caught up from the history after a lost subscription)
        self._last_seen = position
        plain = packet[: -len(suffix)] + "]" if self.plain_sids else None
        await deliver_packet(
            self, packet, message.get("namespace") or "/", message.get("room"), position=position, plain=plain
        )

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        delay = 0.1
        while True:
            try:
                await self._drop_subscription()
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                await self._catch_up()
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

    async def _catch_up(self) -> None:
        """Subscribed again after losing the subscription: deliver what the history got meanwhile,
        in order, before what the channel brings now (which repeats none of it)."""
        recovery = self.publisher.recovery
        if recovery is None or self._last_seen is None or self.write_only:
            return
        entries = await recovery.entries_after(format_offset(self._last_seen))
        for entry in entries:
            message = {"packet": entry.packet, "offset": format_offset(entry.position), "namespace": entry.namespace}
            await self._deliver_recorded({**message, "room": sorted(entry.rooms)})
        if entries:
            logger.warning("websocket redis subscription restored: %d events delivered from the history", len(entries))

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

    # --- health and lifecycle -------------------------------------------------------------

    async def close(self) -> None:
        """Stop listening and release the connections this manager made."""
        task = getattr(self, "thread", None)
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - it is being stopped
                pass
        await self._drop_subscription()
        if not await self.publisher.flush(self.publisher.timeout * 5):
            logger.error("%d events of the outbox could not be published before closing", len(self.publisher.outbox))
        await self.publisher.aclose()
        if self._owns_client:
            await self.publisher.client.aclose()
