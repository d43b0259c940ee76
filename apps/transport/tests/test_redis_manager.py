"""The Redis client manager (redis_manager.py) against a real Redis (127.0.0.1:6379, or
``TEST_REDIS_URL``): messages handled one by one, publish failures where callers expect them,
local things kept local."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from redis import asyncio as aioredis

from apps.transport import PacketPublisher, PublishError, RedisManager, SocketServer, event_packet
from apps.transport.redis_manager import bounded_client
from apps.transport.tests.conftest import serve
from apps.transport.tests.support import free_port, server_errors

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 5.0


@pytest.fixture
async def channel() -> str:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # the service's CI starts one; say how to get one otherwise
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc!r}): start redis-server or set TEST_REDIS_URL")
    finally:
        await client.aclose()
    return f"transport-test-{uuid.uuid4().hex}"


@contextlib.asynccontextmanager
async def redis_server(channel: str, url: str = REDIS_URL) -> AsyncIterator[tuple[SocketServer, RedisManager]]:
    manager = RedisManager(url, channel=channel, timeout=1.0)
    sio = SocketServer(client_manager=manager, ping_interval=5, ping_timeout=5)
    try:
        yield sio, manager
    finally:
        await manager.close()


@contextlib.asynccontextmanager
async def client_in_room(url: str, sio: SocketServer, room: str) -> AsyncIterator[tuple[Any, asyncio.Queue[Any]]]:
    joined = asyncio.Event()

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, room)
        joined.set()

    received: asyncio.Queue[Any] = asyncio.Queue()
    client = socketio.AsyncClient(reconnection=False)
    client.on("news", received.put_nowait)
    await client.connect(url, transports=["websocket"], wait_timeout=TIMEOUT)
    await asyncio.wait_for(joined.wait(), TIMEOUT)
    try:
        yield client, received
    finally:
        await client.disconnect()


async def listening(manager: RedisManager) -> None:
    async def wait() -> None:
        while not manager.listening:  # noqa: ASYNC110 - the manager's state, polled (bounded)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), TIMEOUT)


async def test_an_error_handling_one_message_loses_no_other_and_keeps_the_subscription(channel, caplog):
    async with redis_server(channel) as (sio, manager), serve(sio) as url:
        async with client_in_room(url, sio, "r") as (_, received):
            await listening(manager)
            subscriptions = 0
            connect = manager._redis_connect

            def counted() -> None:
                nonlocal subscriptions
                subscriptions += 1
                connect()

            manager._redis_connect = counted  # type: ignore[method-assign]
            publisher = PacketPublisher(bounded_client(REDIS_URL, 1.0), url=REDIS_URL, channel=channel, timeout=1.0)
            try:
                await publisher.publish_packet(event_packet("/", "news", '"first"'), "/", "r")
                # a message no instance can deliver (an unhashable room), from some other publisher
                await publisher.publish_packet(event_packet("/", "news", '"poison"'), "/", {"not": "a room"})
                await publisher.publish_packet(event_packet("/", "news", '"after"'), "/", "r")
                await publisher.publish_emit("news", "python-socketio's own format", "/", "r")
                got = [await asyncio.wait_for(received.get(), TIMEOUT) for _ in range(3)]
            finally:
                await publisher.client.aclose()
    assert got == ["first", "after", "python-socketio's own format"]
    assert subscriptions == 0  # the same subscription all along
    failures = [r for r in caplog.records if "could not be handled" in r.getMessage()]
    assert len(failures) == 1


async def test_an_emit_to_one_local_connection_is_not_published(channel):
    watcher = aioredis.Redis.from_url(REDIS_URL)
    pubsub = watcher.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:
        async with redis_server(channel) as (sio, _), serve(sio) as url:
            async with client_in_room(url, sio, "r") as (client, received):
                sid = client.get_sid()
                await sio.emit("news", "to you alone", to=sid)
                assert await asyncio.wait_for(received.get(), TIMEOUT) == "to you alone"
                await sio.emit("news", "to the room", to="r")  # a room: every instance
                assert await asyncio.wait_for(received.get(), TIMEOUT) == "to the room"

                async def first() -> Any:
                    while (message := await pubsub.get_message(timeout=1.0)) is None:
                        pass
                    return json.loads(message["data"])

                published = await asyncio.wait_for(first(), TIMEOUT)
    finally:
        await pubsub.aclose()
        await watcher.aclose()
    assert (published["method"], published["room"], published["data"]) == ("emit", "r", ["to the room"])


async def test_without_redis_emit_json_raises_and_python_socketios_own_calls_log_instead(channel, caplog):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with redis_server(channel, nowhere) as (sio, manager):
        with pytest.raises(PublishError, match="could not publish to Redis"):
            await manager.emit_json("news", '"x"', "/", "r")
        caplog.clear()
        # python-socketio's documented behaviour for these: a failed publish is logged, not raised
        await sio.emit("news", "x", to="r")
        await sio.close_room("r")
        await manager.enter_room("someone-elses-sid", "/", "r")
        await manager._return_callback("another-host", "sid", "/", 1, "args")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "could not publish" in r.getMessage()]
    assert len(warnings) == 4
    assert not server_errors(caplog.records)
