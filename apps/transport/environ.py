"""python-engineio's ASGI request translation (``engineio.async_drivers.asgi.translate_request``),
with three fixes:

- ``REMOTE_ADDR`` is the client's address (``scope["client"]``, which uvicorn's proxy-headers
  handling sets from ``X-Forwarded-For`` when the proxy is trusted). python-engineio sets
  ``127.0.0.1`` for every client, so every connection log line and every check of the client's
  address saw the same one.
- The body can be read with a cap (:meth:`AwaitablePayload.read_capped`): reading stops as soon
  as the body is longer than the cap, chunked or not. python-engineio reads ``Content-Length``
  bytes whole (and, without that header, reads the whole body and returns none of it).
- The request body reader is one module-level class. python-engineio defines a class inside the
  function, on every request: a class is a reference cycle, and it kept the request's environ,
  and through ``receive`` its server protocol, waiting for the cyclic garbage collector.

Everything else (the WSGI-style keys, header folding, ``wsgi.url_scheme``) is python-engineio's.
"""

from __future__ import annotations

import sys
from typing import Any

Receive = Any  # an ASGI receive callable


class BodyTooLarge(Exception):
    """The request body is longer than the cap."""


class BodyIncomplete(Exception):
    """The client went away before sending its whole body."""


class AwaitablePayload:
    """``environ["wsgi.input"]``: the request body, read on demand (python-engineio's reader)."""

    __slots__ = ("event", "payload", "receive")

    def __init__(self, event: dict[str, Any], receive: Receive) -> None:
        self.event = event
        self.receive = receive
        self.payload: bytes | None = None

    async def read(self, length: int | None = None) -> bytes:
        if self.payload is None and self.event["type"] == "http.request":
            self.payload = self.event.get("body") or b""
            while self.event.get("more_body"):
                self.event = await self.receive()
                if self.event["type"] == "http.request" and (length is None or len(self.payload) < length):
                    self.payload += self.event.get("body") or b""
        payload = self.payload or b""
        if length is None:
            self.payload = b""
            return payload
        self.payload = payload[length:]
        return payload[:length]

    async def read_capped(self, limit: int, content_length: str | None = None) -> bytes:
        """The whole body. Raises :class:`BodyTooLarge` as soon as it is known to be longer than
        ``limit`` bytes (from ``Content-Length``, or once that much has arrived: nothing more is
        read or kept), :class:`BodyIncomplete` if the client went away first, and
        :class:`ValueError` for a ``Content-Length`` that is not a number."""
        if content_length is not None and int(content_length) > limit:
            raise BodyTooLarge
        event = self.event
        if event["type"] != "http.request":
            raise BodyIncomplete
        chunks = [event.get("body") or b""]
        size = len(chunks[0])
        while event.get("more_body") and size <= limit:
            event = self.event = await self.receive()
            if event["type"] != "http.request":
                raise BodyIncomplete
            chunk = event.get("body") or b""
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        return b"".join(chunks)


async def translate_request(scope: dict[str, Any], receive: Receive, send: Any) -> dict[str, Any]:
    event = await receive()
    if event["type"] not in ("http.request", "websocket.connect"):
        return {}
    raw_uri = scope["path"]
    query_string = ""
    if scope.get("query_string"):
        try:
            query_string = scope["query_string"].decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raw_uri += "?" + query_string
    client = scope.get("client") or ("127.0.0.1", 0)
    environ: dict[str, Any] = {
        "wsgi.input": AwaitablePayload(event, receive),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.async": True,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "asgi",
        "REQUEST_METHOD": scope.get("method", "GET"),
        "PATH_INFO": scope["path"],
        "QUERY_STRING": query_string,
        "RAW_URI": raw_uri,
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "SERVER_NAME": "asgi",
        "SERVER_PORT": "0",
        "asgi.receive": receive,
        "asgi.send": send,
        "asgi.scope": scope,
    }
    for raw_name, raw_value in scope["headers"]:
        try:
            name = raw_name.upper().decode("utf-8")
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a header that cannot be decoded is skipped
        if name == "CONTENT-TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "CONTENT-LENGTH":
            environ["CONTENT_LENGTH"] = value
            continue
        key = "HTTP_" + name.replace("-", "_")
        if key in environ:
            value = f"{environ[key]},{value}"
        environ[key] = value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ
