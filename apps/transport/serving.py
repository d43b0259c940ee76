"""The uvicorn options this transport is built for."""

from __future__ import annotations

from typing import Any

from apps.transport.ws_protocol import WEBSOCKET_PROTOCOL

#: uvicorn's HTTP protocol with the request-head limits (:mod:`apps.transport.http_protocol`).
HTTP_PROTOCOL = "apps.transport.http_protocol:HeadLimitsProtocol"


def uvicorn_options(*, max_message_bytes: int, compression: bool = False, http: str = HTTP_PROTOCOL) -> dict[str, Any]:
    """What to give ``uvicorn.run`` / ``uvicorn.Config`` (besides the app, host and port).

    ``max_message_bytes``: the largest WebSocket message accepted (the Engine.IO server's
    ``max_http_buffer_size``; a larger frame is refused while its header is read). ``http``: an
    import string of :class:`~apps.transport.http_protocol.HeadLimitsProtocol` or a subclass.
    """
    return {
        "http": http,
        # uvicorn's sans-I/O WebSocket protocol for the handshake, then the Engine.IO hand-off
        "ws": WEBSOCKET_PROTOCOL,
        "ws_max_size": max_message_bytes,
        # permessage-deflate costs several times the memory per connection, and CPU per recipient
        "ws_per_message_deflate": compression,
        # Engine.IO's heartbeat already watches every connection
        "ws_ping_interval": None,
    }
