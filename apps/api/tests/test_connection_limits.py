"""Connection limits against a real server: new connections per address, connections per user and
per instance, each refused with its own code in ``connect_error``; a connection that keeps sending
past its event rate is closed, told why; nobody else is affected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import httpx
import pytest

from apps.api.app import create_app
from apps.api.tests.support import (
    ConnectRefused,
    RunningServer,
    WsClient,
    eventually,
    make_token,
    marker,
    serve_in_process,
)
from apps.api.tests.support import test_settings as settings_for  # (not named test_*: not collected)


@asynccontextmanager
async def limited_server(**limits: Any) -> AsyncIterator[tuple[RunningServer, list[WsClient]]]:
    clients: list[WsClient] = []
    async with serve_in_process(create_app(settings_for(**limits))) as server:
        try:
            yield server, clients
        finally:
            for client in clients:
                await client.close()


async def connect(server: RunningServer, clients: list[WsClient], token: str, **kwargs: Any) -> WsClient:
    client = WsClient(server.url)
    clients.append(client)
    return await client.connect(token, **kwargs)


async def refused(server: RunningServer, clients: list[WsClient], token: str, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ConnectRefused) as refusal:
        await connect(server, clients, token, **kwargs)
    content: dict[str, Any] = refusal.value.data["data"]["content"]
    assert content["message"] == refusal.value.data["message"]
    return content


async def test_new_connections_are_limited_per_address_and_say_when_to_retry():
    async with limited_server(connects_per_second_per_address=0.5, connect_burst_per_address=3) as (server, clients):
        first = [await connect(server, clients, make_token()) for _ in range(3)]
        content = await refused(server, clients, make_token())
        assert content["code"] == "CONNECTION_RATE_LIMITED"
        assert 0 < content["retry_after"] <= 2
        # behind the trusted proxy (uvicorn trusts 127.0.0.1), each forwarded address has its own budget
        other = await connect(server, clients, make_token(), headers={"X-Forwarded-For": "203.0.113.9"})
        assert (await other.call("ping"))["status"] == "pong"
        for client in first:  # the connections already open are untouched
            assert (await client.call("ping"))["status"] == "pong"


async def test_connections_are_capped_per_user_and_per_instance():
    async with limited_server(max_connections_per_user=2, max_connections=4) as (server, clients):
        user = uuid4()
        tabs = [await connect(server, clients, make_token(user)) for _ in range(2)]
        content = await refused(server, clients, make_token(user))
        assert content["code"] == "TOO_MANY_CONNECTIONS" and "2 connections" in content["message"]
        others = [await connect(server, clients, make_token()) for _ in range(2)]  # other users: unaffected
        full = await refused(server, clients, make_token())
        assert full["code"] == "SERVER_FULL" and full["retry_after"] > 0

        await tabs[0].close()  # a closed tab frees its place, for its user as for the instance

        async def reconnected() -> bool:
            try:
                await connect(server, clients, make_token(user))
            except ConnectRefused:
                return False
            return True

        await eventually(reconnected, what="a connection once a tab closed")
        await marker(tabs[1], *others)


async def test_a_connection_that_keeps_flooding_is_closed_told_why_and_others_keep_their_events():
    settings = {"client_events_per_second": 5, "client_event_burst": 5, "client_event_overrun_burst": 10}
    async with limited_server(**settings) as (server, clients):
        flooder = await connect(server, clients, make_token())
        bystander = await connect(server, clients, make_token())
        answers = await asyncio.gather(*(flooder.call("ping") for _ in range(8)))
        assert [a.get("code") for a in answers].count("RATE_LIMITED") >= 2  # refused, still connected
        for _ in range(40):  # keeps going past its limit, without waiting for answers
            await flooder.emit("ping")
        notice = await flooder.expect("connection.closing")
        assert notice["type"] == "connection.closing" and notice["data"]["reason"] == "rate_limited"
        await asyncio.wait_for(flooder.disconnected.wait(), 5)
        assert (await bystander.call("ping"))["status"] == "pong"
        await marker(bystander)


async def test_an_abandoned_long_polling_session_counts_until_its_heartbeat_times_out():
    """A client that opens a long-polling session, joins /ws and then never polls again holds its
    place (MAX_CONNECTIONS) like any connection, and gives it back when its heartbeat times out."""
    settings = {"max_connections": 1, "ping_interval_seconds": 0.5, "ping_timeout_seconds": 0.5}
    async with limited_server(**settings) as (server, clients), httpx.AsyncClient(base_url=server.url) as http:
        opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"}, timeout=5)
        session = json.loads(opened.text[1:])["sid"]  # "0{...}"
        joined = await http.post(
            "/socket.io/",
            params={"EIO": "4", "transport": "polling", "sid": session},
            content='40/ws,{"token":"' + make_token() + '"}',
            timeout=5,
        )
        assert joined.status_code == 200
        answer = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling", "sid": session}, timeout=5)
        assert answer.text.startswith("40/ws,"), answer.text  # joined; from now on it never polls again
        assert (await refused(server, clients, make_token()))["code"] == "SERVER_FULL"

        async def place_given_back() -> bool:
            try:
                await connect(server, clients, make_token())
            except ConnectRefused:
                return False
            return True

        await eventually(place_given_back, timeout=10, what="the abandoned session's place given back")
