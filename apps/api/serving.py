"""How the service is served: the uvicorn options ``apps/api/main.py`` uses (and the benchmark,
so that it measures what users run). The choices are measured in ``bench/README.md``."""

from __future__ import annotations

from typing import Any

from apps.api.config import Settings
from apps.api.websocket.uvicorn_protocol import WEBSOCKET_PROTOCOL


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
        # uvicorn's sans-I/O WebSocket protocol, writing frames built once per emit as they are
        "ws": WEBSOCKET_PROTOCOL,
        # permessage-deflate costs several times the memory per connection, and CPU per recipient
        "ws_per_message_deflate": settings.websocket_compression,
        # Engine.IO's heartbeat already watches every connection
        "ws_ping_interval": None,
    }
