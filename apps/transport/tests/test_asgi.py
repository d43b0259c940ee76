"""SocketIOMiddleware (asgi.py): Socket.IO's path goes to the server, everything else to the app,
and aliases are rewritten."""

from __future__ import annotations

from typing import Any

from apps.transport.asgi import SocketIOMiddleware


class Recorder:
    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)

    async def handle_request(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)


async def _route(path: str, kind: str = "http", rewrite: Any = None) -> tuple[list[Any], list[Any]]:
    app, server = Recorder(), Recorder()
    middleware = SocketIOMiddleware(app, server=server, path="socket.io", rewrite=rewrite)
    await middleware({"type": kind, "path": path}, None, None)
    return app.scopes, server.scopes


async def test_the_socketio_path_goes_to_the_server_and_the_rest_to_the_app():
    for path in ("/socket.io/", "/socket.io"):
        app, server = await _route(path)
        assert (len(app), len(server)) == (0, 1), path
    for path in ("/", "/socket.iox/", "/api/socket.io/", "/health"):
        app, server = await _route(path)
        assert (len(app), len(server)) == (1, 0), path
    app, server = await _route("/", kind="lifespan")
    assert (len(app), len(server)) == (1, 0)


async def test_a_rewritten_alias_reaches_the_server_with_the_rewritten_scope():
    def alias(scope: dict[str, Any]) -> dict[str, Any] | None:
        return {**scope, "path": "/socket.io/"} if scope["path"] == "/ws" else None

    app, server = await _route("/ws", kind="websocket", rewrite=alias)
    assert not app and server[0]["path"] == "/socket.io/"
    app, server = await _route("/other", rewrite=alias)
    assert app and not server
