"""Connection state recovery (Socket.IO's, as socket.io-client 4.8 speaks it) against the real
service, with the official client running the card's connection snippet unchanged
(apps/api/tests/js/recovery.mjs): a client that loses its network (a TCP proxy between it and the
server is cut) and comes back within the window gets ``socket.recovered === true``, its rooms, and
exactly the events it missed, in order, before any newer one. Outside the window, or when the
history no longer covers the gap, it is connected afresh (``recovered === false``); access is
checked again (a removed member gets nothing more of the project; an expired token is refused, a
fresh one recovers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import websockets

from apps.api.app import create_app
from apps.api.events.broadcaster import get_broadcaster
from apps.api.tests.redis_support import delete_prefix, isolation
from apps.api.tests.support import RunningServer, make_token, serve_in_process
from apps.api.tests.support import test_settings as settings_for
from apps.api.tests.tcp_proxy import TcpProxy, tcp_proxy
from apps.api.tests.test_js_client import STEP_TIMEOUT, add_member, bearer, create_project, node, run_js  # noqa: F401
from apps.transport.engine_socket import stats

MISSED = 200


async def send(agent: UUID, names: range) -> None:
    for i in names:
        await get_broadcaster().broadcast_agent_status_changed(
            agent_id=agent, agent_name=f"e{i:04}", status="busy", availability=50, current_task=None
        )


async def send_project(project: str, owner: UUID, labels: list[str]) -> None:
    for label in labels:
        await get_broadcaster().broadcast_project_updated(
            project_id=UUID(project), project_name="p", status="active", updated_by=owner, changes={"label": label}
        )


@pytest.fixture(params=["memory", "redis"])
async def where(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """Where the history and the sessions live: this process's memory, or Redis (REDIS_URL)."""
    if request.param == "memory":
        yield {}
        return
    url = redis_url
    tags = isolation()
    yield {"redis_url": url, "redis_key_prefix": tags["REDIS_KEY_PREFIX"], "redis_channel": tags["REDIS_CHANNEL"]}
    await delete_prefix(url, tags["REDIS_KEY_PREFIX"])


@asynccontextmanager
async def service(**settings: Any) -> AsyncIterator[RunningServer]:
    async with serve_in_process(create_app(settings_for(**settings))) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200  # started
        yield running


async def away(js: Any, proxy: TcpProxy) -> None:
    """Take the script's network away and wait until it has noticed."""
    proxy.cut()
    await js.report("disconnected")


async def test_a_client_that_loses_its_network_gets_back_what_it_missed(run_js, where):  # noqa: F811
    agent = uuid4()
    async with service(**where) as server, tcp_proxy(server.port) as proxy:
        env = {
            "WS_URL": f"http://127.0.0.1:{proxy.port}/ws",
            "JWT_TOKEN": make_token(),
            "ROOMS": f"agent:{agent}",
            "EXPECTED": str(3 + MISSED + 1),
        }
        async with run_js("recovery.mjs", **env) as js:
            assert [ack["status"] for ack in await js.report("ready")] == ["success"]
            await send(agent, range(3))
            await js.next(lambda m: m.get("seen") == 3, "the first 3 events")
            recovered_before = stats.recovered
            await away(js, proxy)
            await send(agent, range(3, 3 + MISSED))  # while it is away
            proxy.restore()
            connects = await js.next(lambda m: len(m.get("connects", [])) == 2, "the reconnection", timeout=20)
            assert connects["connects"][1]["recovered"] is True, connects
            assert stats.recovered == recovered_before + 1  # events_recoveries_total{result="recovered"}
            await send(agent, range(3 + MISSED, 3 + MISSED + 1))  # after it is back
            result = await js.report("result", timeout=STEP_TIMEOUT + 20)
            await js.finish()
    assert result["names"] == [f"e{i:04}" for i in range(3 + MISSED + 1)]  # all, in order, once
    assert f"agent:{agent}" in result["rooms"]  # its room back, without subscribing again
    assert result["extra_args"] == [1]  # the offset, after the envelope: `(event) =>` listeners unaffected


