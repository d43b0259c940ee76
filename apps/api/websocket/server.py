"""The only module that builds Socket.IO objects for the service: the server and its client
manager, the broadcaster's emitter, and how the server is mounted in the FastAPI app.

- The server is :class:`apps.transport.SocketServer` (``WEBSOCKET_TRANSPORT=service``, the
  default) or plain python-socketio (``WEBSOCKET_TRANSPORT=stock``: the fallback if an upgrade
  of python-socketio, python-engineio or uvicorn ever breaks the transport; what it does
  differently is listed in ``apps/transport/README.md``).
- Its client manager keeps rooms in memory, sharing events through Redis when the backend has a
  Redis (``REDIS_URL``).

Clients connect with ``io("http://host:8000/ws")``: namespace ``/ws`` on the default Engine.IO
path ``/socket.io/``. Two aliases reach the same server: the path ``/ws/socket.io/`` (for clients
configured with ``path: "/ws/socket.io"``), and a plain WebSocket to ``/ws`` (``websocat
ws://localhost:8000/ws``), which speaks raw Engine.IO v4.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

import socketio
from fastapi import FastAPI

from apps.api.backends import Backend
from apps.api.cluster_stats import InstanceStats
from apps.api.config import Settings
from apps.api.events.emitter import DeliveryError
from apps.api.websocket.connections import Connections
from apps.api.websocket.models import TYPE_TEXT, Event
from apps.api.websocket.protocol import INSTANCE_ID, NAMESPACE, SOCKETIO_PATH
from apps.transport import (
    LocalManager,
    MemoryRecovery,
    PublishError,
    RecoveryUnavailable,
    RedisManager,
    SocketIOMiddleware,
    SocketServer,
    event_packet,
)

logger = logging.getLogger(__name__)


def _library_logger(name: str) -> logging.Logger:
    """python-socketio/engineio log through these (quiet unless something is wrong), so their lines
    reach our handlers, formats and filters instead of handlers of their own."""
    library_logger = logging.getLogger(f"{__name__}.{name}")
    library_logger.setLevel(logging.WARNING)
    return library_logger


def create_server(settings: Settings, backend: Backend) -> socketio.AsyncServer:
    """The Socket.IO server on the configured transport, alone in memory or sharing events
    through the backend's Redis."""
    stock = settings.websocket_transport == "stock"
    options: dict[str, Any] = {
        "client_manager": _stock_manager(backend) if stock else _manager(settings, backend),
        "async_mode": "asgi",
        "namespaces": "*",  # every namespace reaches a handler; all but /ws are refused with a reason
        "cors_allowed_origins": "*" if settings.cors_origins == ["*"] else settings.cors_origins,
        "cors_credentials": True,
        "max_http_buffer_size": settings.max_payload_bytes,
        "ping_interval": settings.ping_interval_seconds,
        "ping_timeout": settings.ping_timeout_seconds,
        "logger": _library_logger("socketio"),
        "engineio_logger": _library_logger("engineio"),
    }
    if stock:
        return socketio.AsyncServer(**options)
    return SocketServer(
        **options,
        connect_timeout=settings.connect_timeout_seconds,
        max_send_buffer_bytes=settings.websocket_max_buffer_bytes,
    )


def _manager(settings: Settings, backend: Backend) -> LocalManager | RedisManager:
    if backend.redis is None:
        recovery = None
        if settings.recovery_enabled:
            recovery = MemoryRecovery(window=settings.recovery_window_seconds, max_events=settings.recovery_max_events)
        return LocalManager(recovery=recovery)
    link = backend.redis
    recovery_of = getattr(backend, "recovery", None)
    return RedisManager(
        link.url,
        channel=link.channel,
        timeout=link.timeout,
        client=link.client,
        logger=_library_logger("socketio"),
        recovery=recovery_of() if recovery_of is not None else None,
        outbox_max=settings.redis_outbox_max_events,
    )


def _stock_manager(backend: Backend) -> socketio.AsyncManager:
    if backend.redis is None:
        return socketio.AsyncManager()
    return socketio.AsyncRedisManager(
        backend.redis.url, channel=backend.redis.channel, logger=_library_logger("socketio")
    )


def start(sio: socketio.AsyncServer) -> None:
    """Start what the server runs in the background now rather than at the first client (the
    Redis subscription: readiness then reflects Redis at once)."""
    if not sio.manager_initialized:
        sio.manager_initialized = True
        sio.manager.initialize()


