"""How the service is served: the uvicorn options ``apps/api/main.py`` uses (and the benchmark,
so that it measures what users run). The choices are measured in ``bench/README.md``."""

from __future__ import annotations

import gc
from typing import Any

from apps.api.config import Settings, get_settings
from apps.transport import uvicorn_options as transport_options
from apps.transport.http_protocol import HeadLimitsProtocol


class HttpProtocol(HeadLimitsProtocol):
    """uvicorn's HTTP protocol with the transport's request-head limits, and the head timeout of
    the settings (``HTTP_HEADER_TIMEOUT_SECONDS``, read in each worker process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.head_timeout = get_settings().http_header_timeout_seconds
        super().__init__(*args, **kwargs)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_timeout_seconds,
    }
    if settings.websocket_transport == "stock":  # uvicorn's own protocols
        return {
            **options,
            "ws": "websockets-sansio",
            "ws_max_size": settings.max_payload_bytes,
            "ws_per_message_deflate": settings.websocket_compression,
            "ws_ping_interval": None,
        }
    return {
        **options,
        **transport_options(
            max_message_bytes=settings.max_payload_bytes,
            compression=settings.websocket_compression,
            http=f"{__name__}:{HttpProtocol.__name__}",
        ),
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
