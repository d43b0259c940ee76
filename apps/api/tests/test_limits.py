"""One size limit at every layer (MAX_PAYLOAD_BYTES: WebSocket frames, long-polling bodies, binary
attachments), refused before the data is read, with memory back where it was; and request heads
that never complete closed (HTTP_HEADER_TIMEOUT_SECONDS). Against the service in a process of
its own, whose memory is read from /proc."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import sys
from pathlib import Path

import httpx
import pytest

from apps.api.tests.support import TEST_SECRET, free_port, start_server_process

TIMEOUT = 10.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _server(**env: str):
    port = free_port()
    base = {
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "REDIS_URL": "",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ENVIRONMENT": "development",
    }
    server = await start_server_process([sys.executable, "apps/api/main.py"], env={**base, **env})
    return server, port


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the server closes (a reset, when it closed with our data unread, too)."""
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionError:  # reset, or a broken pipe from the writes the server did not read
        return b""


async def _oversized_frame(port: int, payload_chunks: int) -> bytes:
    """A WebSocket handshake, then a frame whose header declares 16 MB, then 64 KB chunks of it
    (until the server closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)  # as a client, wait for 101
    mask = os.urandom(4)
    writer.write(struct.pack("!BBQ", 0x81, 0x80 | 127, 16 * 1024 * 1024) + mask)
    try:
        for _ in range(payload_chunks):
            writer.write(b"\x00" * 65536)
            await asyncio.wait_for(writer.drain(), TIMEOUT)
    except (ConnectionError, TimeoutError):
        pass  # the server closed it: what should happen
    answer = head + await _read_to_eof(reader)
    writer.close()
    return answer


async def _oversized_post(port: int, sid: str, *, chunked: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
    if chunked:
        writer.write((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"4" + b"x" * 65535
        try:
            for _ in range(32):  # 2 MB offered
                writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
    else:
        writer.write((head + f"Content-Length: {16 * 1024 * 1024}\r\n\r\n").encode() + b"4" + b"x" * 65535)
    status = await asyncio.wait_for(reader.readline(), TIMEOUT)
    writer.close()
    return status


async def test_oversized_frames_and_bodies_are_refused_before_they_are_read_and_memory_returns():
    """MAX_PAYLOAD_BYTES (1 MB): before, a WebSocket frame could be uvicorn's 16 MiB, and 20
    unauthenticated half-sent 16 MB frames took the server from 132 to 445 MB for good."""
    server, port = await _server()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as http:

            async def session() -> str:
                opened = (await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})).text
                return opened.split('"sid":"')[1].split('"')[0]

            await session()  # warm up the paths measured below
            # refused once the header is read: closed with 1009 (message too big), nothing more read
            answer = await _oversized_frame(port, payload_chunks=0)
            assert answer.startswith(b"HTTP/1.1 101") and re.search(rb"\x88.\x03\xf1", answer), answer[-64:]
            before = rss_mb(server.process.pid)
            await asyncio.gather(*(_oversized_frame(port, payload_chunks=64) for _ in range(20)))  # 4 MB each
            sids = [await session() for _ in range(40)]
            statuses = await asyncio.gather(
                *(_oversized_post(port, sid, chunked=i % 2 == 1) for i, sid in enumerate(sids))
            )
            after = rss_mb(server.process.pid)
            assert (await http.get("/health")).json()["status"] == "ok"
    finally:
        await server.stop()
    assert all(status.startswith(b"HTTP/1.1 413") for status in statuses), statuses
    assert after - before < 25, f"RSS {before:.0f} -> {after:.0f} MB"
    output = "".join(server.output)
    assert "Traceback" not in output


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"], ids=["idle", "half-sent"])
async def test_a_connection_that_sends_no_complete_request_head_is_closed(sent):
    server, port = await _server(HTTP_HEADER_TIMEOUT_SECONDS="1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        loop = asyncio.get_running_loop()
        start = loop.time()
        answer = await _read_to_eof(reader)
        waited = loop.time() - start
        writer.close()
    finally:
        await server.stop()
    assert answer.startswith(b"HTTP/1.1 408") and 0.8 <= waited < 5, (answer, waited)
