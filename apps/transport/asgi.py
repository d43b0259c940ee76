"""Serving a Socket.IO server inside another ASGI app (FastAPI, Starlette) as middleware.

``app.add_middleware(SocketIOMiddleware, server=sio, path="socket.io")`` sends every HTTP request
and WebSocket under ``/socket.io/`` to the Socket.IO server and everything else to the app, which
stays the app users extend (``app.include_router(...)``). ``rewrite`` may map other paths onto the
Socket.IO path (aliases): it gets the scope and returns the scope to serve as Socket.IO, or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
ASGIApp = Any


class SocketIOMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        server: Any,
        path: str = "socket.io",
        rewrite: Callable[[Scope], Scope | None] | None = None,
    ) -> None:
        self.app = app
        self.server = server
        self.prefix = "/" + path.strip("/") + "/"
        self.rewrite = rewrite

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            target = self.rewrite(scope) if self.rewrite is not None else None
            if target is None and (scope["path"] + "/").startswith(self.prefix):
                target = scope
            if target is not None:
                await self.server.handle_request(target, receive, send)
                return
        await self.app(scope, receive, send)
