"""Behind a TLS-terminating proxy (WSS): the proxy forwards ``X-Forwarded-For`` and
``X-Forwarded-Proto: https``, and uvicorn believes them only from the addresses in
``FORWARDED_ALLOW_IPS``. Real server processes; the test plays the proxy on 127.0.0.1."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from uuid import uuid4

import httpx
import pytest

from apps.api.tests.support import TEST_SECRET, WsClient, free_port, make_token, start_server_process

CLIENT_ADDRESS = "203.0.113.7"  # TEST-NET-3: documentation only
PROXY_HEADERS = {"X-Forwarded-For": CLIENT_ADDRESS, "X-Forwarded-Proto": "https"}


@dataclass
class Seen:
    connection: list[str]  # the server's lines about the Socket.IO connection
    location: str  # where a redirect of the app sends the client
    access: list[str]  # uvicorn's access log line of that request


async def through_the_proxy(forwarded_allow_ips: str, transports: tuple[str, ...]) -> Seen:
    """Connect through the "proxy" (this process, from 127.0.0.1) with its headers, and make a
    request the app answers with a redirect (a trailing slash): what the server saw."""
    port = free_port()
    env = {
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "REDIS_URL": "",
        "ENVIRONMENT": "development",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FORWARDED_ALLOW_IPS": forwarded_allow_ips,
    }
    server = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    user = uuid4()
    try:
        client = WsClient(server.url)
        await client.connect(make_token(user), transports=transports, headers=PROXY_HEADERS)
        try:
            assert (await client.expect("connection_established"))["data"]["user_id"] == str(user)
        finally:
            await client.close()
        async with httpx.AsyncClient(base_url=server.url, timeout=10, headers=PROXY_HEADERS) as http:
            redirect = await http.get("/api/v1/projects/?probe=proxy")
        assert redirect.status_code == 307, redirect.text
    finally:
        await server.stop()
    return Seen(
        connection=[line for line in server.output if f"user={user}" in line],
        location=redirect.headers["location"],
        access=[line for line in server.output if "probe=proxy" in line and "uvicorn.access" in line],
    )


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)], ids=["websocket", "polling"])
async def test_a_trusted_proxy_gives_the_clients_address(transports: tuple[str, ...]):
    seen = await through_the_proxy("127.0.0.1", transports)
    connected = [line for line in seen.connection if "websocket connected" in line]
    disconnected = [line for line in seen.connection if "websocket disconnected" in line]
    assert connected and f"remote={CLIENT_ADDRESS}" in connected[0], seen
    assert disconnected and f"remote={CLIENT_ADDRESS}" in disconnected[0], seen
    # X-Forwarded-Proto: the app knows the client came over https (its URLs say so)
    assert seen.location.startswith("https://"), seen
    assert seen.access and seen.access[0].split(" INFO uvicorn.access ")[1].startswith(f"{CLIENT_ADDRESS}:"), seen


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)], ids=["websocket", "polling"])
async def test_headers_from_an_untrusted_address_are_ignored(transports: tuple[str, ...]):
    seen = await through_the_proxy("10.9.8.7", transports)  # some other proxy: not us
    connected = [line for line in seen.connection if "websocket connected" in line]
    assert connected and "remote=127.0.0.1 " in connected[0], seen
    assert CLIENT_ADDRESS not in "".join(seen.connection + seen.access)
    assert seen.location.startswith("http://"), seen
