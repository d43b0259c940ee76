"""The server the Socket.IO project's protocol suites expect, on this package's classes, served by
uvicorn with this package's options (as a service built on it serves itself):

    python -m apps.transport.tests.conformance_server engineio|socketio PORT

- ``engineio``: an Engine.IO server at ``/engine.io/`` that sends every message back to its
  client unchanged (text or binary);
- ``socketio``: a Socket.IO server at ``/socket.io/``: on a connection to ``/`` or ``/custom`` it
  emits ``auth`` with the handshake's auth payload; on ``/``, ``message`` is answered with
  ``message-back`` and the same arguments, and ``message-with-ack`` by its ack, with the same
  arguments; every other namespace is refused.

Both with ping interval 300 ms, ping timeout 200 ms, max payload 1,000,000 bytes, CORS origin
``*``, and (Socket.IO) connect timeout 1,000 ms: the reference configuration of
``../shared/conformance/README.md``.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from apps.transport import EngineServer, LocalManager, SocketIOMiddleware, SocketServer, uvicorn_options
from apps.transport.engine_socket import spawn

SETTINGS: dict[str, Any] = {
    "ping_interval": 0.3,
    "ping_timeout": 0.2,
    "max_http_buffer_size": 1_000_000,
    "cors_allowed_origins": "*",
}


async def _not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


def engineio_app() -> Any:
    eio = EngineServer(**SETTINGS)

    @eio.on("message")
    async def echo(sid: str, data: Any) -> None:
        await eio.send(sid, data)

    return SocketIOMiddleware(_not_found, server=eio, path="engine.io")


def socketio_app() -> Any:
    sio = SocketServer(client_manager=LocalManager(), namespaces=["/", "/custom"], connect_timeout=1.0, **SETTINGS)

    def greeter(namespace: str) -> Any:
        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            # socket.io runs its connection handler once the CONNECT reply is sent
            spawn(sio.emit("auth", auth if auth is not None else {}, to=sid, namespace=namespace))

        return connect

    sio.on("connect", greeter("/"))
    sio.on("connect", greeter("/custom"), namespace="/custom")

    @sio.on("message")
    async def message(sid: str, *args: Any) -> None:
        await sio.emit("message-back", args, to=sid)

    @sio.on("message-with-ack")
    async def message_with_ack(sid: str, *args: Any) -> Any:
        return args

    return SocketIOMiddleware(_not_found, server=sio, path="socket.io")


def main(argv: list[str]) -> None:
    suite, port = argv[0], int(argv[1])
    app = engineio_app() if suite == "engineio" else socketio_app()
    options = uvicorn_options(max_message_bytes=SETTINGS["max_http_buffer_size"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", **options)


if __name__ == "__main__":
    main(sys.argv[1:])
