"""Helpers for this package's own tests (nothing from the service that uses the package)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def listening(port: int, process: Any = None, timeout: float = 15.0) -> None:
    """Wait (bounded) until something accepts connections on 127.0.0.1:``port``; fail early if
    ``process`` exits first."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if process is not None and process.returncode is not None:
            raise AssertionError(f"the server exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nothing listens on port {port} after {timeout} s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


# A real uvicorn in the test's event loop, a tiny ASGI app and a raw-socket HTTP client, for the
# uvicorn protocols (http_protocol.py, ws_protocol.py). Every wait is bounded.

WS_PROTOCOL = "apps.transport.ws_protocol:HandOffProtocol"


async def tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """HTTP: 200 ``ok`` on every path. WebSocket: accepts, echoes each text message."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text") or ""})


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


@contextlib.asynccontextmanager
async def serve_app(app: Any = tiny_app, **options: Any) -> AsyncIterator[int]:
    """Serve ``app`` under a real uvicorn (``options`` go to ``uvicorn.Config``) on a free port of
    127.0.0.1, in this event loop; yields the port once the server has answered a first request.
    uvicorn's logging is left as the test set it (``log_config=None``)."""
    sock = bound_socket()
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, timeout_graceful_shutdown=1, **{"ws": WS_PROTOCOL, **options}
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    port = int(sock.getsockname()[1])
    try:
        # once it has answered a request, the server has started (and logged that it has)
        first = await exchange(port, request_head(headers=[("Connection", "close")]), timeout=10)
        assert first.startswith(b"HTTP/1.1 "), first
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def read_to_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it has not closed it
    within ``timeout`` seconds. A reset counts as closing (what arrived before it is returned)."""
    received = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(
            f"the server did not close the connection within {timeout} s (received {bytes(received[:200])!r})"
        ) from None
    return bytes(received)


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a new connection and return all the server sends until it closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_to_eof(reader, timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP response on a kept-alive connection: (status, body); the body by Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b""
    return int(lines[0].split()[1]), body


def status_of(response: bytes) -> int | None:
    """The status code of the first response in ``response`` (None if there is none)."""
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response.split(b" ", 2)[1])


def request_head(
    path: str = "/", headers: list[tuple[str, str]] | None = None, *, websocket: bool = False, end: bool = True
) -> bytes:
    """A request head: GET ``path`` with Host, the WebSocket upgrade headers if ``websocket``,
    then ``headers``; with the empty line that ends it if ``end``."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if websocket:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n" + ("\r\n" if end else "")).encode("latin-1")


def masked_text_frame(text: str) -> bytes:
    """A client's (masked) WebSocket text frame, short payloads only."""
    payload = text.encode()
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_errors(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The ERROR lines and tracebacks among ``records``, leaving out what the garbage collector
    reports about test clients' own HTTP connections (aiohttp's "Unclosed connection" / "Unclosed
    client session", which python-socketio's client can leave behind at any later moment)."""
    return [
        r
        for r in records
        if (r.levelno >= logging.ERROR or r.exc_info)
        and not (r.name == "asyncio" and r.getMessage().startswith("Unclosed"))
    ]


async def frames_until_closed(ws: Any, timeout: float = 5.0) -> list[Any]:
    """Every message a ``websockets`` client receives until the server closes the connection;
    fails if that takes longer than ``timeout`` seconds."""
    import websockets

    frames: list[Any] = []

    async def read() -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frames.append(await ws.recv())

    await asyncio.wait_for(read(), timeout)
    return frames
