"""Several instances, one stream of events, through a real Redis: server processes of our own,
a publishing process with no server, and several workers on one port."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import httpx
import pytest

from apps.api.tests.postgres_support import prepared_postgres
from apps.api.tests.redis_support import delete_prefix, isolation
from apps.api.tests.support import (
    REPO_ROOT,
    TEST_SECRET,
    ServerProcess,
    WsClient,
    free_port,
    make_token,
    start_server_process,
)

ALL_EVENTS = [
    "project.updated", "agent.status_changed", "agent.connected", "agent.disconnected", "workflow.started",
    "workflow.progress", "workflow.completed", "workflow.failed", "pr.created", "pr.updated", "pr.closed",
    "issue.created", "issue.updated", "issue.closed", "ai.suggestion", "ai.analysis_complete", "project.deleted",
]  # fmt: skip


def server_env(redis_url: str, tags: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "HOST": "127.0.0.1",
        "ENVIRONMENT": "development",
        **tags,
        **extra,
    }


@pytest.fixture(scope="module")
async def tags(redis_url: str) -> AsyncIterator[dict[str, str]]:
    # the instances share PostgreSQL, as in production (several processes need a database server)
    tags = {**isolation(), "DATABASE_URL": await prepared_postgres()}
    yield tags
    await delete_prefix(redis_url, tags["REDIS_KEY_PREFIX"])


@pytest.fixture(scope="module")
async def instances(redis_url: str, tags: dict[str, str]) -> AsyncIterator[list[ServerProcess]]:
    """Two instances of the service sharing one Redis."""
    servers: list[ServerProcess] = []
    try:
        for _ in range(2):
            port = free_port()
            env = server_env(redis_url, tags, PORT=str(port))
            servers.append(await start_server_process([sys.executable, "apps/api/main.py"], env=env))
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def run_publisher(args: list[str], env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=REPO_ROOT, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def new_project(url: str, token: str, *members: UUID) -> str:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        response = await http.post("/api/v1/projects", json={"name": "shared"})
        assert response.status_code == 201, response.text
        project = response.json()["id"]
        for member in members:
            added = await http.post(f"/api/v1/projects/{project}/members", json={"user_id": str(member)})
            assert added.status_code == 201, added.text
    return project


async def subscribed(url: str, token: str, *rooms: str) -> WsClient:
    client = await WsClient(url).connect(token)
    await client.expect("connection_established")
    for room in rooms:
        reply = await client.call("subscribe", {"room": room})
        assert reply["status"] == "success", (room, reply)
    return client


async def until_marker(client: WsClient, marker: UUID) -> list[dict]:
    """Wait for the marker (the publisher's last event); returns the other agent.connected events
    that came first. Per-connection order means nothing published before it is still on its way."""
    others = []
    while (event := await client.expect("agent.connected", timeout=10))["data"]["agent_id"] != str(marker):
        others.append(event)
    return others


async def test_every_event_reaches_every_subscriber_once_across_instances(instances, redis_url, tags):
    a, b = instances
    actor, member, outsider = uuid4(), uuid4(), uuid4()
    agent, marker = uuid4(), uuid4()
    project = await new_project(a.url, make_token(actor), member)  # stored through A, read through B
    clients: dict[str, WsClient] = {}
    try:
        for server, name in ((a, "A"), (b, "B")):
            rooms = (f"project:{project}", f"agent:{agent}", f"agent:{marker}")
            clients[f"actor@{name}"] = await subscribed(server.url, make_token(actor), *rooms)
            clients[f"member@{name}"] = await subscribed(server.url, make_token(member), *rooms)
            clients[f"outsider@{name}"] = await subscribed(server.url, make_token(outsider), f"agent:{marker}")

        env = server_env(redis_url, tags)
        args = ["apps/api/tests/publish_events.py", project, str(actor), str(agent), str(marker)]
        assert "published" in await run_publisher(args, env)

        for name, client in clients.items():
            before_marker = await until_marker(client, marker)
            received = Counter({event: len(client.received(event)) for event in ALL_EVENTS})
            received["agent.connected"] += len(before_marker)
            if name.startswith("outsider"):
                assert +received == Counter(), name
                continue
            expected = Counter(ALL_EVENTS)
            if name.startswith("member"):
                del expected["workflow.failed"]  # it went to the actor's user room only
            assert received == expected, name
    finally:
        for client in clients.values():
            await client.close()


async def test_a_route_on_one_instance_reaches_clients_of_the_other(instances):
    a, b = instances
    owner = uuid4()
    token = make_token(owner)
    project = await new_project(b.url, token)
    on_a = await subscribed(a.url, make_token(owner), f"project:{project}")
    try:
        async with httpx.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {token}"}) as http:
            response = await http.put(f"/api/v1/projects/{project}", json={"status": "archived"})
        assert response.status_code == 200
        assert response.json()["event_delivered"] is True
        event = await on_a.expect("project.updated")
        assert event["id"] == response.json()["event_id"]
        assert event["data"]["changes"]["fields"] == ["status"]
    finally:
        await on_a.close()


async def test_the_cards_temporal_function_in_its_own_process_reaches_clients(instances, redis_url, tags):
    a, b = instances
    owner = uuid4()
    project = await new_project(a.url, make_token(owner))
    clients = [await subscribed(server.url, make_token(owner), f"project:{project}") for server in (a, b)]
    try:
        args = ["apps/api/events/example_usage.py", "--project", project, "--user", str(owner)]
        await run_publisher(args, server_env(redis_url, tags))
        for client in clients:
            await client.expect("workflow.started")
            progress = await client.expect("workflow.progress")  # published with the workflow id only
            assert (progress["data"]["current_step"], progress["data"]["progress"]) == ("Processing", 50)
            assert progress["data"]["project_id"] is None
    finally:
        for client in clients:
            await client.close()


async def test_publishing_without_redis_url_says_what_to_set():
    process = await asyncio.create_subprocess_exec(
        sys.executable, "apps/api/events/example_usage.py", cwd=REPO_ROOT,
        env={**os.environ, "REDIS_URL": "", "LOG_FILE": ""},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0
    assert "BroadcasterNotConfigured" in output.decode() and "Set REDIS_URL" in output.decode()


async def test_several_workers_on_one_port_all_deliver(redis_url, tags):
    port = free_port()
    env = server_env(redis_url, tags, PORT=str(port), WORKERS="3")
    # The workers listen on the parent's socket once started: wait for all three to say so.
    server = await start_server_process(
        [sys.executable, "apps/api/main.py"], env=env, ready="Application startup complete", ready_count=3
    )
    owner = uuid4()
    token = make_token(owner)
    clients: list[WsClient] = []
    try:
        project = await new_project(server.url, token)
        instances: set[str] = set()
        for _ in range(40):  # the kernel spreads connections over the workers; stop once two are seen
            client = await WsClient(server.url).connect(token)
            clients.append(client)
            instances.add((await client.expect("connection_established"))["data"]["instance_id"])
            if len(instances) >= 2 and len(clients) >= 6:
                break
        assert len(instances) >= 2, "every connection landed on one worker"
        for client in clients:
            assert (await client.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
            for status in ("archived", "active"):
                response = await http.put(f"/api/v1/projects/{project}", json={"status": status})
                assert response.json()["event_delivered"] is True
        for client in clients:  # each got the first change once, then the second: nothing twice, nothing lost
            assert [(await client.expect("project.updated"))["data"]["status"] for _ in range(2)] == [
                "archived",
                "active",
            ]
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_each_connections_events_are_handled_in_order_under_redis(instances, redis_url, tags):
    """subscribe, unsubscribe, debug:rooms sent back to back on 50 connections, where subscribe to
    a project room awaits a membership lookup in Redis: every connection's acks come back in the
    order it sent them and nobody is left subscribed (before, 3 to 40 of 40 were, and debug:rooms
    was answered before subscribe)."""
    a, _ = instances
    owner = uuid4()
    project = await new_project(a.url, make_token(owner))
    room = f"project:{project}"
    clients = [await WsClient(a.url).connect(make_token(owner)) for _ in range(50)]
    try:
        replies: list[list[dict]] = [[] for _ in clients]
        done = [asyncio.Event() for _ in clients]

        def recorder(i: int):
            def record(reply: dict) -> None:
                replies[i].append(reply)
                if len(replies[i]) == 3:
                    done[i].set()

            return record

        for i, client in enumerate(clients):
            for event, data in (("subscribe", {"room": room}), ("unsubscribe", {"room": room}), ("debug:rooms", {})):
                await client.sio.emit(event, data, namespace="/ws", callback=recorder(i))
        await asyncio.wait_for(asyncio.gather(*(d.wait() for d in done)), 20)
        for got in replies:
            assert [r.get("message", "").split(" ")[0] or "rooms" for r in got] == [
                "Subscribed",
                "Unsubscribed",
                "rooms",
            ]
            assert room not in got[2]["rooms"]
        admin = {"Authorization": f"Bearer {make_token(roles=['admin'])}"}
        async with httpx.AsyncClient(base_url=a.url, headers=admin) as http:
            assert room not in (await http.get("/api/v1/websocket/stats")).json()["rooms"]
    finally:
        for client in clients:
            await client.close()


async def test_what_is_sent_to_one_connection_never_goes_through_redis(instances, redis_url, tags):
    """The welcome, acks and error acks are this instance's business: nothing is published for
    them (before, every connection's welcome was published to every instance). Proven with a
    marker: the first thing on the channel after all of it is the project.updated sent last."""
    from redis import asyncio as aioredis

    a, _ = instances
    owner = uuid4()
    token = make_token(owner)
    project = await new_project(a.url, token)
    redis = aioredis.Redis.from_url(redis_url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(tags["REDIS_CHANNEL"])
    clients: list[WsClient] = []
    try:
        for _ in range(5):
            client = await WsClient(a.url).connect(make_token())
            clients.append(client)
            await client.expect("connection_established")
            assert (await client.call("ping"))["status"] == "pong"
            assert (await client.call("subscribe", {"room": "nowhere"}))["code"] == "INVALID_ROOM"
        async with httpx.AsyncClient(base_url=a.url, headers={"Authorization": f"Bearer {token}"}) as http:
            marker = (await http.put(f"/api/v1/projects/{project}", json={"status": "marker"})).json()["event_id"]

        async def first_message() -> bytes:
            while (message := await pubsub.get_message(timeout=1.0)) is None:
                pass
            return bytes(message["data"])

        first = await asyncio.wait_for(first_message(), 10)
        assert b"project.updated" in first and marker.encode() in first, first
    finally:
        for client in clients:
            await client.close()
        await pubsub.aclose()
        await redis.aclose()


async def test_a_removal_or_a_deletion_through_one_instance_takes_effect_on_every_instance(instances):
    a, b = instances
    owner, member = uuid4(), uuid4()
    project = await new_project(a.url, make_token(owner), member)
    room = f"project:{project}"
    owner_at_a = await subscribed(a.url, make_token(owner), room)
    member_at_a = await subscribed(a.url, make_token(member), room)
    member_at_b = await subscribed(b.url, make_token(member), room)
    try:
        async with httpx.AsyncClient(base_url=b.url, headers={"Authorization": f"Bearer {make_token(owner)}"}) as http:
            removed = await http.delete(f"/api/v1/projects/{project}/members/{member}")
            assert removed.status_code == 200 and removed.json()["event_delivered"] is True
            for client in (member_at_a, member_at_b):
                assert (await client.expect("project.access_revoked"))["data"]["reason"] == "member_removed"
                assert room not in (await client.call("debug:rooms"))["rooms"]
            changed = await http.put(f"/api/v1/projects/{project}", json={"status": "paused"})
            assert (await owner_at_a.expect("project.updated"))["id"] == changed.json()["event_id"]
            deleted = await http.delete(f"/api/v1/projects/{project}")
            assert deleted.status_code == 200
        assert (await owner_at_a.expect("project.deleted"))["id"] == deleted.json()["event_id"]
        assert (await owner_at_a.expect("project.access_revoked"))["data"]["reason"] == "project_deleted"
        assert room not in (await owner_at_a.call("debug:rooms"))["rooms"]
        for client in (member_at_a, member_at_b):
            assert client.received("project.updated") == [] and client.received("project.deleted") == []
    finally:
        for client in (owner_at_a, member_at_a, member_at_b):
            await client.close()