async def not_recovered(
    run_js: Any,  # noqa: F811
    settings: dict[str, Any],
    before_restore: Any,
) -> dict[str, Any]:
    """A client away while 200 events go to its room, then back: connected afresh."""
    agent = uuid4()
    async with service(**settings) as running, tcp_proxy(running.port) as proxy:
        env = {
            "WS_URL": f"http://127.0.0.1:{proxy.port}/ws",
            "JWT_TOKEN": make_token(),
            "ROOMS": f"agent:{agent}",
            "EXPECTED": "3",
        }
        async with run_js("recovery.mjs", **env) as js:
            await js.report("ready")
            await send(agent, range(3))
            await js.next(lambda m: m.get("seen") == 3, "the first 3 events")
            not_recovered_before = stats.not_recovered
            await away(js, proxy)
            await send(agent, range(3, 3 + MISSED))
            await before_restore()
            proxy.restore()
            result: dict[str, Any] = await js.report("result", timeout=STEP_TIMEOUT + 20)
            await js.finish()
    assert result["names"] == ["e0000", "e0001", "e0002"]  # nothing of what it missed
    assert stats.not_recovered > not_recovered_before  # events_recoveries_total{result="not_recovered"}
    assert f"agent:{agent}" not in result["rooms"]  # a new connection: it subscribes again itself
    return result


async def test_after_the_window_the_client_is_connected_afresh(run_js, where):  # noqa: F811
    window = 1.0

    async def window_passes() -> None:
        await asyncio.sleep(window + 0.5)  # the stimulus: the recovery window passes

    result = await not_recovered(run_js, {"recovery_window_seconds": window, **where}, window_passes)
    assert [c["recovered"] for c in result["connects"]] == [False, False]


async def test_when_the_history_no_longer_covers_the_gap_the_client_is_connected_afresh(run_js, where):  # noqa: F811
    async def nothing() -> None:
        pass

    result = await not_recovered(run_js, {"recovery_max_events": 50, **where}, nothing)  # 200 sent while away
    assert [c["recovered"] for c in result["connects"]] == [False, False]


async def test_a_member_removed_while_away_recovers_nothing_of_that_project(run_js, where):  # noqa: F811
    owner, member, agent = uuid4(), uuid4(), uuid4()
    owner_token = make_token(owner)
    async with service(**where) as running, httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        project = await create_project(http, owner_token, member)
        async with tcp_proxy(running.port) as proxy:
            env = {
                "WS_URL": f"http://127.0.0.1:{proxy.port}/ws",
                "JWT_TOKEN": make_token(member),
                "ROOMS": f"project:{project},agent:{agent}",
                "EXPECTED": "4",
            }
            async with run_js("recovery.mjs", **env) as js:
                assert [ack["status"] for ack in await js.report("ready")] == ["success", "success"]
                await send_project(project, owner, ["p-before"])
                await js.next(lambda m: m.get("seen") == 1, "the first project event")
                await away(js, proxy)
                await send_project(project, owner, ["p-missed-while-member"])
                removed = await http.delete(f"/api/v1/projects/{project}/members/{member}", headers=bearer(owner_token))
                assert removed.status_code == 200, removed.text
                await send_project(project, owner, ["p-after-removal"])
                await send(agent, range(3))
                proxy.restore()
                result = await js.report("result", timeout=STEP_TIMEOUT + 20)
                await js.finish()
    assert result["connects"][1]["recovered"] is True
    assert result["names"] == ["p-before", "e0000", "e0001", "e0002"]  # the agent's, none of the project's
    assert f"project:{project}" not in result["rooms"] and f"agent:{agent}" in result["rooms"]


