"""Connection state recovery across instances (history and sessions in Redis): two instances
behind a small sticky TCP balancer, the official client (the card's connection snippet,
unchanged) on the first; the first is killed with SIGKILL while 200 events are being published:
the client reconnects through the balancer to the second and gets everything, in order, once,
``socket.recovered === true``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from apps.api.tests.redis_support import RedisProcess, delete_prefix, isolation, own_redis
from apps.api.tests.support import ServerProcess, WsClient, free_port, make_token, start_server_process
from apps.api.tests.tcp_proxy import tcp_proxy
from apps.api.tests.test_js_client import STEP_TIMEOUT, node, run_js  # noqa: F401 - the Node fixtures
from apps.api.tests.test_redis_fanout import server_env

SERVICE = {"Authorization": f"Bearer {make_token(roles=['service'])}"}
MISSED = 200


@pytest.fixture
async def tags(redis_url: str) -> AsyncIterator[dict[str, str]]:
    tags = isolation()
    yield tags
    await delete_prefix(redis_url, tags["REDIS_KEY_PREFIX"])


async def start(redis_url: str, tags: dict[str, str]) -> ServerProcess:
    env = server_env(redis_url, tags, PORT=str(free_port()))
    return await start_server_process([sys.executable, "apps/api/main.py"], env=env)


async def publish(http: httpx.AsyncClient, agent: UUID, names: range) -> None:
    for i in names:
        data = {"agent_id": str(agent), "agent_name": f"e{i:04}", "status": "busy", "availability": 50}
        response = await http.post(
            "/api/v1/events", json={"type": "agent.status_changed", "data": data}, headers=SERVICE
        )
        assert response.status_code == 202, response.text


async def publish_through_a_redis_restart(
    http: httpx.AsyncClient, redis: RedisProcess, agent: UUID, kill_at: int, total: int
) -> None:
    """Events e0000.. to ``total``: Redis is killed (SIGKILL) after ``kill_at`` of them, kept down
    for a second while publishing goes on (up to ten short of ``total``), started again, and the
    rest published."""
    await publish(http, agent, range(kill_at))
    await redis.stop()
    down = asyncio.ensure_future(asyncio.sleep(1.0))  # the stimulus: Redis is down for 1 s
    published = kill_at
    while not down.done() and published < total - 10:
        await publish(http, agent, range(published, published + 1))
        published += 1
    await down  # down for the whole second
    await redis.start()
    await publish(http, agent, range(published, total))


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def test_a_client_whose_instance_is_killed_recovers_on_another(run_js, redis_url: str, tags):  # noqa: F811
    first, second = await start(redis_url, tags), await start(redis_url, tags)
    agent = uuid4()
    try:
        async with (
            tcp_proxy(port_of(first), port_of(second), failover=True) as balancer,
            httpx.AsyncClient(base_url=second.url, timeout=10) as http,
        ):
            env = {
                "WS_URL": f"http://127.0.0.1:{balancer.port}/ws",
                "JWT_TOKEN": make_token(),
                "ROOMS": f"agent:{agent}",
                "EXPECTED": str(3 + MISSED + 1),
            }
            async with run_js("recovery.mjs", **env) as js:
                assert [ack["status"] for ack in await js.report("ready")] == ["success"]
                await publish(http, agent, range(3))  # through the second instance and Redis
                await js.next(lambda m: m.get("seen") == 3, "the first 3 events")
                stream = asyncio.ensure_future(publish(http, agent, range(3, 3 + MISSED)))
                await js.next(lambda m: (m.get("seen") or 0) >= 30, "some of the stream")
                first.process.kill()  # SIGKILL: nothing said, nothing flushed
                await js.report("disconnected")
                await asyncio.wait_for(stream, 30)
                connects = await js.next(lambda m: len(m.get("connects", [])) == 2, "the reconnection", timeout=20)
                await publish(http, agent, range(3 + MISSED, 4 + MISSED))
                result: dict[str, Any] = await js.report("result", timeout=STEP_TIMEOUT + 20)
                await js.finish()
    finally:
        await first.stop()
        await second.stop()
    assert connects["connects"][1]["recovered"] is True, connects
    assert result["names"] == [f"e{i:04}" for i in range(4 + MISSED)]  # everything, in order, once
    assert f"agent:{agent}" in result["rooms"]


async def test_a_redis_restart_loses_no_event_a_publisher_was_told_was_taken():
    """Redis (append-only file) killed and started again while events are published to one
    instance at a steady pace: every publish is answered 202 (those Redis could not take wait in
    the instance's outbox, in order), and every client of both instances gets every event, in
    order, once (an instance that lost its subscription reads what it missed from the history)."""
    total, kill_at = 120, 40
    agent = uuid4()
    async with own_redis() as redis:
        tags = isolation()
        first, second = await start(redis.url, tags), await start(redis.url, tags)
        clients: list[WsClient] = []
        try:
            for server in (first, second):
                for _ in range(5):
                    client = await WsClient(server.url).connect(make_token())
                    clients.append(client)
                    assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
            async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
                await publish_through_a_redis_restart(http, redis, agent, kill_at, total)
            for client in clients:
                events = [await client.expect("agent.status_changed", timeout=15) for _ in range(total)]
                names = [event["data"]["agent_name"] for event in events]
                assert names == [f"e{i:04}" for i in range(total)]
        finally:
            for client in clients:
                await client.close()
            await first.stop()
            await second.stop()


async def test_a_stalled_redis_delivers_each_event_once():
    """Redis stopped (SIGSTOP) for longer than REDIS_TIMEOUT_SECONDS while events are published:
    a publish whose answer never came is retried from the outbox, and Redis, which did take it,
    does not take it twice (each event's id is remembered): every client gets every event once."""
    total = 60
    agent = uuid4()
    async with own_redis() as redis:
        tags = isolation()
        first, second = await start(redis.url, tags), await start(redis.url, tags)
        clients: list[WsClient] = []
        try:
            for server in (first, second):
                client = await WsClient(server.url).connect(make_token())
                clients.append(client)
                assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
            assert redis.process is not None
            async with httpx.AsyncClient(base_url=first.url, timeout=20) as http:
                await publish(http, agent, range(20))
                redis.process.send_signal(signal.SIGSTOP)
                try:
                    stalled = asyncio.ensure_future(asyncio.sleep(3.0))  # the stimulus: over the 2 s timeout
                    published = 20
                    while not stalled.done() and published < 40:
                        await publish(http, agent, range(published, published + 1))
                        published += 1
                    await stalled
                finally:
                    redis.process.send_signal(signal.SIGCONT)
                await publish(http, agent, range(published, total))
            for client in clients:
                events = [await client.expect("agent.status_changed", timeout=20) for _ in range(total)]
                assert [event["data"]["agent_name"] for event in events] == [f"e{i:04}" for i in range(total)]
                await marker_arrives(client, agent)  # and nothing more: no event came twice
        finally:
            for client in clients:
                await client.close()
            await first.stop()
            await second.stop()


async def marker_arrives(client: WsClient, agent: UUID) -> None:
    """A direct event to the client's own connection, after everything: what arrives before it is
    all there is (Socket.IO keeps a connection's order)."""
    assert (await client.call("ping"))["status"] == "pong"
    assert client.received("agent.status_changed") == []


async def test_the_official_client_misses_nothing_across_a_redis_restart(run_js):  # noqa: F811
    """The card's socket (socket.io-client) on one instance, events published through the other,
    Redis (append-only file) killed and started again in the middle: every event, in order, once,
    on a connection that never dropped."""
    total, kill_at = 80, 20
    agent = uuid4()
    async with own_redis() as redis:
        tags = isolation()
        first, second = await start(redis.url, tags), await start(redis.url, tags)
        try:
            env = {
                "WS_URL": f"{second.url}/ws",
                "JWT_TOKEN": make_token(),
                "ROOMS": f"agent:{agent}",
                "EXPECTED": str(total),
                "CONNECTS": "1",
            }
            async with run_js("recovery.mjs", **env) as js, httpx.AsyncClient(base_url=first.url, timeout=10) as http:
                assert [ack["status"] for ack in await js.report("ready")] == ["success"]
                await publish_through_a_redis_restart(http, redis, agent, kill_at, total)
                result: dict[str, Any] = await js.report("result", timeout=STEP_TIMEOUT + 20)
                await js.finish()
        finally:
            await first.stop()
            await second.stop()
    assert result["names"] == [f"e{i:04}" for i in range(total)]
    assert result["disconnects"] == [] and len(result["connects"]) == 1
