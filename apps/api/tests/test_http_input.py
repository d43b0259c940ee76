"""HTTP request bodies: capped while they are read (MAX_HTTP_BODY_BYTES, 1 MB), chunked or not, with
a 413 in the usual JSON shape; and on authenticated routes the token is checked before the body is
read, so no token gets 401 whatever the body. Against the service in a process of its own, whose
memory is read from /proc."""

from __future__ import annotations

import asyncio
import json

from apps.api.tests.support import make_token
from apps.api.tests.test_limits import _read_to_eof, _server, rss_mb

MB = 1024 * 1024


async def _post(
    port: int, path: str, *, token: str | None, declared: int | None, offered: int, close: bool = False
) -> tuple[int, dict]:
    """POST ``offered`` bytes of JSON-ish body (declared by Content-Length, or chunked when
    ``declared`` is None; with ``Connection: close`` when ``close``), stopping when the server
    stops reading; returns the status and JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    head += f"Content-Length: {declared}\r\n" if declared is not None else "Transfer-Encoding: chunked\r\n"
    writer.write((head + "\r\n").encode())
    answer = asyncio.create_task(_read_to_eof(reader))  # read while sending, as HTTP clients do
    chunk = b'{"name":"' + b"x" * (64 * 1024 - 9)
    try:
        for _ in range(offered // len(chunk)):
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if declared is None else chunk)
            await asyncio.wait_for(writer.drain(), 2)
    except (ConnectionError, TimeoutError):
        pass  # the server stopped reading: what should happen
    if declared is None and offered == 0:
        writer.write(b"0\r\n\r\n")
    received = await answer
    writer.close()
    status_line, _, rest = received.partition(b"\r\n")
    if not status_line:
        return 0, {"received": received.decode(errors="replace")}
    body = rest.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in rest else b"{}"
    return int(status_line.split()[1]), json.loads(body or b"{}")


async def test_bodies_are_capped_while_read_and_no_token_is_401_whatever_the_body():
    server, port = await _server()
    token = make_token()
    try:
        # warm up the paths measured below
        await _post(port, "/api/v1/projects", token=token, declared=None, offered=2 * MB)
        before = rss_mb(server.process.pid)
        results = await asyncio.gather(
            # no token: 401 before a byte of the body is read, even one declared as 300 MB
            _post(port, "/api/v1/projects", token=None, declared=300 * MB, offered=8 * MB),
            _post(port, "/api/v1/projects", token=None, declared=None, offered=8 * MB),
            _post(port, "/api/v1/events", token=None, declared=300 * MB, offered=8 * MB),
            # with a token: 413 at the cap, declared or chunked
            *(_post(port, "/api/v1/projects", token=token, declared=300 * MB, offered=8 * MB) for _ in range(5)),
            *(_post(port, "/api/v1/projects", token=token, declared=None, offered=8 * MB) for _ in range(5)),
            # unauthenticated routes are capped as well
            _post(port, "/webhooks/github", token=None, declared=None, offered=8 * MB),
        )
        after = rss_mb(server.process.pid)
        alive = await _post(port, "/api/v1/projects", token=token, declared=None, offered=0)
    finally:
        await server.stop()
    statuses = [status for status, _ in results]
    assert statuses[:3] == [401, 401, 401], results
    assert statuses[3:] == [413] * 11, results
    for _, body in results[:3]:
        assert (body["error"]["code"], body["error"]["reason"]) == ("AUTH_FAILED", "missing")
    for _, body in results[3:]:
        assert body["error"]["code"] == "PAYLOAD_TOO_LARGE" and body["error"]["limit"] == 1_000_000
    assert after - before < 25, f"RSS {before:.0f} -> {after:.0f} MB"
    assert alive[0] == 422  # an empty body to a live server: a validation error, not a crash
    assert "Traceback" not in "".join(server.output)


async def test_a_request_that_asks_to_close_still_gets_its_answer_before_the_body_is_read():
    """``Connection: close`` (as many HTTP clients send on their last request): uvicorn would close
    the socket with the body unread, and the kernel's reset can destroy the answer in flight; the
    connection lingers instead, and the client reads its 401 or 413 every time."""
    server, port = await _server()
    token = make_token()
    try:
        results = await asyncio.gather(
            *(
                _post(port, "/api/v1/projects", token=None, declared=declared, offered=8 * MB, close=True)
                for declared in (300 * MB, None)
                for _ in range(3)
            ),
            *(_post(port, "/api/v1/projects", token=token, declared=300 * MB, offered=8 * MB, close=True)
              for _ in range(3)),
        )  # fmt: skip
    finally:
        await server.stop()
    assert [status for status, _ in results] == [401] * 6 + [413] * 3, results
    assert "Traceback" not in "".join(server.output)


async def test_max_http_body_bytes_is_a_setting():
    server, port = await _server(MAX_HTTP_BODY_BYTES="2048")
    try:
        status, body = await _post(port, "/api/v1/projects", token=make_token(), declared=4096, offered=4096)
    finally:
        await server.stop()
    assert status == 413 and body["error"]["limit"] == 2048
