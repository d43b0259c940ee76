"""Names shared by the server and its clients: the namespace, client events, ack codes."""

from __future__ import annotations

import uuid

#: An opaque id of this server process, in ``connection_established`` and ``/health``: tells
#: which instance a client landed on when there are several.
INSTANCE_ID = uuid.uuid4().hex[:12]

#: The Socket.IO namespace clients connect to: ``io("http://host:8000/ws")``.
NAMESPACE = "/ws"
#: The Engine.IO path (socket.io-client's default ``path``).
SOCKETIO_PATH = "socket.io"


class ClientEvent:
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    DEBUG_ROOMS = "debug:rooms"
    PING = "ping"
    REFRESH = "auth:refresh"


class ErrorCode:
    """``code`` of an ack ``{status: "error", code, message}`` or of a ``connect_error``."""

    AUTH_FAILED = "AUTH_FAILED"
    INVALID_NAMESPACE = "INVALID_NAMESPACE"
    INVALID_REQUEST = "INVALID_REQUEST"
    INVALID_ROOM = "INVALID_ROOM"
    ROOM_ACCESS_DENIED = "ROOM_ACCESS_DENIED"
    ROOM_LIMIT = "ROOM_LIMIT"
    RATE_LIMITED = "RATE_LIMITED"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    UNAVAILABLE = "UNAVAILABLE"
    # connection refusals (connect_error's data.content.code)
    CONNECTION_RATE_LIMITED = "CONNECTION_RATE_LIMITED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    SERVER_FULL = "SERVER_FULL"
    INTERNAL_ERROR = "INTERNAL_ERROR"


def success(**fields: object) -> dict[str, object]:
    return {"status": "success", **fields}


def error(code: str, message: str) -> dict[str, object]:
    return {"status": "error", "code": code, "message": message}
