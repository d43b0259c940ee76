"""HeadLimitsProtocol (http_protocol.py) under a real uvicorn, with raw sockets: connections that
never finish a request head are closed after ``head_timeout`` (408), oversized request heads are
refused (414, 431) with one log line, for plain requests and WebSocket upgrades alike, and
requests within the limits are served as ever."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from apps.transport.http_protocol import REFUSAL_CODES, HeadLimitsProtocol
from apps.transport.tests.support import (
    exchange,
    masked_text_frame,
    read_response,
    read_to_eof,
    request_head,
    serve_app,
    status_of,
)

HEAD_TIMEOUT = 0.5
LINE = HeadLimitsProtocol.max_line_bytes  # 8 KiB
HEAD = HeadLimitsProtocol.max_head_bytes  # 16 KiB


class QuickHeads(HeadLimitsProtocol):
    """The default size limits, and a head timeout short enough to wait for."""

    head_timeout = HEAD_TIMEOUT


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at INFO for the loggers the protocols write to (whatever another test set)."""
    caplog.set_level(logging.INFO)
    for name in ("uvicorn.error", "apps.transport"):
        caplog.set_level(logging.INFO, logger=name)
    yield caplog


def protocol_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name == "uvicorn.error" or r.name.startswith("apps.transport")
    ]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.exc_info] == []
    assert "Traceback" not in caplog.text


# head_timeout


async def test_connections_that_never_complete_a_request_head_are_closed_with_408_after_head_timeout(logs):
    loop = asyncio.get_running_loop()

    async def stalled(request: bytes) -> tuple[float, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)  # and the rest never comes
        return loop.time(), reader, writer

    async def closed(opened: float, reader: asyncio.StreamReader) -> tuple[bytes, float]:
        response = await read_to_eof(reader, HEAD_TIMEOUT + 2)
        return response, loop.time() - opened

    async with serve_app(http=QuickHeads) as port:
        logs.clear()
        connections = [await stalled(b"") for _ in range(20)]  # idle
        connections += [await stalled(b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(20)]  # half a head
        # meanwhile the server serves everyone else
        assert status_of(await exchange(port, request_head(headers=[("Connection", "close")]))) == 200
        assert loop.time() - connections[0][0] < HEAD_TIMEOUT

        results = await asyncio.gather(*(closed(opened, reader) for opened, reader, _ in connections))
        for _, _, writer in connections:
            writer.close()

        assert [status_of(response) for response, _ in results] == [408] * 40
        assert min(open_for for _, open_for in results) >= HEAD_TIMEOUT * 0.9  # not before their time was up
        lines = protocol_lines(logs)
        assert len(lines) == 40 and all("no complete request head" in line for line in lines), lines
        assert_no_traceback(logs)


async def test_a_kept_alive_connection_stays_open_between_requests_and_is_closed_when_its_next_head_stalls(logs):
    async with serve_app(http=QuickHeads, timeout_keep_alive=30) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_head())
            assert await read_response(reader) == (200, b"ok")
            # idle between requests longer than head_timeout: the connection is kept (uvicorn's
            # keep-alive timeout governs it, not the head timer)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), HEAD_TIMEOUT + 0.5)
            writer.write(request_head())
            assert await read_response(reader) == (200, b"ok")

            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next head stalls
            began = asyncio.get_running_loop().time()
            response = await read_to_eof(reader, HEAD_TIMEOUT + 2)
            assert asyncio.get_running_loop().time() - began >= HEAD_TIMEOUT * 0.9
            assert status_of(response) == 408
        finally:
            writer.close()
        assert_no_traceback(logs)


async def test_a_connection_whose_response_is_in_progress_is_not_sent_a_408_by_the_head_timer():
    """A second (pipelined) head that stalls while the first request's response is still being
    sent: the connection is closed, without a 408 written into the middle of that response."""
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"ab", "more_body": True})
            await release.wait()
            await send({"type": "http.response.body", "body": b"cd"})

    release.set()  # for serve_app's first request
    async with serve_app(slow_app, http=QuickHeads) as port:
        release.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_head() + b"GET / HTTP/1.1\r\nHost: x\r\n")
            received = await read_to_eof(reader, HEAD_TIMEOUT + 2)
        finally:
            release.set()
            writer.close()
        assert status_of(received) == 200 and b"408" not in received, received


# size limits

