"""WebSocket tests: real server, real python-socketio clients (``pytest apps/api/websocket/tests.py -v``).

They cover connecting (every way a token may come, both transports), every refusal, the rooms a
connection is in, subscribe/unsubscribe/debug:rooms/ping and their errors, room access control,
and token expiry. Absence of an event is proven with a marker event sent afterwards to the same
connection: Socket.IO keeps per-connection order, so once the marker is in, nothing earlier is
still on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
from uuid import UUID, uuid4

import pytest

from apps.api.events.broadcaster import get_broadcaster
from apps.api.tests.support import (
    ConnectRefused,
    RunningServer,
    WsClient,
    create_project,
    eventually,
    make_token,
    marker,
    raw_subscriber,
    stock_differs,
)
from apps.transport.tests.support import frames_until_closed

PROJECT = "550e8400-e29b-41d4-a716-446655440000"


async def refusal(connect, *args, **kwargs) -> dict:
    with pytest.raises(ConnectRefused) as info:
        await connect(*args, **kwargs)
    data = info.value.data
    assert isinstance(data, dict), data
    return data


# --- connecting ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_connects_with_auth_token_and_gets_connection_established(connect, token, user_id, transport):
    client = await connect(token, transports=[transport])
    event = await client.expect("connection_established")
    assert event["type"] == "connection_established"
    assert event["source"] == "websocket_server"
    assert event["timestamp"].endswith("Z")
    UUID(event["id"])
    data = event["data"]
    assert data["connection_id"] == client.sid
    assert data["user_id"] == str(user_id)
    assert data["rooms"] == [f"user:{user_id}", "global"]
    assert data["protocol_version"] == "1.0"


async def test_token_in_authorization_header(connect, token, user_id):
    client = await connect(None, headers={"Authorization": f"Bearer {token}"})
    assert (await client.expect("connection_established"))["data"]["user_id"] == str(user_id)


async def test_token_in_query_string(connect, token, user_id):
    client = await connect(None, query=f"token={token}")
    assert (await client.expect("connection_established"))["data"]["user_id"] == str(user_id)


async def test_auth_token_wins_over_other_places(connect, token, user_id):
    client = await connect(token, headers={"Authorization": "Bearer not-a-token"}, query="token=also-not")
    assert (await client.expect("connection_established"))["data"]["user_id"] == str(user_id)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("not-a-jwt", "malformed"),
        (make_token(secret="another-secret-0123456789abcdef0123456789"), "bad_signature"),
        (make_token(ttl=-60), "expired"),
        (make_token(algorithm="HS512"), "bad_algorithm"),
        (make_token(exp=None), "missing_claim"),
        (make_token(sub=None), "missing_claim"),
        (make_token("alice"), "invalid_subject"),
        ("x" * 9000, "malformed"),
    ],
    ids=["none", "empty", "garbage", "signature", "expired", "algorithm", "no-exp", "no-sub", "sub", "huge"],
)
async def test_refused_tokens_say_auth_failed_and_why(connect, token, reason):
    data = await refusal(connect, token)
    content = data["data"]["content"]
    assert content["code"] == "AUTH_FAILED"
    assert content["reason"] == reason
    assert content["message"] and data["message"] == content["message"]
    if token:
        assert token not in str(data)


async def test_unsigned_none_algorithm_token_is_refused(connect):
    import base64
    import json

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': str(uuid4()), 'exp': 9999999999})}."
    content = (await refusal(connect, unsigned))["data"]["content"]
    assert content["code"] == "AUTH_FAILED"
    assert content["reason"] == "bad_algorithm"


async def test_default_namespace_is_refused_with_a_clear_error(server: RunningServer, token):
    import socketio

    errors: list = []
    client = socketio.AsyncClient(reconnection=False)
    client.on("connect_error", lambda data=None: errors.append(data), namespace="/")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(server.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    await client.shutdown()
    content = errors[0]["data"]["content"]
    assert content["code"] == "INVALID_NAMESPACE"
    assert "/ws" in content["message"]


async def test_path_alias_under_ws_reaches_the_same_server(server: RunningServer, token, user_id):
    import socketio

    client = socketio.AsyncClient(reconnection=False)
    received: asyncio.Queue = asyncio.Queue()
    client.on("connection_established", received.put_nowait, namespace="/ws")
    await client.connect(
        server.url, namespaces=["/ws"], socketio_path="/ws/socket.io", auth={"token": token}, wait_timeout=5
    )
    try:
        assert (await asyncio.wait_for(received.get(), 5))["data"]["user_id"] == str(user_id)
    finally:
        await client.disconnect()


async def test_a_refused_client_harms_nobody(connect, token):
    client = await connect(token)
    await client.expect("connection_established")
    for bad in (None, "bad", make_token(ttl=-5)):
        await refusal(connect, bad)
    assert (await client.call("ping"))["status"] == "pong"


# --- rooms -----------------------------------------------------------------------------------


async def test_debug_rooms_lists_the_connections_rooms(connect, token, user_id):
    client = await connect(token)
    reply = await client.call("debug:rooms", {})
    assert reply["status"] == "success"
    assert reply["rooms"] == sorted([f"user:{user_id}", "global"])
    assert reply["connection_id"] == client.sid


async def test_ping_answers_pong(connect, token):
    client = await connect(token)
    assert (await client.call("ping"))["status"] == "pong"
    assert (await client.call("ping", {"any": "thing"}))["status"] == "pong"


async def test_subscribe_to_agent_room_and_receive_its_events(connect, token):
    client = await connect(token)
    agent = uuid4()
    reply = await client.call("subscribe", {"room": f"agent:{agent}"})
    assert reply == {"status": "success", "room": f"agent:{agent}", "message": f"Subscribed to agent:{agent}"}
    await get_broadcaster().broadcast_agent_status_changed(
        agent_id=agent, agent_name="GPT-4", status="online", availability=85
    )
    event = await client.expect("agent.status_changed")
    assert event["data"]["agent_id"] == str(agent)
    assert event["data"]["availability"] == 85


async def test_room_names_are_canonicalised(connect, token):
    client = await connect(token)
    agent = uuid4()
    reply = await client.call("subscribe", {"room": f"agent:{str(agent).upper()}"})
    assert reply["room"] == f"agent:{agent}"
    assert f"agent:{agent}" in (await client.call("debug:rooms"))["rooms"]


async def test_subscribe_is_idempotent_and_delivers_once(connect, token):
    client = await connect(token)
    agent = uuid4()
    for _ in range(3):
        assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
    await get_broadcaster().broadcast_agent_connected(agent_id=agent, agent_name="A")
    await client.expect("agent.connected")
    await marker(client)
    assert client.received("agent.connected") == []


async def test_subscribe_without_ack_callback_still_subscribes(connect, token):
    client = await connect(token)
    agent = uuid4()
    await client.emit("subscribe", {"room": f"agent:{agent}"})
    rooms = (await client.call("debug:rooms"))["rooms"]  # answered after the subscribe: same connection, in order
    assert f"agent:{agent}" in rooms


async def test_unsubscribe_stops_events_and_is_harmless_to_repeat(connect, token):
    client = await connect(token)
    agent = uuid4()
    await client.call("subscribe", {"room": f"agent:{agent}"})
    for _ in range(2):
        reply = await client.call("unsubscribe", {"room": f"agent:{agent}"})
        assert reply["status"] == "success"
    assert f"agent:{agent}" not in (await client.call("debug:rooms"))["rooms"]
    await get_broadcaster().broadcast_agent_connected(agent_id=agent, agent_name="A")
    await marker(client)
    assert client.received("agent.connected") == []


@pytest.mark.parametrize(
    "payload",
    [
        {"room": "workflow:550e8400-e29b-41d4-a716-446655440000"},
        {"room": "project:not-a-uuid"},
        {"room": "global:1"},
        {"room": ""},
        {"room": 42},
        {"room": "x" * 10_000},
        {},
        None,
        [1, 2],
    ],
    ids=["unknown-kind", "bad-uuid", "global-with-id", "empty", "number", "huge", "no-room", "none", "list"],
)
async def test_invalid_rooms_are_refused(connect, token, payload):
    client = await connect(token)
    for event in ("subscribe", "unsubscribe"):
        reply = await client.call(event, payload)
        assert reply["status"] == "error"
        assert reply["code"] == "INVALID_ROOM"
        assert reply["message"]


async def test_internal_admin_room_cannot_be_subscribed(connect, token):
    client = await connect(token)
    reply = await client.call("subscribe", {"room": "role:admin"})
    assert (reply["status"], reply["code"]) == ("error", "INVALID_ROOM")


async def test_only_own_user_room(connect, token, user_id):
    client = await connect(token)
    assert (await client.call("subscribe", {"room": f"user:{user_id}"}))["status"] == "success"
    reply = await client.call("subscribe", {"room": f"user:{uuid4()}"})
    assert (reply["status"], reply["code"]) == ("error", "ROOM_ACCESS_DENIED")


async def test_project_room_needs_membership(connect, http, token, user_id):
    project_id = await create_project(http, token)
    owner = await connect(token)
    assert (await owner.call("subscribe", {"room": f"project:{project_id}"}))["status"] == "success"

    outsider_id = uuid4()
    outsider_token = make_token(outsider_id)
    outsider = await connect(outsider_token)
    reply = await outsider.call("subscribe", {"room": f"project:{project_id}"})
    assert (reply["status"], reply["code"]) == ("error", "ROOM_ACCESS_DENIED")
    missing = await outsider.call("subscribe", {"room": f"project:{uuid4()}"})
    assert missing["code"] == "ROOM_ACCESS_DENIED"

    added = await http.post(
        f"/api/v1/projects/{project_id}/members",
        json={"user_id": str(outsider_id)},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert added.status_code == 201, added.text
    assert (await outsider.call("subscribe", {"room": f"project:{project_id}"}))["status"] == "success"


async def test_admin_may_join_any_room(connect, http, token):
    project_id = await create_project(http, token)
    admin = await connect(make_token(roles=["admin"]))
    welcome = await admin.expect("connection_established")
    assert "role:admin" in welcome["data"]["rooms"]
    for room in (f"project:{project_id}", f"user:{uuid4()}", f"project:{uuid4()}"):
        assert (await admin.call("subscribe", {"room": room}))["status"] == "success"


async def test_non_member_never_receives_project_events(connect, http, token, user_id):
    project_id = await create_project(http, token)
    member = await connect(token)
    await member.call("subscribe", {"room": f"project:{project_id}"})
    outsider = await connect(make_token())
    await outsider.call("subscribe", {"room": f"project:{project_id}"})  # refused
    response = await http.put(
        f"/api/v1/projects/{project_id}", json={"status": "archived"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert (await member.expect("project.updated"))["data"]["project_id"] == project_id
    await marker(outsider)
    assert outsider.received("project.updated") == []


async def test_unknown_client_event_gets_an_error_ack(connect, token):
    client = await connect(token)
    reply = await client.call("launch_missiles", {"now": True})
    assert (reply["status"], reply["code"]) == ("error", "UNKNOWN_EVENT")
    assert (await client.call("ping"))["status"] == "pong"


async def test_flooding_client_is_rate_limited_and_others_are_not(connect, token):
    flooder = await connect(token)
    bystander = await connect(make_token())
    replies = await asyncio.gather(*(flooder.call("ping") for _ in range(120)))
    codes = [r.get("code") for r in replies]
    assert "RATE_LIMITED" in codes
    assert codes.count(None) >= 20  # the burst went through
    assert (await bystander.call("ping"))["status"] == "pong"


async def test_oversized_message_drops_only_that_connection(connect, token):
    big = await connect(token)
    other = await connect(make_token())
    agent = uuid4()
    await other.call("subscribe", {"room": f"agent:{agent}"})
    await big.emit("subscribe", {"room": "x" * 2_000_000})
    await asyncio.wait_for(big.disconnected.wait(), 5)
    await get_broadcaster().broadcast_agent_connected(agent_id=agent, agent_name="still here")
    assert (await other.expect("agent.connected"))["data"]["agent_name"] == "still here"


async def test_connection_is_closed_when_its_token_expires(connect):
    client = await connect(make_token(ttl=2))
    await client.expect("connection_established")
    await asyncio.wait_for(client.disconnected.wait(), 6)
    assert not client.sio.connected


@pytest.mark.parametrize(
    ("origin", "allowed"), [("http://localhost:3000", True), ("https://evil.example", False), (None, True)]
)
async def test_browser_origins_are_checked_against_cors_origins(http, origin, allowed):
    headers = {"Origin": origin} if origin else {}
    response = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"}, headers=headers)
    assert (response.status_code == 200) is allowed, response.text
    if origin and allowed:
        assert response.headers["access-control-allow-origin"] == origin


async def test_room_limit_per_connection(connect, token):
    client = await connect(token)  # the test server allows 10 rooms; user and global are two
    for _ in range(8):
        assert (await client.call("subscribe", {"room": f"agent:{uuid4()}"}))["status"] == "success"
    reply = await client.call("subscribe", {"room": f"agent:{uuid4()}"})
    assert (reply["status"], reply["code"]) == ("error", "ROOM_LIMIT")
    assert (await client.call("subscribe", {"room": "global"}))["status"] == "success"  # already in it
    assert len((await client.call("debug:rooms"))["rooms"]) == 10


@stock_differs("malformed")
@pytest.mark.parametrize("garbage", ['42/ws,{"not": json', "427/ws,[1]", '42/ws,"event"', "42/ws,[]"])
async def test_malformed_packet_closes_only_that_connection(server: RunningServer, connect, token, garbage):
    import json

    import websockets

    bystander = await connect(make_token())
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws") as raw:
        assert (await asyncio.wait_for(raw.recv(), 5)).startswith("0{")
        await raw.send("40/ws," + json.dumps({"token": token}))
        assert (await asyncio.wait_for(raw.recv(), 5)).startswith("40/ws,")
        await raw.send(garbage)

        frames = await frames_until_closed(raw)
    assert frames[-1] == "1"
    assert (await bystander.call("ping"))["status"] == "pong"


async def test_a_client_that_stops_reading_never_delays_the_others(server: RunningServer, connect, http, token):

    agent = uuid4()
    fast = await connect(make_token())
    await fast.call("subscribe", {"room": f"agent:{agent}"})
    # A raw client that joins the room and then reads nothing: its TCP window fills up.
    async with raw_subscriber(server, http, token, f"agent:{agent}", members=2):
        payload = "x" * 50_000
        count = 200  # 10 MB, far more than the socket buffers hold
        for i in range(count):
            await get_broadcaster().broadcast_agent_status_changed(
                agent_id=agent, agent_name=f"{i}", status="busy", availability=50, current_task=payload
            )
        names = [(await fast.expect("agent.status_changed"))["data"]["agent_name"] for _ in range(count)]
        assert names == [str(i) for i in range(count)]
        assert (await fast.call("ping"))["status"] == "pong"


@stock_differs("slow-client")
async def test_a_client_that_leaves_too_much_unread_is_dropped_and_nobody_else_is(
    server: RunningServer, connect, http, token, monkeypatch
):
    sio = server.app.state.sio
    monkeypatch.setattr(sio.eio, "max_send_buffer_bytes", 1_000_000)  # WEBSOCKET_MAX_BUFFER_BYTES
    agent = uuid4()
    room = f"agent:{agent}"
    fast = await connect(make_token())
    await fast.call("subscribe", {"room": room})
    admin = {"Authorization": f"Bearer {make_token(roles=['admin'])}"}
    async with raw_subscriber(server, http, token, room, members=2):
        count = 400  # 20 MB: past the socket buffers and the 1 MB allowed unread
        names = []
        for i in range(count):
            await get_broadcaster().broadcast_agent_status_changed(
                agent_id=agent, agent_name=f"{i}", status="busy", availability=50, current_task="x" * 50_000
            )
            # the fast client reads as it goes (it shares this event loop with the server)
            names.append((await fast.expect("agent.status_changed"))["data"]["agent_name"])
        assert names == [str(i) for i in range(count)]

        async def slow_one_dropped() -> bool:
            stats = (await http.get("/api/v1/websocket/stats", headers=admin)).json()
            return bool(stats["rooms"].get(room) == 1)

        await eventually(slow_one_dropped, what="the slow client dropped from the room")
        assert (await fast.call("ping"))["status"] == "pong"


@stock_differs("pending-poll")
async def test_closing_a_long_polling_session_answers_its_pending_poll(server: RunningServer, token):
    """A client's CLOSE ends its pending long-poll GET at once (python-engineio alone leaves it
    open for ping_interval + ping_timeout, which also holds up a graceful shutdown)."""
    client = WsClient(server.url)
    await client.connect(token, transports=["polling"])
    await client.expect("connection_established")
    # python-socketio's client waits for its outstanding GET to be answered before it returns
    await asyncio.wait_for(client.sio.disconnect(), 5)
    assert not client.sio.connected


async def test_a_disconnected_client_leaves_no_trace_in_any_room(server: RunningServer, connect, http):
    sio = server.app.state.sio
    client = await connect(make_token())
    sid = client.sid
    agents = [uuid4() for _ in range(3)]
    for agent in agents:
        await client.call("subscribe", {"room": f"agent:{agent}"})
    await client.call("unsubscribe", {"room": f"agent:{agents[0]}"})
    rooms = set((await client.call("debug:rooms"))["rooms"])
    assert {f"agent:{a}" for a in agents[1:]} <= rooms and f"agent:{agents[0]}" not in rooms
    await client.close()

    async def gone() -> bool:
        return all(sid not in members for members in sio.manager.rooms.get("/ws", {}).values())

    await eventually(gone, what="the connection leaving its rooms")
    assert sio.manager.get_rooms(sid, "/ws") == []
    assert f"agent:{agents[1]}" not in sio.manager.rooms.get("/ws", {})  # emptied rooms are dropped


async def test_a_connection_keeps_only_the_environ_it_needs(server: RunningServer, connect, token):
    from apps.api.websocket.events import _ENVIRON_KEPT

    sio = server.app.state.sio
    client = await connect(None, headers={"Authorization": f"Bearer {token}", "User-Agent": "x" * 2000})
    await client.expect("connection_established")
    environ = sio.environ[sio.manager.eio_sid_from_sid(client.sid, "/ws")]
    assert set(environ) <= _ENVIRON_KEPT
    assert environ["HTTP_AUTHORIZATION"] == f"Bearer {token}" and "HTTP_USER_AGENT" not in environ
    assert (await client.call("ping"))["status"] == "pong"


@stock_differs("remote-addr")
async def test_a_connection_is_logged_with_its_clients_address(server: RunningServer, connect, token, caplog):
    """The client's address (from a trusted proxy's X-Forwarded-For), not python-engineio's fixed
    127.0.0.1, in the stored environ and in the connection log line."""
    sio = server.app.state.sio
    client = await connect(token, headers={"X-Forwarded-For": "203.0.113.7"})
    await client.expect("connection_established")
    environ = sio.environ[sio.manager.eio_sid_from_sid(client.sid, "/ws")]
    assert environ["REMOTE_ADDR"] == "203.0.113.7"
    assert any(
        "websocket connected" in r.getMessage() and "remote=203.0.113.7" in r.getMessage() for r in caplog.records
    )


# --- what the transport refuses, as socket.io refuses it ------------------------------------


async def test_an_event_with_extra_arguments_gets_an_invalid_request_ack(connect, token):
    client = await connect(token)
    reply = await client.sio.call("subscribe", ({"room": "global"}, "extra"), namespace="/ws", timeout=5)
    assert (reply["status"], reply["code"]) == ("error", "INVALID_REQUEST")
    assert (await client.call("ping"))["status"] == "pong"  # the connection is fine


@contextlib.asynccontextmanager
async def _raw_ws(server: RunningServer, token: str | None):
    """A WebSocket speaking Engine.IO by hand to /ws; connected to namespace /ws when ``token``."""
    import json

    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", close_timeout=1) as raw:
        assert (await asyncio.wait_for(raw.recv(), 5)).startswith("0{")
        if token is not None:
            await raw.send("40/ws," + json.dumps({"token": token}))
            reply = await asyncio.wait_for(raw.recv(), 5)
            assert reply.startswith("40/ws,"), reply
        yield raw


@stock_differs("reserved")
@pytest.mark.parametrize("name", ["disconnect", "connect", "connect_error", "disconnecting"])
async def test_a_client_event_with_a_reserved_name_closes_that_connection_and_runs_no_handler(
    server: RunningServer, connect, caplog, name
):
    """socket.io refuses these names: a client event called "disconnect" used to run the server's
    disconnect handler (forgetting the connection while it stayed in its rooms), one called
    "connect" the connect handler with arguments the client chose."""
    import json

    state = server.app.state
    bystander = await connect(make_token())
    async with _raw_ws(server, make_token()) as raw:
        welcome = await asyncio.wait_for(raw.recv(), 5)
        sid = json.loads(welcome[len("42/ws,") :])[1]["data"]["connection_id"]
        caplog.clear()
        await raw.send(f'42/ws,["{name}",{{"token":"{make_token(roles=["admin"])}"}}]')
        assert (await frames_until_closed(raw))[-1:] == ["1"]

    async def forgotten() -> bool:
        rooms = state.sio.manager.rooms.get("/ws", {})
        return state.connections.get(sid) is None and all(sid not in members for members in rooms.values())

    await eventually(forgotten, what="the connection gone from the table and from every room")
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("apps.")]
    assert not [m for m in logged if "websocket connected" in m]  # no second connect ran
    assert len([m for m in logged if "malformed" in m]) == 1
    assert (await bystander.call("ping"))["status"] == "pong"


@stock_differs("connect-timeout")
async def test_a_connection_that_never_authenticates_is_closed_after_the_connect_timeout(server: RunningServer):
    """CONNECT_TIMEOUT_SECONDS (3 s for the tests): without it anyone could hold sockets without a
    token for as long as they answered pings."""
    async with _raw_ws(server, None) as silent:
        loop = asyncio.get_running_loop()
        start = loop.time()
        frames = await frames_until_closed(silent, 10)
        assert frames == ["1"] and loop.time() - start >= 2.5
    async with _raw_ws(server, None) as refused:
        await refused.send('40/ws,{"token":"not-a-token"}')
        assert (await asyncio.wait_for(refused.recv(), 5)).startswith("44/ws,")
        assert await frames_until_closed(refused, 10) == ["1"]


async def test_a_client_that_retries_with_a_good_token_within_the_connect_timeout_is_served(server: RunningServer):
    import json

    async with _raw_ws(server, None) as raw:
        await raw.send('40/ws,{"token":"not-a-token"}')
        assert (await asyncio.wait_for(raw.recv(), 5)).startswith("44/ws,")
        await raw.send("40/ws," + json.dumps({"token": make_token()}))
        assert (await asyncio.wait_for(raw.recv(), 5)).startswith("40/ws,")
        await asyncio.wait_for(raw.recv(), 5)  # connection_established
        await asyncio.sleep(4)  # past the connect timeout
        await raw.send('42/ws,1["ping"]')
        assert (await asyncio.wait_for(raw.recv(), 5)).startswith("43/ws,1")