async def test_an_expired_token_is_refused_and_a_fresh_one_recovers(run_js, where):  # noqa: F811
    agent, user = uuid4(), uuid4()
    expiring = make_token(user, ttl=3)
    async with service(jwt_leeway_seconds=0, **where) as running, tcp_proxy(running.port) as proxy:
        env = {
            "WS_URL": f"http://127.0.0.1:{proxy.port}/ws",
            "JWT_TOKEN": expiring,
            "FRESH_TOKEN": make_token(user),
            "ROOMS": f"agent:{agent}",
            "EXPECTED": str(1 + MISSED),
        }
        async with run_js("recovery.mjs", **env) as js:
            await js.report("ready")
            await send(agent, range(1))
            await js.next(lambda m: m.get("seen") == 1, "the first event")
            await away(js, proxy)
            await send(agent, range(1, 1 + MISSED))
            await asyncio.sleep(3.5)  # the stimulus: the token expires while the client is away
            proxy.restore()
            refused = await js.next(lambda m: isinstance(m.get("refused"), dict), "the server's refusal", timeout=20)
            result = await js.report("result", timeout=STEP_TIMEOUT + 20)
            await js.finish()
    assert refused["refused"]["code"] == "AUTH_FAILED" and refused["refused"]["reason"] == "expired"
    assert result["connects"][1]["recovered"] is True  # with the fresh token
    assert result["names"] == [f"e{i:04}" for i in range(1 + MISSED)]


async def raw_connect(server: RunningServer, auth: dict[str, Any]) -> dict[str, Any]:
    """A raw WebSocket's CONNECT to /ws with ``auth``: the CONNECT reply's data (then closed)."""
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith("0{")
        await ws.send("40/ws," + json.dumps(auth))
        reply = str(await asyncio.wait_for(ws.recv(), 5))
        assert reply.startswith("40/ws,"), reply
        data: dict[str, Any] = json.loads(reply[len("40/ws,") :])
    return data


async def test_a_session_is_recovered_only_by_its_own_user(server: RunningServer):
    first = await raw_connect(server, {"token": make_token(uuid4())})
    assert set(first) == {"sid", "pid"}
    stolen = await raw_connect(server, {"token": make_token(uuid4()), "pid": first["pid"], "offset": "0-0"})
    assert stolen["pid"] != first["pid"]  # another user: a new session (socket.recovered false)


async def test_python_socketio_clients_get_no_offsets_and_no_session(server: RunningServer):
    """python-socketio's client calls a handler with every argument, so an offset after the
    envelope would break ``def handler(event)``; its requests carry python-engineio's ``t``."""
    from apps.api.tests.support import WsClient

    agent = uuid4()
    client = await WsClient(server.url).connect(make_token())
    try:
        assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
        await send(agent, range(1))
        event = await client.expect("agent.status_changed")
        assert isinstance(event, dict) and event["data"]["agent_name"] == "e0000"  # one argument
        assert isinstance(event["offset"], str)  # where it stands: what `subscribe` takes as `since`
    finally:
        await client.close()
    assert (await raw_connect(server, {"token": make_token(), "recovery": False})).keys() == {"sid"}


