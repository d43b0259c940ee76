"""``GET /api/v1/websocket/stats`` covers every instance (apps/api/cluster_stats.py): two and three
real server processes sharing one Redis, clients on each; a killed instance drops out within its
snapshot's lifetime, a stopped one at once; without Redis (or while it is down), this instance only."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest

from apps.api.app import create_app
from apps.api.tests.redis_support import delete_prefix, isolation, own_redis
from apps.api.tests.support import (
    TEST_SECRET,
    ServerProcess,
    WsClient,
    eventually,
    free_port,
    make_token,
    serve_in_process,
    start_server_process,
)
from apps.api.tests.support import test_settings as service_settings

INTERVAL = 0.5  # WEBSOCKET_STATS_INTERVAL_SECONDS: snapshots kept 1.5 s
ADMIN = {"Authorization": f"Bearer {make_token(roles=['admin'])}"}


async def stats_of(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get("/api/v1/websocket/stats", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def instance_id(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return str((await http.get("/health")).json()["instance_id"])


async def start_instance(redis_url: str, tags: dict[str, str]) -> ServerProcess:
    env = {
        "REDIS_URL": redis_url,
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "WEBSOCKET_STATS_INTERVAL_SECONDS": str(INTERVAL),
        **tags,
    }
    return await start_server_process([sys.executable, "apps/api/main.py"], env=env)


@pytest.fixture
async def tags(redis_url: str) -> AsyncIterator[dict[str, str]]:
    tags = {k: v for k, v in isolation().items() if k != "DATABASE_URL"}  # a database each: nothing is stored
    yield tags
    await delete_prefix(redis_url, tags["REDIS_KEY_PREFIX"])


async def test_the_stats_of_either_instance_cover_both_and_a_killed_one_drops_out(redis_url, tags):
    servers: list[ServerProcess] = []
    clients: list[WsClient] = []
    try:
        for _ in range(3):
            servers.append(await start_instance(redis_url, tags))
        a, b, c = servers
        ids = {name: await instance_id(s.url) for name, s in zip("abc", servers, strict=True)}
        shared, agent = uuid4(), uuid4()
        room = f"agent:{agent}"

        async def connected(url: str, user: Any) -> WsClient:
            client = await WsClient(url).connect(make_token(user))
            clients.append(client)
            await client.expect("connection_established")
            assert (await client.call("subscribe", {"room": room}))["status"] == "success"
            return client

        # the shared user on a and b (one user, counted once), another user twice on b, nobody on c
        other = uuid4()
        await connected(a.url, shared)
        await connected(b.url, shared)
        await connected(b.url, other)
        await connected(b.url, other)

        async def settled(url: str) -> dict[str, Any] | None:
            stats = await stats_of(url)
            return stats if stats["rooms"].get(room) == 4 and len(stats["instances"]) == 3 else None

        for server, name in ((a, "a"), (b, "b")):
            stats = await eventually(lambda server=server: settled(server.url), what="both instances' clients")
            assert stats["cluster"] is True and stats["redis"] == "ok"
            assert stats["instance_id"] == ids[name]
            assert stats["refresh_seconds"] == INTERVAL
            assert stats["rooms"][room] == 4
            assert stats["rooms"][f"user:{shared}"] == 2 and stats["rooms"][f"user:{other}"] == 2
            assert stats["rooms"]["global"] >= 4
            by_id = {i["id"]: i for i in stats["instances"]}
            assert set(by_id) == set(ids.values())
            assert stats["instances"][0]["id"] == ids[name] and stats["instances"][0]["this_instance"] is True
            assert stats["instances"][0]["age_seconds"] <= INTERVAL
            assert sum(i["this_instance"] for i in stats["instances"]) == 1
            assert (by_id[ids["a"]]["connections"], by_id[ids["a"]]["users"]) == (1, 1)
            assert (by_id[ids["b"]]["connections"], by_id[ids["b"]]["users"]) == (3, 2)
            assert (by_id[ids["c"]]["connections"], by_id[ids["c"]]["users"]) == (0, 0)
            assert by_id[ids["a"]]["rooms"][room] == 1 and by_id[ids["b"]]["rooms"][room] == 3
            assert room not in by_id[ids["c"]]["rooms"]
            assert all(i["age_seconds"] <= 3 * INTERVAL for i in stats["instances"])
            assert (stats["connections"], stats["users"]) == (4, 2)  # the shared user counted once

        # c stops cleanly: it deletes its snapshot, so it is gone at once
        await c.stop()
        assert {i["id"] for i in (await stats_of(a.url))["instances"]} == {ids["a"], ids["b"]}

        # b is killed: its snapshot expires within its lifetime (three intervals after its last write)
        b.process.kill()
        killed_at = time.monotonic()

        async def b_gone() -> dict[str, Any] | None:
            stats = await stats_of(a.url)
            return stats if [i["id"] for i in stats["instances"]] == [ids["a"]] else None

        stats = await eventually(b_gone, timeout=10, interval=0.05, what="the killed instance dropping out")
        assert time.monotonic() - killed_at <= 3 * INTERVAL + 0.5
        assert (stats["connections"], stats["users"], stats["rooms"][room]) == (1, 1, 1)
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            await server.stop()


async def test_without_redis_the_stats_are_this_instances_and_say_so():
    app = create_app(service_settings())
    async with serve_in_process(app) as running:
        user = uuid4()
        clients = [await WsClient(running.url).connect(make_token(user)) for _ in range(2)]
        try:
            stats = await stats_of(running.url)
            assert stats["cluster"] is False and stats["redis"] == "not_configured"
            assert stats["refresh_seconds"] is None
            assert (stats["connections"], stats["users"], stats["rooms"][f"user:{user}"]) == (2, 1, 2)
            assert [i["id"] for i in stats["instances"]] == [stats["instance_id"]]
            assert stats["instances"][0]["connections"] == 2 and stats["instances"][0]["this_instance"] is True
            async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
                user_token = {"Authorization": f"Bearer {make_token(user)}"}
                forbidden = await http.get("/api/v1/websocket/stats", headers=user_token)
                assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "FORBIDDEN"
                assert (await http.get("/api/v1/websocket/stats")).status_code == 401
        finally:
            for client in clients:
                await client.close()


async def test_while_redis_is_down_the_stats_are_this_instances():
    async with own_redis() as redis:
        app = create_app(service_settings(redis_url=redis.url, redis_timeout_seconds=1))
        async with serve_in_process(app) as running:
            client = await WsClient(running.url).connect(make_token())
            try:
                assert (await stats_of(running.url))["cluster"] is True
                await redis.stop()
                stats = await stats_of(running.url)
                assert (stats["cluster"], stats["redis"]) == (False, "unreachable")
                assert stats["connections"] == 1 and len(stats["instances"]) == 1
                await redis.start()
                await eventually(
                    lambda: asyncio.ensure_future(_is_cluster(running.url)), what="the stats from Redis again"
                )
            finally:
                await client.close()


async def _is_cluster(url: str) -> bool:
    return bool((await stats_of(url))["cluster"])
