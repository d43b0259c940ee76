"""Handlers for what clients send in namespace ``/ws``: connect, disconnect, subscribe,
unsubscribe, ``debug:rooms``, ``ping``, and anything else (answered ``UNKNOWN_EVENT``).

Every handler answers through the ack when the client asks for one; bad input gets
``{status: "error", code, message}`` and never affects another connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import socketio

from apps.api.websocket.auth import AuthError, TokenVerifier, extract_token
from apps.api.websocket.connections import Connection, Connections
from apps.api.websocket.models import ConnectionEstablishedData, Event, EventType
from apps.api.websocket.protocol import INSTANCE_ID, NAMESPACE, ClientEvent, ErrorCode, error, success
from apps.api.websocket.rooms import RoomError, RoomKind, auto_rooms, check_access, parse_room

logger = logging.getLogger(__name__)

Ack = dict[str, object]


class Membership(Protocol):
    async def is_member(self, project_id: UUID, user_id: UUID) -> bool: ...


def _guarded(handler: Callable[..., Awaitable[Ack]]) -> Callable[..., Awaitable[Ack]]:
    """The checks every client event passes: a connection that is known, within its rate limit,
    sending at most one argument; an unexpected exception becomes an ``INTERNAL_ERROR`` ack
    instead of a lost reply."""

    @functools.wraps(handler)
    async def wrapper(self: ClientEvents, sid: str, *args: Any) -> Ack:
        conn = self.connections.get(sid)
        if conn is None:
            return error(ErrorCode.AUTH_FAILED, "Not connected")
        if not conn.limiter.take():
            return error(ErrorCode.RATE_LIMITED, "Too many requests on this connection; slow down")
        if len(args) > 1:
            return error(ErrorCode.INVALID_REQUEST, "Send one argument (an object) and, optionally, an ack callback")
        try:
            return await handler(self, conn, *args)
        except Exception:
            logger.exception("websocket handler failed sid=%s user=%s", sid, conn.principal.user_id)
            return error(ErrorCode.INTERNAL_ERROR, "The server could not handle this request")

    return wrapper


class ClientEvents:
    def __init__(
        self,
        sio: socketio.AsyncServer,
        *,
        verifier: TokenVerifier,
        membership: Membership,
        connections: Connections,
        max_rooms: int,
        disconnect_on_expiry: bool,
    ) -> None:
        self.sio = sio
        self.verifier = verifier
        self.membership = membership
        self.connections = connections
        self.max_rooms = max_rooms
        self.disconnect_on_expiry = disconnect_on_expiry
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self) -> None:
        on = functools.partial(self.sio.on, namespace=NAMESPACE)
        on("connect", self.connect)
        on("disconnect", self.disconnect)
        on(ClientEvent.SUBSCRIBE, self.subscribe)
        on(ClientEvent.UNSUBSCRIBE, self.unsubscribe)
        on(ClientEvent.DEBUG_ROOMS, self.debug_rooms)
        on(ClientEvent.PING, self.ping)
        on("*", self.unknown)
        self.sio.on("connect", self.wrong_namespace, namespace="*")

    # --- connection lifecycle -------------------------------------------------------------

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> bool:
        remote = _remote_addr(environ)
        token = extract_token(
            auth, authorization=environ.get("HTTP_AUTHORIZATION"), query_string=environ.get("QUERY_STRING")
        )
        try:
            principal = self.verifier.verify(token)
        except AuthError as exc:
            logger.warning("websocket connection refused sid=%s remote=%s reason=%s", sid, remote, exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(exc.message, {"content": exc.as_dict()}) from None
        self._keep_only_what_is_needed_of(sid, environ)
        conn = self.connections.add(sid, principal, remote)
        rooms = auto_rooms(principal)
        for room in rooms:
            await self.sio.enter_room(sid, room, namespace=NAMESPACE)
        self._schedule_expiry(conn)
        # The CONNECT packet is sent when this handler returns; the welcome follows it.
        self._spawn(self._welcome(sid, principal.user_id, rooms))
        logger.info(
            "websocket connected sid=%s user=%s remote=%s admin=%s", sid, principal.user_id, remote, principal.is_admin
        )
        return True

    def _keep_only_what_is_needed_of(self, sid: str, environ: dict[str, Any]) -> None:
        """python-socketio keeps the request's environ for the whole session: replace it with a
        small dict of what a later connect reads (a dict does not shrink when keys are deleted)."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if self.sio.environ.get(eio_sid) is environ:
            self.sio.environ[eio_sid] = {key: environ[key] for key in _ENVIRON_KEPT if key in environ}

    async def disconnect(self, sid: str, reason: str | None = None) -> None:
        conn = self.connections.remove(sid)
        if conn is not None:
            logger.info(
                "websocket disconnected sid=%s user=%s remote=%s reason=%s",
                sid,
                conn.principal.user_id,
                conn.remote_addr,
                reason,
            )

    async def wrong_namespace(self, namespace: str, sid: str, environ: dict[str, Any], auth: object = None) -> bool:
        logger.warning("websocket connection refused namespace=%s remote=%s", namespace, _remote_addr(environ))
        content = {
            "code": ErrorCode.INVALID_NAMESPACE,
            "message": f"Namespace {namespace!r} does not exist: connect with io('http://<host>:8000{NAMESPACE}')",
        }
        raise socketio.exceptions.ConnectionRefusedError(content["message"], {"content": content})

    async def _welcome(self, sid: str, user_id: UUID, rooms: list[str]) -> None:
        event = Event(
            type=EventType.CONNECTION_ESTABLISHED,
            source="websocket_server",
            data=ConnectionEstablishedData(connection_id=sid, user_id=user_id, rooms=rooms, instance_id=INSTANCE_ID),
        )
        await self.sio.emit(event.type.value, event.wire(), to=sid, namespace=NAMESPACE)

    def _schedule_expiry(self, conn: Connection) -> None:
        expires_at = conn.principal.expires_at
        if not self.disconnect_on_expiry or expires_at is None:
            return
        delay = (expires_at - datetime.now(UTC)).total_seconds() + self.verifier.leeway_seconds
        conn.expiry = asyncio.get_running_loop().call_later(max(delay, 0), self._expired, conn.sid)

    def _expired(self, sid: str) -> None:
        self._spawn(self._expire(sid))

    async def _expire(self, sid: str) -> None:
        logger.info("websocket token expired sid=%s: disconnecting", sid)
        await self.sio.disconnect(sid, namespace=NAMESPACE)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- client events --------------------------------------------------------------------

    @_guarded
    async def subscribe(self, conn: Connection, data: object = None) -> Ack:
        try:
            room = parse_room(_room_field(data))
            is_member = False
            if room.kind is RoomKind.PROJECT and room.id is not None and not conn.principal.is_admin:
                checked = await self._is_member(conn, room.id)
                if checked is None:
                    return error(ErrorCode.UNAVAILABLE, "Membership could not be checked; try again shortly")
                is_member = checked
            check_access(conn.principal, room, is_project_member=is_member)
        except RoomError as exc:
            logger.info(
                "websocket subscribe refused sid=%s user=%s code=%s", conn.sid, conn.principal.user_id, exc.code
            )
            return error(exc.code, exc.message)
        joined = self._rooms(conn.sid)
        if room.name not in joined:
            if len(joined) >= self.max_rooms:
                return error(ErrorCode.ROOM_LIMIT, f"A connection may be in at most {self.max_rooms} rooms")
            await self.sio.enter_room(conn.sid, room.name, namespace=NAMESPACE)
            if is_member and room.id is not None and (still := await self._is_member(conn, room.id)) is not True:
                # removed (or the project deleted) between the check and the join: the removal's
                # eviction may have run before this connection was in the room. When that cannot
                # be known, the connection leaves too: access is never kept on a failed check.
                await self.sio.leave_room(conn.sid, room.name, namespace=NAMESPACE)
                if still is None:
                    return error(ErrorCode.UNAVAILABLE, "Membership could not be checked; try again shortly")
                return error(ErrorCode.ROOM_ACCESS_DENIED, f"You are no longer a member of project {room.id}")
        return success(room=room.name, message=f"Subscribed to {room.name}")

    async def _is_member(self, conn: Connection, project_id: UUID) -> bool | None:
        """Whether the connection's user is a member of the project; None when that cannot be
        checked (the database is unreachable)."""
        try:
            return await self.membership.is_member(project_id, conn.principal.user_id)
        except Exception as exc:
            logger.warning(
                "websocket membership check failed sid=%s user=%s project=%s error=%s",
                conn.sid,
                conn.principal.user_id,
                project_id,
                type(exc).__name__,
            )
            return None

    @_guarded
    async def unsubscribe(self, conn: Connection, data: object = None) -> Ack:
        try:
            room = parse_room(_room_field(data))
        except RoomError as exc:
            return error(exc.code, exc.message)
        await self.sio.leave_room(conn.sid, room.name, namespace=NAMESPACE)
        return success(room=room.name, message=f"Unsubscribed from {room.name}")

    @_guarded
    async def debug_rooms(self, conn: Connection, data: object = None) -> Ack:
        return success(connection_id=conn.sid, user_id=str(conn.principal.user_id), rooms=self._rooms(conn.sid))

    @_guarded
    async def ping(self, conn: Connection, data: object = None) -> Ack:
        return {"status": "pong", "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}

    async def unknown(self, event: object, sid: str, *args: object) -> Ack:
        return await self._unknown(sid, str(event))

    @_guarded
    async def _unknown(self, conn: Connection, event: str = "") -> Ack:
        names = ", ".join([ClientEvent.SUBSCRIBE, ClientEvent.UNSUBSCRIBE, ClientEvent.DEBUG_ROOMS, ClientEvent.PING])
        return error(ErrorCode.UNKNOWN_EVENT, f"Unknown event {event[:64]!r}; the server handles {names}")

    def _rooms(self, sid: str) -> list[str]:
        """The rooms a connection is in, without Socket.IO's private per-connection room."""
        return sorted(r for r in self.sio.rooms(sid, namespace=NAMESPACE) if r != sid)


def _room_field(data: object) -> object:
    if isinstance(data, dict):
        return data.get("room")
    if isinstance(data, str):  # emit("subscribe", "project:<id>") is forgiven
        return data
    return None


#: What stays of a connection's WSGI-style environ once it is authenticated: what a later connect on
#: the same Engine.IO session reads. The rest (most request headers, WSGI and ASGI keys, which hold
#: the request's scope and its server protocol) would otherwise live, per connection, as long as it does.
_ENVIRON_KEPT = frozenset(
    {
        "REMOTE_ADDR",
        "QUERY_STRING",
        "REQUEST_METHOD",
        "HTTP_AUTHORIZATION",
        "HTTP_ORIGIN",
        "HTTP_ACCEPT_ENCODING",
    }
)


def _remote_addr(environ: dict[str, Any]) -> str:
    return str(environ.get("REMOTE_ADDR") or "-")