class RawSocket:
    """A raw WebSocket joined to /ws (it speaks recovery: no python-engineio ``t``)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[str] = []

    async def next(self, prefix: str) -> str:
        async with asyncio.timeout(5):
            while True:
                frame = str(await self.ws.recv())
                if frame == "2":
                    await self.ws.send("3")
                    continue
                if frame.startswith(prefix):
                    return frame
                self.frames.append(frame)


@asynccontextmanager
async def raw_socket(server: RunningServer, token: str) -> AsyncIterator[RawSocket]:
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        raw = RawSocket(ws)
        await raw.next("0{")
        await ws.send("40/ws," + json.dumps({"token": token}))
        await raw.next("40/ws,")
        yield raw


def event_args(frame: str) -> list[Any]:
    args: list[Any] = json.loads(frame[len("42/ws,") :])
    return args


async def test_subscribe_since_an_offset_replays_what_came_after_it_before_anything_newer(where):
    agent, user = uuid4(), uuid4()
    room = f"agent:{agent}"
    async with service(recovery_max_events=50, **where) as running:
        async with raw_socket(running, make_token(user)) as first:
            await first.ws.send(f'42/ws,1["subscribe",{{"room":"{room}"}}]')
            await first.next("43/ws,1")
            await send(agent, range(5))
            offsets = [event_args(await first.next('42/ws,["agent.status_changed"'))[2] for _ in range(5)]
        async with raw_socket(running, make_token(user)) as later:  # a page reload: no session
            await later.ws.send(f'42/ws,1["subscribe",{{"room":"{room}","since":"{offsets[1]}"}}]')
            replayed = [event_args(await later.next('42/ws,["agent.status_changed"')) for _ in range(3)]
            ack = json.loads((await later.next("43/ws,1"))[len("43/ws,1") :])[0]
            await send(agent, range(5, 6))
            live = event_args(await later.next('42/ws,["agent.status_changed"'))
            await send(agent, range(6, 260))  # the history keeps 50: what came before is gone
            for _ in range(6, 260):
                await later.next('42/ws,["agent.status_changed"')
            await later.ws.send(f'42/ws,2["subscribe",{{"room":"{room}","since":"{offsets[0]}"}}]')
            stale = json.loads((await later.next("43/ws,2"))[len("43/ws,2") :])[0]
            before = len(later.frames)
            await later.ws.send(f'42/ws,3["subscribe",{{"room":"user:{uuid4()}","since":"{offsets[0]}"}}]')
            denied = json.loads((await later.next("43/ws,3"))[len("43/ws,3") :])[0]
            sent_with_denial = later.frames[before:]
            await later.ws.send(f'42/ws,4["subscribe",{{"room":"{room}","since":5}}]')
            invalid = json.loads((await later.next("43/ws,4"))[len("43/ws,4") :])[0]
    assert [args[1]["data"]["agent_name"] for args in replayed] == ["e0002", "e0003", "e0004"]
    assert [args[2] for args in replayed] == offsets[2:]  # each with its offset
    assert [args[1]["offset"] for args in replayed] == offsets[2:]  # in the envelope too
    assert ack["status"] == "success" and ack["covered"] is True and ack["replayed"] == 3
    assert live[1]["data"]["agent_name"] == "e0005" and live[2] > offsets[-1]
    assert stale["status"] == "success" and stale["covered"] is False and stale["replayed"] == 0
    assert denied["code"] == "ROOM_ACCESS_DENIED" and sent_with_denial == []  # nothing of that room
    assert invalid["code"] == "INVALID_REQUEST"


async def test_http_clients_read_a_rooms_events_since_an_offset_authorised_as_subscribe(where):
    agent, owner, stranger = uuid4(), uuid4(), uuid4()
    async with service(**where) as running, httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        project = await create_project(http, make_token(owner))
        async with raw_socket(running, make_token(owner)) as socket:
            await socket.ws.send(f'42/ws,1["subscribe",{{"room":"agent:{agent}"}}]')
            await socket.next("43/ws,1")
            await send(agent, range(4))
            offsets = [event_args(await socket.next('42/ws,["agent.status_changed"'))[2] for _ in range(4)]
        url = f"/api/v1/rooms/agent:{agent}/events"
        page = (await http.get(url, params={"since": offsets[0], "limit": 2}, headers=bearer(make_token()))).json()
        rest = (await http.get(url, params={"since": page["next"]}, headers=bearer(make_token()))).json()
        future = await http.get(url, params={"since": "99999999999999-0"}, headers=bearer(make_token()))
        other_project = await http.get(
            f"/api/v1/rooms/project:{project}/events",
            params={"since": offsets[0]},
            headers=bearer(make_token(stranger)),
        )
        bad = await http.get(url, params={"since": "yesterday"}, headers=bearer(make_token()))
        no_token = await http.get(url, params={"since": offsets[0]})
    assert page["covered"] is True and [e["offset"] for e in page["events"]] == offsets[1:3]
    assert page["events"][0]["event"]["data"]["agent_name"] == "e0001" and page["next"] == offsets[2]
    assert [e["event"]["data"]["agent_name"] for e in rest["events"]] == ["e0003"]
    assert future.json()["covered"] is False and future.json()["events"] == []
    assert other_project.status_code == 403 and other_project.json()["error"]["code"] == "ROOM_ACCESS_DENIED"
    assert bad.status_code == 422 and no_token.status_code == 401
