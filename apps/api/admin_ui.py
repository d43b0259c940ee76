"""The Socket.IO Admin UI (https://admin.socket.io, or a copy served by the operator) on namespace
``/admin``: off unless ``ADMIN_UI_ENABLED``, behind ``ADMIN_UI_USERNAME`` / ``ADMIN_UI_PASSWORD``
(compared in constant time), read-only unless ``ADMIN_UI_READ_ONLY=false`` (WEBSOCKET_API.md,
"Admin UI"). The server's ``instrument()`` does the rest (under the service's transport:
``apps/transport/admin.py``)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import socketio

from apps.api.config import Settings
from apps.transport import SocketServer

logger = logging.getLogger(__name__)

#: The Admin UI's namespace (the UI's default).
ADMIN_NAMESPACE = "/admin"
#: Where the hosted Admin UI is served from: the browser origin CORS_ORIGINS must list to use it.
HOSTED_UI_ORIGIN = "https://admin.socket.io"


def credentials_check(username: str, password: str) -> Callable[[Any], bool]:
    """``auth`` for ``instrument()``: whether a connection's auth is ``{username, password}`` with
    these values, compared in constant time (both, always)."""
    expected_user, expected_password = username.encode(), password.encode()

    def check(auth: Any) -> bool:
        if not isinstance(auth, dict):
            return False
        user, given = auth.get("username"), auth.get("password")
        if not isinstance(user, str) or not isinstance(given, str):
            return False
        user_ok = hmac.compare_digest(user.encode(), expected_user)
        password_ok = hmac.compare_digest(given.encode(), expected_password)
        return user_ok and password_ok

    return check


def install(sio: socketio.AsyncServer, settings: Settings) -> Any:
    """Instrument ``sio`` for the Admin UI when ``ADMIN_UI_ENABLED``; returns the instrumentation
    (None when off: ``/admin`` is then refused as any unknown namespace)."""
    if not settings.admin_ui_enabled:
        return None
    assert settings.admin_ui_password is not None  # Settings refuses ADMIN_UI_ENABLED without it
    mode = settings.admin_ui_reporting
    admin = sio.instrument(
        auth=credentials_check(settings.admin_ui_username, settings.admin_ui_password.get_secret_value()),
        mode=mode,
        read_only=settings.admin_ui_read_only,
        namespace=ADMIN_NAMESPACE,
        server_stats_interval=settings.admin_ui_stats_interval_seconds,
    )
    if not isinstance(sio, SocketServer):  # stock python-socketio: its shutdown() leaves the stats task running
        stop_server = sio.shutdown

        async def shutdown() -> None:
            await admin.shutdown()
            await stop_server()

        sio.shutdown = shutdown
    hosted = "allowed" if HOSTED_UI_ORIGIN in settings.cors_origins or settings.cors_origins == ["*"] else "not in"
    logger.info(
        "websocket admin UI on namespace %s: mode=%s read_only=%s (%s %s CORS_ORIGINS)",
        ADMIN_NAMESPACE,
        mode,
        settings.admin_ui_read_only,
        HOSTED_UI_ORIGIN,
        hosted,
    )
    if not settings.admin_ui_read_only and settings.environment == "production":
        logger.warning(
            "websocket admin UI is not read-only (ADMIN_UI_READ_ONLY=false) with ENVIRONMENT=production: "
            "its users may put any connection in any room, send it any event, and disconnect it"
        )
    return admin
