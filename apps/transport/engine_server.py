"""The Engine.IO server: python-engineio's ``AsyncServer`` (ASGI mode) with requests handled as
the reference server (engine.io 6) handles them, and sessions that are :class:`EngineSocket`.

What changes from python-engineio 4.15.1 (each listed in the package README):

- The handshake advertises ``pingInterval`` and ``pingTimeout`` in milliseconds as configured
  (python-engineio rounds ``pingInterval`` down to whole seconds: 0.3 s became 0).
- A request without a ``transport``, or with one the server does not offer, or with an
  unsupported ``EIO``, or a method other than GET and POST (and OPTIONS, CORS's preflight), is
  answered 400 with engine.io's JSON error (``{"code", "message"}``); so is a request for an
  unknown or closed session (python-engineio answered some of these 405 or 500).
- A POST is answered ``ok`` (python-engineio: ``OK``). A request the session refuses (see
  :mod:`apps.transport.engine_socket`) is answered 400 (413 for a body over the cap) and
  never left hanging: python-engineio could wait forever for a closing session's queue.
- A request whose client went away before it arrived is dropped without a traceback.
- There is no periodic sweep: each session's heartbeat is a deadline of the server's ``heartbeats``
  (:class:`~apps.transport.deadlines.Deadlines`, one event-loop timer for every session).
- ``deliver_message`` hands each message to the ``message`` handler in order: a plain function
  is called at once, a coroutine function runs in a Task of its own (python-engineio's way).
"""

from __future__ import annotations

import inspect
import logging
import urllib.parse
from typing import Any

import engineio
from engineio import packet as eio_packet
from engineio.async_drivers import asgi as eio_asgi

from apps.transport.deadlines import Deadlines
from apps.transport.engine_socket import EngineSocket, RequestRefused, spawn
from apps.transport.environ import translate_request
from apps.transport.ws_protocol import HAND_OFF_KEY

logger = logging.getLogger(__name__)

