"""How the service is served: the uvicorn options ``apps/api/main.py`` uses (and the benchmark,
so that it measures what users run). The choices are measured in ``bench/README.md``."""

from __future__ import annotations

import gc
from typing import Any

from apps.api.config import Settings
from apps.api.websocket.uvicorn_protocol import WEBSOCKET_PROTOCOL


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
        # uvicorn's sans-I/O WebSocket protocol for the handshake, then the Engine.IO hand-off
        "ws": WEBSOCKET_PROTOCOL,
        # permessage-deflate costs several times the memory per connection, and CPU per recipient
        "ws_per_message_deflate": settings.websocket_compression,
        # Engine.IO's heartbeat already watches every connection
        "ws_ping_interval": None,
    }


#: gen0 collections every 10,000 net allocations instead of 700. A fan-out allocates a few short-lived
#: objects per recipient; at the default, collections run many times per fan-out, promote objects
#: that would have died a moment later, and trigger full collections that scan every connection's
#: objects. Measured (bench/README.md): fan-out to 5,000 clients 57.6 -> 26 us per delivery, p99
#: 800 -> 155 ms; the same as with the collector disabled.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_garbage_collector() -> None:
    """At startup: move what exists now (modules, classes, schemas; it lives as long as the
    process) out of the collector's reach, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
