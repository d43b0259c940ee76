"""The Socket.IO Admin UI (https://admin.socket.io) on :class:`~apps.transport.server.SocketServer`:
python-socketio's ``InstrumentedAsyncServer``, adapted to what the transport replaces.

``SocketServer.instrument(...)`` (python-socketio's signature) returns an
:class:`InstrumentedServer`. What differs from python-socketio 5.18.1's instrumentation, and why:

- **The connection's Engine.IO disconnect.** python-socketio's instrumentation re-registers the
  Engine.IO ``disconnect`` handler with one that calls ``AsyncServer._handle_eio_disconnect``,
  which would skip the transport's own (``SocketServer._on_eio_disconnect``: the connect timer,
  a pending binary packet, and a DISCONNECT handled after the events sent before it). Here it
  calls the transport's.
- **python-engineio's AsyncSocket is left alone.** python-socketio patches the *class*
  ``engineio.async_socket.AsyncSocket`` (``handle_post_request``, ``_websocket_handler``,
  ``_send_ping``) for the whole process, bound to this one server. The transport's
  :class:`~apps.transport.engine_socket.EngineSocket` replaces all three, so the patches would
  count nothing and only keep this server alive after it stops; they are undone. (The byte and
  packet counts of ``server_stats`` then cover long-polling responses only: WebSocket frames go
  out on the transport's send path, which is not counted.)
- **Only accepted connections are reported.** python-socketio reports ``socket_connected`` before
  the application's ``connect`` handler runs, so every refused connection (a bad token, a wrong
  namespace) appears as a connection that never leaves, and its timestamp is kept forever. Here it
  is reported once the handler accepted it, with the rooms the handler put it in.
- **``emit_json``** (the client managers' fast path, which bypasses ``manager.emit``) and the
  server's ``send_json`` (to one connection) are reported as ``event_sent`` too, in
  ``development`` mode, for this instance's recipients (as python-socketio reports ``emit``).
- **Credentials are never shown.** The handshake of a reported connection has its
  ``authorization``, ``proxy-authorization`` and ``cookie`` headers and its ``token`` and
  ``access_token`` query parameters replaced by ``[redacted]``.
- **Tokens and passwords in event data are never shown**: the values of :data:`REDACTED_KEYS`
  in reported events read ``[redacted]`` (a token handed over in an event, for one).
- **The list of connections reaches the admin that connected.** python-socketio 5.18.1's
  ``admin_connect`` sends ``all_sockets`` to whichever connection its loop over the namespaces saw
  last (the loop variable shadows the admin's sid).
- **A refused admin is logged** (one warning line with its address), and :meth:`shutdown` cancels
  the stats task and the upgrade checks at once (python-socketio waits up to the stats interval).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from engineio.async_socket import AsyncSocket
from socketio.async_admin import InstrumentedAsyncServer
from socketio.exceptions import ConnectionRefusedError

logger = logging.getLogger(__name__)

#: What a reported handshake shows instead of a credential.
REDACTED = "[redacted]"
#: Headers (as python-socketio names them: lower case, ``_`` for ``-``) never shown to the Admin UI.
REDACTED_HEADERS = frozenset({"authorization", "proxy_authorization", "cookie"})
#: Query parameters never shown to the Admin UI.
REDACTED_QUERY = frozenset({"token", "access_token"})
#: Keys of event data (at any depth) whose values are never shown: a token handed over in an event
#: (such as a token refresh), a password.
REDACTED_KEYS = frozenset({"token", "access_token", "refresh_token", "id_token", "password", "secret"})
#: The methods python-socketio's instrumentation patches on the AsyncSocket class.
_ASYNC_SOCKET_PATCHES = ("handle_post_request", "_websocket_handler", "_send_ping")


def redacted(value: Any) -> Any:
    """``value`` with the values of :data:`REDACTED_KEYS` replaced, in every dict it holds."""
    if isinstance(value, dict):
        return {k: REDACTED if k in REDACTED_KEYS else redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def _now(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).isoformat()


class InstrumentedServer(InstrumentedAsyncServer):  # type: ignore[misc]
    """python-socketio's Admin UI instrumentation for :class:`~apps.transport.server.SocketServer`
    (see the module docstring for what differs). Same arguments as ``AsyncServer.instrument``."""

    def instrument(self) -> None:
        self._handler = self.sio._trigger_event  # the server's own, before it is wrapped
        self._upgrade_checks: set[asyncio.Task[Any]] = set()
        before = {name: AsyncSocket.__dict__.get(name) for name in _ASYNC_SOCKET_PATCHES}
        mangled = {name for name in vars(AsyncSocket) if name.startswith("_InstrumentedAsyncServer__")}
        try:
            super().instrument()
        finally:  # leave python-engineio's class as it was (EngineSocket replaces these methods)
            for name, original in before.items():
                if original is not None:
                    setattr(AsyncSocket, name, original)
            for name in [n for n in vars(AsyncSocket) if n.startswith("_InstrumentedAsyncServer__")]:
                if name not in mangled:
                    delattr(AsyncSocket, name)
        manager = self.sio.manager
        if self.mode == "development" and hasattr(manager, "emit_json"):
            self._manager_emit_json = manager.emit_json
            manager.emit_json = self._emit_json
        if self.mode == "development" and hasattr(self.sio, "send_json"):
            self._server_send_json = self.sio.send_json
            self.sio.send_json = self._send_json

    # --- what the Admin UI is told ----------------------------------------------------------

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        sid = args[0]
        if event == "connect":
            t = time.time()
            accepted = await self._handler(event, namespace, *args)  # a refusal raises, or is False
            if accepted is not False:
                await self._report_connected(sid, namespace, t)
            return accepted
        if event == "disconnect":
            if self.sio.manager._timestamps.pop(sid, None) is not None:
                reason = args[1] if len(args) > 1 else None
                await self.sio.emit(
                    "socket_disconnected", (namespace, sid, reason, _now()), namespace=self.admin_namespace
                )
        else:
            await self.sio.emit(
                "event_received", (namespace, sid, redacted([event, *args[1:]]), _now()), namespace=self.admin_namespace
            )
        return await self._handler(event, namespace, *args)

    async def _report_connected(self, sid: str, namespace: str, t: float) -> None:
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, namespace)
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is None:  # gone while its handler ran
            return
        self.sio.manager._timestamps[sid] = t
        await self.sio.emit(
            "socket_connected",
            (self.serialize_socket(sid, namespace, eio_sid), _now(t)),
            namespace=self.admin_namespace,
        )
        if not socket.upgraded:
            task = self.sio.start_background_task(self._check_for_upgrade, eio_sid, sid, namespace)
            self._upgrade_checks.add(task)
            task.add_done_callback(self._upgrade_checks.discard)

    async def _emit_json(self, event: str, json_args: str, namespace: str, room: Any, **kwargs: Any) -> None:
        await self._manager_emit_json(event, json_args, namespace, room, **kwargs)
        await self._report_sent(event, json_args, namespace, room)

    async def _send_json(self, sid: str, event: str, json_args: str, namespace: str) -> None:
        await self._server_send_json(sid, event, json_args, namespace)
        await self._report_sent(event, json_args, namespace, sid)

    async def _report_sent(self, event: str, json_args: str, namespace: str, room: Any) -> None:
        if namespace == self.admin_namespace:
            return
        participants = [sid for sid, _ in self.sio.manager.get_participants(namespace, room)]
        if not participants:
            return
        event_data = redacted([event, json.loads(json_args)])
        sent = _now()
        for sid in participants:
            await self.sio.emit("event_sent", (namespace, sid, event_data, sent), namespace=self.admin_namespace)

    def serialize_socket(self, sid: str, namespace: str, eio_sid: str | None = None) -> dict[str, Any]:
        serialized: dict[str, Any] = super().serialize_socket(sid, namespace, eio_sid)
        handshake = serialized["handshake"]
        handshake["headers"] = {
            name: REDACTED if name in REDACTED_HEADERS else value for name, value in handshake["headers"].items()
        }
        handshake["query"] = {
            name: REDACTED if name in REDACTED_QUERY else value for name, value in handshake["query"].items()
        }
        return serialized

    # --- the transport's own handlers -------------------------------------------------------

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        self.event_buffer.push("rawDisconnection")
        await self.sio._on_eio_disconnect(eio_sid, reason)

    async def admin_connect(self, sid: str, environ: dict[str, Any], client_auth: Any) -> None:
        """python-socketio's, whose ``config`` task sends the list of connections to whichever
        connection its loop saw last (its loop variable shadows the admin's sid, 5.18.1)."""
        if not await self._authenticated(client_auth):
            logger.warning(
                "websocket admin UI connection refused sid=%s remote=%s: wrong credentials",
                sid,
                environ.get("REMOTE_ADDR", "-"),
            )
            raise ConnectionRefusedError("authentication failed")
        task = self.sio.start_background_task(self._send_config, sid)
        self._upgrade_checks.add(task)
        task.add_done_callback(self._upgrade_checks.discard)

    async def _authenticated(self, client_auth: Any) -> bool:
        if not self.auth:
            return True
        if isinstance(self.auth, dict):
            return bool(client_auth == self.auth)
        if isinstance(self.auth, list):
            return client_auth in self.auth
        result = self.auth(client_auth)
        return bool(await result if inspect.isawaitable(result) else result)

    async def _send_config(self, admin_sid: str) -> None:
        await asyncio.sleep(0.1)  # as python-socketio's: well after the CONNECT reply
        features = ["AGGREGATED_EVENTS"]
        if not self.read_only:
            features += ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"]
        if self.mode == "development":
            features.append("ALL_EVENTS")
        await self.sio.emit("config", {"supportedFeatures": features}, to=admin_sid, namespace=self.admin_namespace)
        if self.mode == "development":
            sockets = [
                self.serialize_socket(sid, nsp, eio_sid)
                for nsp in self.sio.manager.get_namespaces()
                for sid, eio_sid in self.sio.manager.get_participants(nsp, None)
            ]
            await self.sio.emit("all_sockets", sockets, to=admin_sid, namespace=self.admin_namespace)

    async def shutdown(self) -> None:
        """Stop the stats task and the upgrade checks now."""
        stats_task: asyncio.Task[Any] | None = self.stats_task  # type: ignore[has-type]
        tasks = [task for task in (stats_task, *self._upgrade_checks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.stats_task = None