#: engine.io's error codes (``{"code": N, "message": ...}`` in a 400 answer).
UNKNOWN_TRANSPORT, UNKNOWN_SID, BAD_HANDSHAKE_METHOD, BAD_REQUEST, FORBIDDEN, UNSUPPORTED_PROTOCOL_VERSION = range(6)
_ERROR_MESSAGES = {
    UNKNOWN_TRANSPORT: "Transport unknown",
    UNKNOWN_SID: "Session ID unknown",
    BAD_HANDSHAKE_METHOD: "Bad handshake method",
    BAD_REQUEST: "Bad request",
    FORBIDDEN: "Forbidden",
    UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


def _upgrade_mismatch(transport: str, environ: dict[str, Any]) -> str | None:
    """Why a GET's ``transport`` and its ``Upgrade`` header disagree, or None."""
    upgrade = environ.get("HTTP_UPGRADE", "").lower()
    if transport == "websocket" and upgrade != "websocket":
        return "Invalid websocket upgrade"
    if transport == "polling" and upgrade == "websocket":
        return "Invalid transport for a websocket upgrade"
    return None


class HandOffWebSocket(eio_asgi.WebSocket):  # type: ignore[misc]
    """python-engineio's ASGI WebSocket, exposing the hand-off of :mod:`apps.transport.ws_protocol`."""

    hand_off: Any = None

    async def __call__(self, environ: dict[str, Any]) -> Any:
        self.hand_off = environ.get("asgi.scope", {}).get("extensions", {}).get(HAND_OFF_KEY)
        return await super().__call__(environ)


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's ASGI server with :class:`EngineSocket` sessions (see the module docstring).

    ``max_send_buffer_bytes``: what a handed-off WebSocket may hold unsent before its client is
    dropped.
    """

    sockets: dict[str, EngineSocket]

    def __init__(self, *args: Any, max_send_buffer_bytes: int = 16 * 1024 * 1024, **kwargs: Any) -> None:
        kwargs.setdefault("async_mode", "asgi")
        kwargs["monitor_clients"] = False  # each session's heartbeat has its own deadline
        super().__init__(*args, **kwargs)
        self.max_send_buffer_bytes = max_send_buffer_bytes
        #: every session's next heartbeat step (its PING, or the deadline of the PING sent), by sid
        self.heartbeats = Deadlines(self._heartbeat)
        self._async: dict[str, Any] = {
            **self._async,
            "translate_request": translate_request,
            "websocket": HandOffWebSocket,
        }

    def _heartbeat(self, sid: str) -> None:
        socket = self.sockets.get(sid)
        if socket is not None:
            socket.heartbeat_due()

    # --- messages -------------------------------------------------------------------------

    def deliver_message(self, sid: str, data: Any) -> None:
        """Hand a client's message to the ``message`` handler, in the order they arrive."""
        handler = self.handlers.get("message")
        if handler is None:
            return
        if inspect.iscoroutinefunction(handler):
            spawn(self._trigger_event("message", sid, data, run_async=False))
            return
        try:
            handler(sid, data)
        except Exception:
            logger.exception("%s: message handler failed; closing the session", sid)
            socket = self.sockets.get(sid)
            if socket is not None:
                socket.abort(self.reason.TRANSPORT_ERROR)

    # --- requests -------------------------------------------------------------------------

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        """Handle an HTTP request or a WebSocket handshake (python-engineio's entry point)."""
        environ = await self._async["translate_request"](*args, **kwargs)
        if not environ:  # the client went away before its request arrived
            return None
        if self.cors_allowed_origins != []:
            origin = environ.get("HTTP_ORIGIN")
            if origin:
                allowed = self._cors_allowed_origins(environ)
                if allowed is not None and origin not in allowed:
                    self._log_error_once(origin + " is not an accepted origin.", "bad-origin")
                    return await self._error(environ, BAD_REQUEST, f"{origin} is not an accepted origin")
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS":
            return await self._make_response(self._ok(), environ)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        transport = query.get("transport", [None])[0]
        if transport not in self.transports:
            return await self._error(environ, UNKNOWN_TRANSPORT)
        if query.get("EIO") != ["4"]:
            return await self._error(environ, UNSUPPORTED_PROTOCOL_VERSION)
        sid = query["sid"][0] if "sid" in query else None
        jsonp_index = None
        if "j" in query:
            try:
                jsonp_index = int(query["j"][0])
            except ValueError:
                return await self._error(environ, BAD_REQUEST, "Invalid JSONP index number")
        if sid is None:
            if method != "GET":
                return await self._error(environ, BAD_HANDSHAKE_METHOD)
            mismatch = _upgrade_mismatch(transport, environ)
            if mismatch is not None:
                return await self._error(environ, BAD_REQUEST, mismatch)
            r = await self._handle_connect(environ, transport, jsonp_index)
        else:
            socket = self.sockets.get(sid)
            if socket is None or socket.closed or socket.closing:
                return await self._error(environ, UNKNOWN_SID)
            if socket.silent():  # its PONG is overdue: the session has ended even if no timer ran yet
                await socket.close(wait=False, abort=True, reason=self.reason.PING_TIMEOUT)
                return await self._error(environ, UNKNOWN_SID)
            try:
                r = await self._handle_session_request(socket, method, transport, environ, jsonp_index)
            except RequestRefused as exc:
                return await self._error(environ, exc.code, str(exc), status=exc.status)
        if not isinstance(r, dict):
            return r
        return await self._make_response(self._compressed(r, environ), environ)

    async def _handle_session_request(
        self, socket: EngineSocket, method: str, transport: str, environ: dict[str, Any], jsonp_index: int | None
    ) -> Any:
        if method == "GET":
            mismatch = _upgrade_mismatch(transport, environ)
            if mismatch is not None:
                raise RequestRefused(mismatch)
            packets = await socket.handle_get_request(environ)
            return self._ok(packets, jsonp_index=jsonp_index) if isinstance(packets, list) else packets
        if method == "POST":
            if transport != "polling" or not socket.connected or socket.upgraded:
                raise RequestRefused("POST is for a long-polling session")
            await socket.handle_post_request(environ)
            return self._ok(jsonp_index=jsonp_index)
        raise RequestRefused(f"Method {method} not supported")

    async def _handle_connect(self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None) -> Any:
        """A new session: python-engineio's handshake, with the heartbeat in milliseconds."""
        sid = self.generate_id()
        socket = EngineSocket(self, sid)
        self.sockets[sid] = socket
        socket.send_nowait(
            eio_packet.Packet(
                eio_packet.OPEN,
                {
                    "sid": sid,
                    "upgrades": self._upgrades(sid, transport),
                    "pingTimeout": round(self.ping_timeout * 1000),
                    "pingInterval": round((self.ping_interval + self.ping_interval_grace_period) * 1000),
                    "maxPayload": self.max_http_buffer_size,
                },
            )
        )
        ret = await self._trigger_event("connect", sid, environ, run_async=False)
        if ret is not None and ret is not True:
            self.sockets.pop(sid, None)
            logger.info("Engine.IO connection refused by the application")
            return self._unauthorized(ret or None)
        socket.start_heartbeat()
        if transport == "websocket":
            ret = await socket.handle_get_request(environ)
            if socket.closed:
                self.sockets.pop(sid, None)
            return ret
        socket.connected = True
        headers = None
        if self.cookie:
            attributes = (
                self.cookie if isinstance(self.cookie, dict) else {"name": self.cookie, "path": "/", "SameSite": "Lax"}
            )
            headers = [("Set-Cookie", self._generate_sid_cookie(sid, attributes))]
        return self._ok(await socket.poll(), headers=headers, jsonp_index=jsonp_index)

    # --- responses ------------------------------------------------------------------------

    def _ok(self, packets: Any = None, headers: Any = None, jsonp_index: int | None = None) -> dict[str, Any]:
        if packets is not None:
            return super()._ok(packets, headers=headers, jsonp_index=jsonp_index)  # type: ignore[no-any-return]
        return {"status": "200 OK", "headers": [("Content-Type", "text/plain; charset=UTF-8")], "response": b"ok"}

    async def _error(self, environ: dict[str, Any], code: int, message: str | None = None, *, status: int = 400) -> Any:
        body = eio_packet.Packet.json.dumps({"code": code, "message": message or _ERROR_MESSAGES[code]})
        reason = {400: "BAD REQUEST", 413: "PAYLOAD TOO LARGE"}.get(status, "ERROR")
        response = {
            "status": f"{status} {reason}",
            "headers": [("Content-Type", "application/json")],
            "response": body.encode(),
        }
        return await self._make_response(response, environ)

    def _compressed(self, r: dict[str, Any], environ: dict[str, Any]) -> dict[str, Any]:
        """python-engineio's response compression (gzip or deflate, as the client accepts)."""
        if self.http_compression and len(r["response"]) >= self.compression_threshold:
            encodings = [e.split(";")[0].strip() for e in environ.get("HTTP_ACCEPT_ENCODING", "").split(",")]
            for encoding in encodings:
                if encoding in self.compression_methods:
                    r["response"] = getattr(self, "_" + encoding)(r["response"])
                    r["headers"] += [("Content-Encoding", encoding)]
                    break
        return r
