"""Handlers for what clients send in namespace ``/ws``: connect, disconnect, subscribe,
unsubscribe, ``debug:rooms``, ``ping``, ``auth:refresh``, and anything else (answered
``UNKNOWN_EVENT``).

A connection is admitted within its limits (new connections per address, connections per user
and per instance), each refusal with its code; its token is warned of (``token.expiring``) and
enforced at expiry; a connection that keeps sending past its event rate is closed, told why.

Every handler answers through the ack when the client asks for one; bad input gets
``{status: "error", code, message}`` and never affects another connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol
from uuid import UUID

import socketio

from apps.api import metrics
from apps.api.token_keys import TokenKeys, verify_token
from apps.api.websocket.auth import AuthError, TokenVerifier, extract_token
from apps.api.websocket.connections import AddressRates, Connection, Connections
from apps.api.websocket.models import (
    TYPE_TEXT,
    ConnectionClosingData,
    ConnectionEstablishedData,
    Event,
    EventType,
    TokenExpiringData,
)
from apps.api.websocket.protocol import INSTANCE_ID, NAMESPACE, ClientEvent, ErrorCode, error, success
from apps.api.websocket.rooms import ADMIN_ROOM, Room, RoomError, RoomKind, auto_rooms, check_access, parse_room
from apps.transport import RecoveryUnavailable
from apps.transport.deadlines import Deadlines

logger = logging.getLogger(__name__)

Ack = dict[str, object]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What a connection may cost (Settings: CONNECTS_PER_SECOND_PER_ADDRESS, ...)."""

    per_address_rate: float = 20
    per_address_burst: float = 100
    max_per_user: int = 100
    max_connections: int = 10_000
    expiry_warning_seconds: float = 60


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
            metrics.rate_limited("client_events")
            if not conn.overruns.take() and not conn.closing:
                self._close(conn, "rate_limited", "This connection kept sending past its rate limit")
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
        token_keys: TokenKeys | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.sio = sio
        self.verifier = verifier
        self.token_keys = token_keys
        self.membership = membership
        self.connections = connections
        self.max_rooms = max_rooms
        self.disconnect_on_expiry = disconnect_on_expiry
        self.limits = limits or ConnectionLimits()
        self._addresses = AddressRates(self.limits.per_address_rate, self.limits.per_address_burst)
        self._tasks: set[asyncio.Task[None]] = set()
        # every connection's token warning and token expiry, by sid, on one event-loop timer for
        # all the warnings and one for all the expiries (apps/transport/deadlines.py says why)
        self._warnings = Deadlines(self._warn)
        self._expiries = Deadlines(self._expired)

    def register(self) -> None:
        on = functools.partial(self.sio.on, namespace=NAMESPACE)
        on("connect", self.connect)
        on("disconnect", self.disconnect)
        on(ClientEvent.SUBSCRIBE, self.subscribe)
        on(ClientEvent.UNSUBSCRIBE, self.unsubscribe)
        on(ClientEvent.DEBUG_ROOMS, self.debug_rooms)
        on(ClientEvent.PING, self.ping)
        on(ClientEvent.REFRESH, self.refresh)
        on("*", self.unknown)
        self.sio.on("connect", self.wrong_namespace, namespace="*")

    # --- connection lifecycle -------------------------------------------------------------

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> bool:
        remote = _remote_addr(environ)
        # the cheap refusals first: a flood costs no token verification
        wait = self._addresses.take(remote)
        if wait is not None:
            self._refuse(
                sid,
                remote,
                ErrorCode.CONNECTION_RATE_LIMITED,
                "Too many new connections from your address; retry after retry_after seconds",
                retry_after=wait,
            )
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(sid, remote, ErrorCode.SERVER_FULL, "This server is full; retry later", retry_after=5.0)
        token = extract_token(
            auth, authorization=environ.get("HTTP_AUTHORIZATION"), query_string=environ.get("QUERY_STRING")
        )
        try:
            principal = await verify_token(self.verifier, self.token_keys, token)
        except AuthError as exc:
            logger.warning("websocket connection refused sid=%s remote=%s reason=%s", sid, remote, exc.reason)
            metrics.connection_refused(exc.reason)
            raise socketio.exceptions.ConnectionRefusedError(exc.message, {"content": exc.as_dict()}) from None
        if self.connections.of_user(principal.user_id) >= self.limits.max_per_user:
            self._refuse(
                sid,
                remote,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"You already have {self.limits.max_per_user} connections open; close one first",
            )
        self._keep_only_what_is_needed_of(sid, environ)
        conn = self.connections.add(sid, principal, remote)
        rooms = auto_rooms(principal)
        for room in rooms:
            await self.sio.enter_room(sid, room, namespace=NAMESPACE)
        await self._recover_rooms(conn, set(rooms))
        self._schedule_expiry(conn)
        metrics.connection_opened()
        # The CONNECT packet is sent when this handler returns; the welcome follows it.
        self._spawn(self._welcome(sid, principal.user_id, rooms))
        logger.info(
            "websocket connected sid=%s user=%s remote=%s admin=%s", sid, principal.user_id, remote, principal.is_admin
        )
        return True

    async def _recover_rooms(self, conn: Connection, auto: set[str]) -> None:
        """A connection recovering its session (the transport's connection state recovery) gets
        back the rooms it was in that it may still be in: the session must be its user's, and
        each room is checked again as ``subscribe`` checks it (a project's membership too; a
        check that cannot be made leaves the room out). What it missed of those rooms follows."""
        recovering = getattr(self.sio, "recovering", None)
        if recovering is None:  # stock python-socketio: no recovery
            return
        user = str(conn.principal.user_id)
        self.sio.keep_with_session(conn.sid, {"user": user})
        session = recovering(conn.sid)
        if session is None:
            return
        if session.data.get("user") != user:
            logger.warning("websocket recovery refused sid=%s user=%s: another user's session", conn.sid, user)
            self.sio.decline_recovery(conn.sid)
            return
        restored: list[str] = []
        left_out: list[str] = []
        for name in session.rooms:
            if name in auto:
                continue
            if len(restored) + len(auto) >= self.max_rooms or not await self._may_rejoin(conn, name):
                left_out.append(name)
                continue
            await self.sio.enter_room(conn.sid, name, namespace=NAMESPACE)
            restored.append(name)
        logger.info(
            "websocket recovering sid=%s user=%s rooms=%d left_out=%d", conn.sid, user, len(restored), len(left_out)
        )

    async def _may_rejoin(self, conn: Connection, name: str) -> bool:
        try:
            room = parse_room(name)
            is_member = False
            if room.kind is RoomKind.PROJECT and room.id is not None and not conn.principal.is_admin:
                is_member = await self._is_member(conn, room.id) is True
            check_access(conn.principal, room, is_project_member=is_member)
        except RoomError:
            return False
        return True

    def _refuse(self, sid: str, remote: str, code: str, message: str, retry_after: float | None = None) -> NoReturn:
        logger.warning("websocket connection refused sid=%s remote=%s reason=%s", sid, remote, code)
        metrics.connection_refused(code)
        if code == ErrorCode.CONNECTION_RATE_LIMITED:
            metrics.rate_limited("connects")
        content: dict[str, object] = {"code": code, "message": message}
        if retry_after is not None:
            content["retry_after"] = round(retry_after, 3)
        raise socketio.exceptions.ConnectionRefusedError(message, {"content": content})

    def _keep_only_what_is_needed_of(self, sid: str, environ: dict[str, Any]) -> None:
        """python-socketio keeps the request's environ for the whole session: replace it with a
        small dict of what a later connect reads (a dict does not shrink when keys are deleted)."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if self.sio.environ.get(eio_sid) is environ:
            self.sio.environ[eio_sid] = {key: environ[key] for key in _ENVIRON_KEPT if key in environ}

    async def disconnect(self, sid: str, reason: object = None) -> None:
        conn = self.connections.remove(sid)
        self._warnings.cancel(sid)
        self._expiries.cancel(sid)
        if conn is not None:
            logger.info(
                "websocket disconnected sid=%s user=%s remote=%s reason=%s",
                sid,
                conn.principal.user_id,
                conn.remote_addr,
                # python-socketio's reasons are short strings; stock python-socketio also runs this
                # handler for a client event named "disconnect", with whatever the client sent
                reason if isinstance(reason, str) and len(reason) <= 40 else "(not a reason)",
            )

    async def wrong_namespace(self, namespace: str, sid: str, environ: dict[str, Any], auth: object = None) -> bool:
        remote = _remote_addr(environ)
        logger.warning("websocket connection refused sid=%s namespace=%s remote=%s", sid, namespace, remote)
        metrics.connection_refused(ErrorCode.INVALID_NAMESPACE)
        content = {
            "code": ErrorCode.INVALID_NAMESPACE,
            "message": f"Namespace {namespace!r} does not exist: connect with io('http://<host>:8000{NAMESPACE}')",
        }
        raise socketio.exceptions.ConnectionRefusedError(content["message"], {"content": content})

    async def _welcome(self, sid: str, user_id: UUID, rooms: list[str]) -> None:
        data = ConnectionEstablishedData(connection_id=sid, user_id=user_id, rooms=rooms, instance_id=INSTANCE_ID)
        event = Event.of(EventType.CONNECTION_ESTABLISHED, "websocket_server", data)
        send_json = getattr(self.sio, "send_json", None)
        if send_json is None:  # stock python-socketio
            await self.sio.emit(event.type.value, event.wire(), to=sid, namespace=NAMESPACE)
            return
        # serialised as the broadcaster's events are (test_models holds wire_json to the same JSON as wire())
        await send_json(sid, TYPE_TEXT[event.type], event.wire_json(), NAMESPACE)

    def _schedule_expiry(self, conn: Connection) -> None:
        """(Re)arm the connection's token deadlines: ``token.expiring``
        ``TOKEN_EXPIRY_WARNING_SECONDS`` before its ``exp``, and the disconnect at ``exp`` plus the
        leeway."""
        self._warnings.cancel(conn.sid)
        self._expiries.cancel(conn.sid)
        expires_at = conn.principal.expires_at
        if not self.disconnect_on_expiry or expires_at is None:
            return
        left = (expires_at - datetime.now(UTC)).total_seconds()
        self._expiries.set_in(conn.sid, max(left + self.verifier.leeway_seconds, 0))
        if self.limits.expiry_warning_seconds > 0:
            self._warnings.set_in(conn.sid, max(left - self.limits.expiry_warning_seconds, 0))

    def _warn(self, sid: str) -> None:
        conn = self.connections.get(sid)
        if conn is None or conn.principal.expires_at is None:
            return
        expires_at = conn.principal.expires_at
        left = max((expires_at - datetime.now(UTC)).total_seconds(), 0.0)
        event = Event(
            type=EventType.TOKEN_EXPIRING,
            source="websocket_server",
            data=TokenExpiringData(expires_at=expires_at, seconds_left=round(left, 3)),
        )
        self._spawn(self.sio.emit(event.type.value, event.wire(), to=sid, namespace=NAMESPACE))

    def _expired(self, sid: str) -> None:
        conn = self.connections.get(sid)
        if conn is not None:
            logger.info("websocket token expired sid=%s: disconnecting", sid)
            self._close(conn, "token_expired", "The token has expired; reconnect with a fresh one")

    def _close(self, conn: Connection, reason: str, message: str, by: UUID | None = None) -> None:
        """Tell the connection why, then close it (once)."""
        conn.closing = True
        if reason != "token_expired":
            logger.warning("websocket closing sid=%s user=%s reason=%s", conn.sid, conn.principal.user_id, reason)
        self._spawn(self._tell_and_close(conn.sid, reason, message, by))

    async def _tell_and_close(self, sid: str, reason: str, message: str, by: UUID | None) -> None:
        event = Event(
            type=EventType.CONNECTION_CLOSING,
            source="websocket_server",
            data=ConnectionClosingData(reason=reason, message=message, by=by),
        )
        await self.sio.emit(event.type.value, event.wire(), to=sid, namespace=NAMESPACE)
        await self.sio.disconnect(sid, namespace=NAMESPACE)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- client events --------------------------------------------------------------------

    @_guarded
    async def subscribe(self, conn: Connection, data: object = None) -> Ack:
        ack = await self._subscribe(conn, data)
        if ack.get("status") == "success":
            metrics.subscribed()
        else:
            metrics.subscription_refused(ack.get("code"))
        return ack

    async def _subscribe(self, conn: Connection, data: object) -> Ack:
        since = data.get("since") if isinstance(data, dict) else None
        if since is not None and not isinstance(since, str):
            return error(ErrorCode.INVALID_REQUEST, "since is the offset of the last event you have (a string)")
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
        if room.name not in joined and len(joined) >= self.max_rooms:
            return error(ErrorCode.ROOM_LIMIT, f"A connection may be in at most {self.max_rooms} rooms")
        replay = getattr(self.sio, "replay", None)
        if since is not None and replay is not None:
            denials: list[Ack] = []

            async def join() -> bool:
                denied = await self._join(conn, room, is_member)
                if denied is not None:
                    denials.append(denied)
                return denied is None

            try:
                replayed = await replay(conn.sid, NAMESPACE, room.name, since, join)
            except RecoveryUnavailable:
                return error(ErrorCode.UNAVAILABLE, "The history could not be read; try again shortly")
            if denials:
                return denials[0]
            covered = replayed is not None
            return success(
                room=room.name, message=f"Subscribed to {room.name}", covered=covered, replayed=replayed or 0
            )
        denied = await self._join(conn, room, is_member)
        if denied is not None:
            return denied
        if since is not None:  # stock python-socketio: no history
            return success(room=room.name, message=f"Subscribed to {room.name}", covered=False, replayed=0)
        return success(room=room.name, message=f"Subscribed to {room.name}")

    async def _join(self, conn: Connection, room: Room, is_member: bool) -> Ack | None:
        """Put the connection in ``room`` (checked); an error ack when a membership changed meanwhile."""
        if room.name not in self._rooms(conn.sid):
            await self.sio.enter_room(conn.sid, room.name, namespace=NAMESPACE)
            if is_member and room.id is not None and (still := await self._is_member(conn, room.id)) is not True:
                # removed (or the project deleted) between the check and the join: the removal's
                # eviction may have run before this connection was in the room. When that cannot
                # be known, the connection leaves too: access is never kept on a failed check.
                await self.sio.leave_room(conn.sid, room.name, namespace=NAMESPACE)
                if still is None:
                    return error(ErrorCode.UNAVAILABLE, "Membership could not be checked; try again shortly")
                return error(ErrorCode.ROOM_ACCESS_DENIED, f"You are no longer a member of project {room.id}")
        return None

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
    async def refresh(self, conn: Connection, data: object = None) -> Ack:
        """``auth:refresh`` ``{token}``: a fresh token for the same user, taken over on the open
        connection. Its expiry (and warning) follow the new token; rooms the new token may no
        longer see are left (and named in the ack)."""
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            return error(ErrorCode.INVALID_REQUEST, "Send {token: '<a fresh JWT>'}")
        try:
            principal = await verify_token(self.verifier, self.token_keys, token)
        except AuthError as exc:
            logger.info("websocket token refresh refused sid=%s reason=%s", conn.sid, exc.reason)
            return {"status": "error", **exc.as_dict()}
        if principal.user_id != conn.principal.user_id:
            logger.warning("websocket token refresh refused sid=%s reason=other_user", conn.sid)
            return {
                "status": "error",
                "code": ErrorCode.AUTH_FAILED,
                "reason": "other_user",
                "message": "The fresh token is for another user: reconnect to change users",
            }
        conn.principal = principal
        if not conn.closing:  # before any await: the old token's deadlines must not fire meanwhile
            self._schedule_expiry(conn)
        left = await self._leave_rooms_no_longer_allowed(conn)
        if principal.is_admin and ADMIN_ROOM not in self._rooms(conn.sid):
            await self.sio.enter_room(conn.sid, ADMIN_ROOM, namespace=NAMESPACE)
        expires_at = principal.expires_at.isoformat().replace("+00:00", "Z") if principal.expires_at else None
        return success(expires_at=expires_at, left_rooms=left)

    async def _leave_rooms_no_longer_allowed(self, conn: Connection) -> list[str]:
        left = []
        for name in self._rooms(conn.sid):
            if name == ADMIN_ROOM:
                allowed = conn.principal.is_admin
            else:
                try:
                    room = parse_room(name)
                    member = False
                    if room.kind is RoomKind.PROJECT and room.id is not None and not conn.principal.is_admin:
                        member = await self._is_member(conn, room.id) is True
                    check_access(conn.principal, room, is_project_member=member)
                    allowed = True
                except RoomError:
                    allowed = False
            if not allowed:
                await self.sio.leave_room(conn.sid, name, namespace=NAMESPACE)
                left.append(name)
        return left

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
        handled = (ClientEvent.SUBSCRIBE, ClientEvent.UNSUBSCRIBE, ClientEvent.DEBUG_ROOMS, ClientEvent.PING)
        names = ", ".join([*handled, ClientEvent.REFRESH])
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