async def stop(sio: socketio.AsyncServer) -> None:
    """Stop the server's background work and release its manager's connections."""
    await sio.shutdown()
    manager = sio.manager
    recovery = getattr(manager, "recovery", None)
    if recovery is not None:
        await recovery.close()
    if isinstance(manager, RedisManager):
        await manager.close()
    elif isinstance(manager, socketio.AsyncRedisManager):  # stock
        task = getattr(manager, "thread", None)
        if task is not None:
            task.cancel()
        if manager.redis is not None:
            await manager.redis.aclose()


def subscription_live(sio: socketio.AsyncServer) -> bool:
    """Whether the server receives what other instances publish (True without Redis)."""
    return bool(getattr(sio.manager, "listening", True))


def outbox_size(sio: socketio.AsyncServer) -> Any:
    """How many events wait in this instance's outbox for Redis (a callable; None without one)."""
    publisher = getattr(sio.manager, "publisher", None)
    if publisher is None or getattr(publisher, "recovery", None) is None:
        return None
    return lambda: len(publisher.outbox)


def connection_sids(sio: socketio.AsyncServer) -> list[str]:
    """The sids of this instance's connections in namespace ``/ws``."""
    return list(sio.manager.rooms.get(NAMESPACE, {}).get(None, {}))


def instance_stats(sio: socketio.AsyncServer, connections: Connections) -> InstanceStats:
    """This instance's numbers for the cluster's stats (apps.api.cluster_stats)."""
    users = {str(conn.principal.user_id) for sid in connection_sids(sio) if (conn := connections.get(sid)) is not None}
    return InstanceStats(
        id=INSTANCE_ID,
        connections=len(connections),
        users=connections.users(),
        rooms=room_sizes(sio),
        user_ids=sorted(users),
    )


def room_sizes(sio: socketio.AsyncServer) -> dict[str, int]:
    """Members per room of namespace ``/ws`` on this instance (connections' own rooms left out)."""
    rooms = sio.manager.rooms.get(NAMESPACE, {})
    return {name: len(sids) for name, sids in rooms.items() if isinstance(name, str) and name not in sids}


class SocketIOEmitter:
    """The broadcaster's emitter in a process that serves clients: through the server's manager
    (which shares the event through Redis when there is one)."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio
        self._emit_json = getattr(sio.manager, "emit_json", None)

    async def emit(self, event: Event, *, rooms: list[str]) -> None:
        if self._emit_json is None:  # stock python-socketio
            await self._sio.emit(event.type.value, event.wire(), to=rooms, namespace=NAMESPACE)
            return
        try:
            # the envelope is serialised once, as JSON, and framed once for every recipient
            await self._emit_json(TYPE_TEXT[event.type], event.wire_json(), NAMESPACE, rooms, key=event.id)
        except PublishError as exc:
            raise DeliveryError(str(exc)) from None

    async def evict(self, notice: Event, *, room: str, only_in: str | None = None) -> None:
        manager = self._sio.manager
        if not isinstance(manager, LocalManager | RedisManager):
            await self._evict_here(notice, room=room, only_in=only_in)
            return
        try:
            await manager.evict(
                NAMESPACE, room, only_in=only_in, notice=event_packet(NAMESPACE, notice.type.value, notice.wire_json())
            )
        except PublishError as exc:
            raise DeliveryError(str(exc)) from None

    async def _evict_here(self, notice: Event, *, room: str, only_in: str | None) -> None:
        """Stock python-socketio: this instance's connections only (its managers have no such message)."""
        rooms = self._sio.manager.rooms.get(NAMESPACE, {})
        sids = [sid for sid in rooms.get(room, {}) if only_in is None or sid in rooms.get(only_in, {})]
        for sid in sids:
            await self._sio.emit(notice.type.value, notice.wire(), to=sid, namespace=NAMESPACE)
            await self._sio.leave_room(sid, room, namespace=NAMESPACE)


class HistoryUnavailable(Exception):
    """The history cannot be read now (Redis unreachable)."""


class RoomHistory:
    """What was sent to a room, from the transport's recovery history, for HTTP clients."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    @property
    def enabled(self) -> bool:
        return getattr(self._sio, "recovery", None) is not None

    async def since(self, room: str, since: str, limit: int) -> tuple[bool, list[dict[str, Any]]]:
        """Whether the history covers what came after ``since``, and those events of ``room``
        (at most ``limit``, oldest first): ``{offset, event}`` each."""
        recovery = getattr(self._sio, "recovery", None)
        if recovery is None:
            return False, []
        try:
            missed = await recovery.since(NAMESPACE, since, [room])
        except RecoveryUnavailable as exc:
            raise HistoryUnavailable(str(exc)) from None
        if missed is None:
            return False, []
        events = []
        for recorded in missed[:limit]:
            _, envelope, offset = json.loads(recorded.packet[len(f"2{NAMESPACE},") :])
            events.append({"offset": offset, "event": envelope})
        return True, events


class ConnectionCloser:
    """Disconnects connections on every instance, each told by ``notice`` first: all of a user's
    (``{"user": id}``, resolved on each instance through its connections table, whatever rooms the
    connections are in) or one by its sid. Through the manager's ``disconnect_connections`` message
    (apps/transport); on stock python-socketio, this instance's connections only."""

    def __init__(self, sio: socketio.AsyncServer, connections: Connections) -> None:
        self._sio = sio
        self._connections = connections
        manager = sio.manager
        if isinstance(manager, LocalManager | RedisManager):
            manager.select = self._select

    def _select(self, namespace: str, target: Any) -> list[str] | None:
        if namespace != NAMESPACE or not isinstance(target, dict) or not isinstance(target.get("user"), str):
            return None
        user = target["user"]
        sids = []
        for sid in connection_sids(self._sio):
            conn = self._connections.get(sid)
            if conn is not None and str(conn.principal.user_id) == user:
                sids.append(sid)
        return sids

    async def close_user(self, user_id: UUID, notice: Event) -> int:
        """Disconnect ``user_id``'s connections everywhere; returns how many were on this instance.
        Raises DeliveryError when the other instances could not be told (Redis unreachable)."""
        return await self._close({"user": str(user_id)}, notice)

    async def close_sid(self, sid: str, notice: Event) -> int:
        """Disconnect the connection ``sid`` wherever it is; returns 1 when it was on this instance."""
        return await self._close({"sid": sid}, notice)

    async def _close(self, target: dict[str, str], notice: Event) -> int:
        manager = self._sio.manager
        if not isinstance(manager, LocalManager | RedisManager):  # stock: here only
            sids = self._select(NAMESPACE, target) if "user" in target else None
            if sids is None:
                sids = [target["sid"]] if target["sid"] in connection_sids(self._sio) else []
            for sid in sids:
                await self._sio.emit(notice.type.value, notice.wire(), to=sid, namespace=NAMESPACE)
                await self._sio.disconnect(sid, namespace=NAMESPACE, ignore_queue=True)
            return len(sids)
        try:
            packet = event_packet(NAMESPACE, notice.type.value, notice.wire_json())
            return await manager.disconnect_connections(NAMESPACE, target, notice=packet)
        except PublishError as exc:
            raise DeliveryError(str(exc)) from None


_ALIAS_PREFIX = f"{NAMESPACE}/{SOCKETIO_PATH}"
_RAW_WEBSOCKET_PATHS = (NAMESPACE, f"{NAMESPACE}/")


def path_alias(scope: dict[str, Any]) -> dict[str, Any] | None:
    """The Socket.IO scope an alias path stands for, or None for any other path."""
    path: str = scope["path"]
    if path.startswith(_ALIAS_PREFIX):
        return _with_path(scope, path[len(NAMESPACE) :])
    if scope["type"] == "websocket" and path in _RAW_WEBSOCKET_PATHS:
        scope = _with_path(scope, f"/{SOCKETIO_PATH}/")
        query = scope.get("query_string", b"")
        if b"EIO=" not in query:
            query = b"EIO=4&transport=websocket" + (b"&" + query if query else b"")
        scope["query_string"] = query
        return scope
    return None


def _with_path(scope: dict[str, Any], path: str) -> dict[str, Any]:
    return {**scope, "path": path, "raw_path": path.encode()}


def mount(api: FastAPI, sio: socketio.AsyncServer) -> None:
    """Serve ``sio`` at ``/socket.io/`` (and its aliases) inside ``api``."""
    api.add_middleware(SocketIOMiddleware, server=sio, path=SOCKETIO_PATH, rewrite=path_alias)
