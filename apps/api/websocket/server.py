"""The only module that builds Socket.IO objects: the server, the broadcaster's emitter, and the
ASGI app that serves Socket.IO beside the HTTP API.

Clients connect with ``io("http://host:8000/ws")``: namespace ``/ws`` on the default Engine.IO
path ``/socket.io/``. Two aliases reach the same server: the path ``/ws/socket.io/`` (for clients
configured with ``path: "/ws/socket.io"``), and a plain WebSocket to ``/ws`` (``websocat
ws://localhost:8000/ws``), which speaks raw Engine.IO v4.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from apps.api.config import Settings
from apps.api.events.workflow_routes import RedisWorkflowRoutes
from apps.api.websocket.engine import EngineServer
from apps.api.websocket.manager import LocalManager
from apps.api.websocket.models import Event
from apps.api.websocket.protocol import NAMESPACE, SOCKETIO_PATH
from apps.api.websocket.redis_manager import ResilientRedisManager

ASGIApp = Any  # an ASGI callable

logger = logging.getLogger(__name__)


class EventServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server on :class:`~apps.api.websocket.engine.EngineServer`, closing a
    connection that sends a packet it cannot decode (as the Node server does) with one warning
    line, instead of logging a traceback per packet."""

    def _engineio_server_class(self) -> type:
        return EngineServer

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            logger.warning(
                "websocket malformed packet from connection %s (%s): closing it", eio_sid, type(exc).__name__
            )
            self._binary_packet.pop(eio_sid, None)
            await self.eio.disconnect(eio_sid)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        # socket.io-parser's rule: an event's payload is a non-empty array led by the event name.
        if not (isinstance(data, list) and data and isinstance(data[0], str)):
            raise ValueError("an event must be a non-empty array whose first item is the event name")
        await super()._handle_event(eio_sid, namespace, id, data)


def _library_logger(name: str) -> logging.Logger:
    """python-socketio/engineio log through these (quiet unless something is wrong), so their lines
    reach our handlers, formats and filters instead of handlers of their own."""
    library_logger = logging.getLogger(f"{__name__}.{name}")
    library_logger.setLevel(logging.WARNING)
    return library_logger


def create_redis_manager(settings: Settings, *, write_only: bool = False) -> ResilientRedisManager:
    assert settings.redis_url, "REDIS_URL is not set"
    return ResilientRedisManager(
        settings.redis_url,
        channel=settings.redis_channel,
        write_only=write_only,
        timeout=settings.redis_timeout_seconds,
        logger=_library_logger("socketio"),
    )


def create_server(settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server: alone in memory, or sharing rooms' events through Redis."""
    origins: str | list[str] = "*" if settings.cors_origins == ["*"] else settings.cors_origins
    manager = create_redis_manager(settings) if settings.redis_url else LocalManager()
    return EventServer(
        client_manager=manager,
        async_mode="asgi",
        namespaces="*",  # every namespace reaches a handler; all but /ws are refused with a reason
        cors_allowed_origins=origins,
        cors_credentials=True,
        max_http_buffer_size=settings.max_payload_bytes,
        ping_interval=settings.ping_interval_seconds,
        ping_timeout=settings.ping_timeout_seconds,
        max_send_buffer_bytes=settings.websocket_max_buffer_bytes,
        logger=_library_logger("socketio"),
        engineio_logger=_library_logger("engineio"),
    )


class SocketIOEmitter:
    """The broadcaster's emitter: through the server in a process that serves clients, or through
    a write-only Redis manager in one that does not (a worker, a script)."""

    def __init__(self, target: socketio.AsyncServer | socketio.AsyncManager) -> None:
        self._manager: LocalManager | ResilientRedisManager = getattr(target, "manager", target)

    async def emit(self, event: Event, *, rooms: list[str]) -> None:
        # The envelope is serialised once, as JSON, and framed once for every recipient.
        await self._manager.emit_json(event.type.value, event.wire_json(), NAMESPACE, rooms)


def create_publisher(settings: Settings) -> tuple[SocketIOEmitter, RedisWorkflowRoutes]:
    """What the broadcaster needs in a process with no Socket.IO server: a write-only Redis
    manager to publish through, and the shared workflow directory."""
    manager = create_redis_manager(settings, write_only=True)
    return SocketIOEmitter(manager), RedisWorkflowRoutes(manager.publisher, prefix=settings.redis_key_prefix)


class PathAliases:
    """ASGI middleware mapping the alias paths onto ``/socket.io/``."""

    _ALIAS_PREFIX = f"{NAMESPACE}/{SOCKETIO_PATH}"
    _RAW_WEBSOCKET_PATHS = (NAMESPACE, f"{NAMESPACE}/")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path.startswith(self._ALIAS_PREFIX):
                scope = self._with_path(scope, path[len(NAMESPACE) :])
            elif scope["type"] == "websocket" and path in self._RAW_WEBSOCKET_PATHS:
                scope = self._with_path(scope, f"/{SOCKETIO_PATH}/")
                query = scope.get("query_string", b"")
                if b"EIO=" not in query:
                    query = b"EIO=4&transport=websocket" + (b"&" + query if query else b"")
                scope["query_string"] = query
        await self.app(scope, receive, send)

    @staticmethod
    def _with_path(scope: dict[str, Any], path: str) -> dict[str, Any]:
        return {**scope, "path": path, "raw_path": path.encode()}


def create_asgi_app(sio: socketio.AsyncServer, http_app: ASGIApp) -> ASGIApp:
    """Socket.IO at ``/socket.io/`` (and its aliases); everything else goes to ``http_app``."""
    return PathAliases(socketio.ASGIApp(sio, other_asgi_app=http_app, socketio_path=SOCKETIO_PATH))
