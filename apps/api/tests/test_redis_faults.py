"""Redis goes away and comes back, under load, with two instances and a publishing process.
Runs against a redis-server of its own on a free port, which it kills and restarts."""

from __future__ import annotations

import asyncio
import os
import sys
from uuid import uuid4

import httpx

from apps.api.tests.redis_support import isolation, own_redis
from apps.api.tests.support import REPO_ROOT, WsClient, eventually, free_port, make_token, start_server_process
from apps.api.tests.test_redis_fanout import new_project, server_env, subscribed


async def ready(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        return (await http.get("/ready")).status_code


async def test_redis_outage_fails_clearly_and_delivery_resumes_after():
    """With RECOVERY_ENABLED=false (no history, no outbox): what cannot be published fails at
    once, clearly. With recovery on (the default), it waits in the outbox instead: see
    test_recovery_cluster.py::test_a_redis_restart_loses_no_event_a_publisher_was_told_was_taken."""
    tags = {**isolation(), "RECOVERY_ENABLED": "false"}
    async with own_redis() as redis:
        servers = []
        clients: list[WsClient] = []
        newcomers: list[WsClient] = []
        load: asyncio.Task[list[int]] | None = None
        stop_load = asyncio.Event()
        try:
            for _ in range(2):
                env = server_env(redis.url, tags, PORT=str(free_port()))
                servers.append(await start_server_process([sys.executable, "apps/api/main.py"], env=env))
            a, b = servers
            owner = uuid4()
            token = make_token(owner)
            auth = {"Authorization": f"Bearer {token}"}
            project = await new_project(a.url, token)
            member = uuid4()
            async with httpx.AsyncClient(base_url=a.url, headers=auth) as http:
                added = await http.post(f"/api/v1/projects/{project}/members", json={"user_id": str(member)})
                assert added.status_code == 201, added.text
            clients = [await subscribed(s.url, make_token(owner), f"project:{project}") for s in servers]

            async def put_loop() -> list[int]:
                """Steady writes through instance B the whole time (bounded in count)."""
                codes = []
                async with httpx.AsyncClient(base_url=b.url, headers=auth, timeout=10) as http:
                    for i in range(500):
                        if stop_load.is_set():
                            break
                        response = await http.put(f"/api/v1/projects/{project}", json={"description": f"v{i}"})
                        codes.append(response.status_code)
                        assert response.headers["content-type"] == "application/json"
                        await asyncio.sleep(0.02)
                return codes

            load = asyncio.create_task(put_loop())
            await clients[0].expect("project.updated")  # the load is flowing to A's client

            await redis.stop()
            for server in servers:
                await eventually(lambda s=server: _is(ready(s.url), 503), what="/ready turning 503")
                async with httpx.AsyncClient(base_url=server.url) as http:
                    health = (await http.get("/health")).json()
                assert (health["status"], health["redis"], health["mode"]) == ("degraded", "unreachable", "redis")

            # A write needs the database only: it is stored, and says its event was not delivered, quickly.
            async with httpx.AsyncClient(base_url=b.url, headers=auth) as http:
                response = await asyncio.wait_for(http.put(f"/api/v1/projects/{project}", json={"status": "x"}), 5)
                assert response.status_code == 200
                assert (response.json()["changed_fields"], response.json()["event_delivered"]) == (["status"], False)
                assert (await http.get(f"/api/v1/projects/{project}")).json()["status"] == "x"
                # A removal must reach every instance to take effect: refused, and nothing changed.
                removal = await asyncio.wait_for(http.delete(f"/api/v1/projects/{project}/members/{member}"), 5)
                assert (removal.status_code, removal.json()["error"]["code"]) == (503, "UNAVAILABLE")
                assert removal.headers["retry-after"] == "2"
                assert str(member) in (await http.get(f"/api/v1/projects/{project}")).json()["members"]
            # A publishing process gets a clear error, quickly.
            process = await asyncio.create_subprocess_exec(
                sys.executable, "apps/api/events/example_usage.py", cwd=REPO_ROOT,
                env={**os.environ, **server_env(redis.url, tags)},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(process.communicate(), 20)
            assert process.returncode != 0
            assert "DeliveryError: could not publish to Redis at" in output.decode()
            # Clients stay connected, and new ones connect as usual: what is sent to one
            # connection (the welcome, acks) never needs Redis.
            for client in clients:
                assert (await client.call("ping"))["status"] == "pong"
            for server in servers:
                newcomer = await WsClient(server.url).connect(make_token())
                newcomers.append(newcomer)
                assert (await newcomer.expect("connection_established"))["type"] == "connection_established"
                assert (await newcomer.call("ping"))["status"] == "pong"

            await redis.start()
            for server in servers:
                await eventually(lambda s=server: _is(ready(s.url), 200), timeout=15, what="/ready back to 200")
            stop_load.set()
            codes = await asyncio.wait_for(load, 30)
            assert set(codes) == {200}, codes  # every write was stored (the outage cost only events)
            for client in clients:
                client.received("project.updated")  # drop what the load sent

            # Delivery resumed: a change through B reaches the client of A (and B's own).
            async with httpx.AsyncClient(base_url=b.url, headers=auth) as http:
                response = await http.put(f"/api/v1/projects/{project}", json={"status": "back"})
            assert response.status_code == 200 and response.json()["event_delivered"] is True
            async with httpx.AsyncClient(base_url=b.url, headers=auth) as http:
                removal = await http.delete(f"/api/v1/projects/{project}/members/{member}")
            assert removal.status_code == 200 and removal.json()["event_delivered"] is True
            assert str(member) not in removal.json()["project"]["members"]
            for client in clients:

                async def the_change(c: WsClient = client) -> bool:
                    event = await c.expect("project.updated")
                    return event["id"] == response.json()["event_id"]

                await eventually(the_change, what="the post-outage event")
            for server in servers:
                output = "".join(server.output)
                assert "Task exception was never retrieved" not in output and "Traceback" not in output, output
        finally:
            stop_load.set()
            if load is not None and not load.done():
                load.cancel()
            for client in clients + newcomers:
                await client.close()
            for server in servers:
                await server.stop()


async def _is(status: object, expected: int) -> bool:
    try:
        return await status == expected  # type: ignore[misc]
    except httpx.HTTPError:
        return False
