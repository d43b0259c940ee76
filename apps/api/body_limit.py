"""``MAX_HTTP_BODY_BYTES``: request bodies are capped while they are read.

An ASGI wrapper of ``receive``: the first read of a body whose ``Content-Length`` is over the cap,
or the read that takes a body (chunked or not) over it, raises :class:`ApiError` 413, which the
app's handlers answer in the usual JSON shape; the transport's HTTP protocol then ends the
connection without reading the rest (``apps/transport/http_protocol.py``). Nothing is decided
before the route reads: a route that refuses a request first (401 for a missing token) answers
that, whatever the body.

Starlette's ``RequestBodyLimitMiddleware`` does not fit: it answers in plain text, and replaces
any response (a 401 included) with its 413 when ``Content-Length`` is over the cap.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apps.api.errors import ApiError


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {limit} bytes (MAX_HTTP_BODY_BYTES)",
        limit=limit,
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        total = 0

        async def limited() -> Message:
            nonlocal total
            if declared is not None and declared > limit:
                raise too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed Content-Length before we see it
    return None