# name: (status, head(websocket)), each over one limit; sent whole, in one write
OVERSIZED = {
    "request line over max_line_bytes": (414, lambda ws: request_head("/" + "a" * LINE, websocket=ws)),
    "header line over max_line_bytes": (431, lambda ws: request_head(headers=[("X-Long", "a" * LINE)], websocket=ws)),
    "headers summing over max_head_bytes": (
        431,
        lambda ws: request_head(headers=[(f"X-H{i:02}", "a" * 500) for i in range(HEAD // 500 + 2)], websocket=ws),
    ),
    # no line end yet: the refusal must not wait for one (nor for head_timeout)
    "unfinished request line over max_line_bytes": (414, lambda ws: b"GET /" + b"a" * (LINE + 100)),
    "unfinished header line over max_head_bytes": (
        431,
        lambda ws: request_head(websocket=ws, end=False) + b"X-Long: " + b"a" * (HEAD + 100),
    ),
}


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket upgrade"])
@pytest.mark.parametrize("case", list(OVERSIZED))
async def test_an_oversized_request_head_is_refused_with_its_status_one_log_line_and_closed(logs, case, websocket):
    status, head = OVERSIZED[case]
    async with serve_app(http=QuickHeads) as port:
        logs.clear()
        started = asyncio.get_running_loop().time()
        response = await exchange(port, head(websocket), timeout=HEAD_TIMEOUT * 0.8)  # closed before head_timeout
        assert status_of(response) == status, response[:200]
        head_part, _, body = response.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head_part.lower()
        assert json.loads(body)["error"]["code"] == REFUSAL_CODES[status]  # the JSON error shape
        assert asyncio.get_running_loop().time() - started < HEAD_TIMEOUT
        lines = protocol_lines(logs)  # one, from this protocol (not a refusal further on)
        assert len(lines) == 1 and lines[0].startswith("apps.transport.http_protocol: "), lines
        assert "request refused" in lines[0]
        assert_no_traceback(logs)


# within the limits: (path, headers), each just under one limit (for websockets' own limits too:
# no line over 8 KiB, at most 128 headers)
JUST_UNDER = {
    "a long request line": ("/" + "a" * (LINE - 200), []),
    "a long header line": ("/", [("X-Long", "a" * (LINE - 200))]),
    "a long request line and a long header line": ("/" + "a" * (LINE - 300), [("X-Long", "a" * (LINE - 300))]),
    "many headers": ("/", [(f"X-H{i:02}", "a" * 500) for i in range(HEAD // 500 - 2)]),
}


@pytest.mark.parametrize("case", list(JUST_UNDER))
async def test_a_request_head_just_under_the_limits_is_served(logs, case):
    path, headers = JUST_UNDER[case]
    assert len(request_head(path, headers, websocket=True)) < HEAD
    async with serve_app(http=QuickHeads) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_head(path, headers))
            assert await read_response(reader) == (200, b"ok")
            writer.write(request_head(path, headers))  # twice on one connection: the count restarts
            assert await read_response(reader) == (200, b"ok")
        finally:
            writer.close()
        assert_no_traceback(logs)


@pytest.mark.parametrize("case", list(JUST_UNDER))
async def test_a_websocket_upgrade_just_under_the_limits_is_accepted_and_works(logs, case):
    path, headers = JUST_UNDER[case]
    async with serve_app(http=QuickHeads) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_head(path, headers, websocket=True))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status_of(head) == 101, head
            writer.write(masked_text_frame("hello"))
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05hello"
            # and the connection outlives head_timeout
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), HEAD_TIMEOUT + 0.5)
            writer.write(masked_text_frame("again"))
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05again"
        finally:
            writer.close()
        assert_no_traceback(logs)


async def test_a_refused_pipelined_request_does_not_get_its_refusal_taken_for_the_previous_answer(logs):
    """Request 1 complete, request 2 oversized, in one write: request 2 is refused while request 1
    is unanswered; the connection is closed, but no 431 is sent as if it answered request 1."""
    async with serve_app(http=QuickHeads) as port:
        logs.clear()
        response = await exchange(port, request_head() + request_head(headers=[("X-Long", "a" * LINE)]))
        assert status_of(response) in (None, 200) and b" 431 " not in response, response
        assert len(protocol_lines(logs)) == 1
        assert_no_traceback(logs)


async def test_an_oversized_head_after_an_answered_request_on_a_kept_alive_connection_gets_its_431(logs):
    async with serve_app(http=QuickHeads) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_head())
            assert await read_response(reader) == (200, b"ok")
            writer.write(request_head(headers=[("X-Long", "a" * LINE)]))
            assert status_of(await read_to_eof(reader, HEAD_TIMEOUT * 0.8)) == 431
        finally:
            writer.close()
        assert_no_traceback(logs)


async def test_a_refused_head_is_not_passed_to_the_app():
    calls: list[str] = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            calls.append(scope["path"])
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    async with serve_app(app, http=QuickHeads) as port:
        calls.clear()
        response = await exchange(port, request_head("/refused", [("X-Long", "a" * LINE)]))
        assert status_of(response) == 431
        assert calls == []
