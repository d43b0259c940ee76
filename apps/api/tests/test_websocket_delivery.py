"""The service's send path on its transport: events of every frame size reach real clients intact
and in order, a slow reader still gets everything in order, an open WebSocket holds no task, and
heartbeats, shutdown, undecodable packets and binary attachments behave. (The transport's own
tests are in apps/transport/tests/.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import pytest

from apps.api.events.broadcaster import get_broadcaster
from apps.api.tests.support import (
    TEST_SECRET,
    TIMEOUT,
    RunningServer,
    ServerProcess,
    WsClient,
    eventually,
    free_port,
    make_token,
    python_cmd,
    start_server_process,
)
from apps.transport.tests.support import frames_until_closed, server_errors
from apps.transport.ws_protocol import HandedOffWebSocket


@pytest.mark.parametrize("size", [10, 1_000, 30_000, 60_000])  # characters of 2 UTF-8 bytes
async def test_events_of_every_frame_size_arrive_intact_and_in_order(connect, size):
    agent = uuid4()
    client = await connect(make_token())
    await client.call("subscribe", {"room": f"agent:{agent}"})
    for i in range(3):
        await get_broadcaster().broadcast_agent_status_changed(
            agent_id=agent, agent_name=str(i), status="busy", availability=i, current_task="é" * size
        )
    for i in range(3):
        data = (await client.expect("agent.status_changed"))["data"]
        assert (data["agent_name"], data["current_task"]) == (str(i), "é" * size)


async def test_a_client_that_falls_behind_still_gets_every_event_in_order(server, http):
    """Frames go straight to the transport while it takes them and through the queue (with flow
    control) once it is full; a client that reads nothing for a while, then everything, must see
    one ordered stream."""
    from apps.api.tests.support import raw_subscriber

    agent = uuid4()
    async with raw_subscriber(server, http, make_token(), f"agent:{agent}") as raw:
        count = 300
        for i in range(count):  # ~15 MB: far past the socket buffers, so later frames queue
            await get_broadcaster().broadcast_agent_status_changed(
                agent_id=agent, agent_name=str(i), status="busy", availability=1, current_task="x" * 50_000
            )
        seen: list[int] = []

        async def read_all() -> None:
            while len(seen) < count:
                frame = await raw.recv()
                if frame.startswith('42/ws,["agent.status_changed"'):
                    seen.append(int(json.loads(frame[len("42/ws,") :])[1]["data"]["agent_name"]))

        await asyncio.wait_for(read_all(), 30)
    assert seen == list(range(count))


# --- the hand-off: an open Engine.IO WebSocket is run by its connection, not by an ASGI task ---


def _asgi_tasks() -> int:
    """uvicorn's per-connection ASGI tasks running in this loop (the in-process test servers')."""
    return sum(1 for task in asyncio.all_tasks() if task.get_coro().__qualname__.endswith(".run_asgi"))  # type: ignore[union-attr]


def _engineio_socket(server: RunningServer, client: WsClient) -> Any:
    sio = server.app.state.sio
    return sio.eio.sockets[sio.manager.eio_sid_from_sid(client.sid, "/ws")]


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]], ids=["websocket", "upgrade"])
async def test_an_open_websocket_holds_no_task_and_no_queue(server, connect, transports):
    """What an idle connection costs: no ASGI task, no reader or writer Task, no asyncio.Queue
    (bench/README.md measures the memory); events, acks and order work as before."""
    before = _asgi_tasks()
    agent = uuid4()
    clients = [await connect(make_token(), transports=transports) for _ in range(5)]
    for client in clients:
        await client.expect("connection_established")

        async def upgraded(c: WsClient = client) -> bool:
            return bool(c.sio.transport() == "websocket")

        await eventually(upgraded, what="the upgrade to WebSocket")
        assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
    for client in clients:
        socket = _engineio_socket(server, client)
        assert isinstance(socket.ws, HandedOffWebSocket) and socket.queue.qsize() == 0
    assert _asgi_tasks() == before
    for i in range(3):
        await get_broadcaster().broadcast_agent_connected(agent_id=agent, agent_name=str(i))
    for client in clients:
        assert [(await client.expect("agent.connected"))["data"]["agent_name"] for _ in range(3)] == ["0", "1", "2"]


@contextlib.asynccontextmanager
async def _raw_connection(port: int, token: str) -> AsyncIterator[Any]:
    """A WebSocket client speaking Engine.IO by hand (it answers no ping unless told to),
    connected to namespace /ws."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", close_timeout=1) as raw:
        assert (await asyncio.wait_for(raw.recv(), TIMEOUT)).startswith("0{")
        await raw.send("40/ws," + json.dumps({"token": token}))
        assert (await asyncio.wait_for(raw.recv(), TIMEOUT)).startswith("40/ws,")
        yield raw


async def _server_process(**env: str) -> tuple[ServerProcess, int]:
    """The service in a process of its own (its broadcaster is not this process's)."""
    port = free_port()
    base = {"JWT_SECRET_KEY": TEST_SECRET, "LOG_FILE": "", "REDIS_URL": "", "ENVIRONMENT": "development"}
    server = await start_server_process(
        python_cmd("apps/api/main.py"), env={**base, "HOST": "127.0.0.1", "PORT": str(port), **env}
    )
    return server, port


async def test_a_client_that_stops_answering_pings_is_dropped_and_one_that_answers_is_kept():
    server, port = await _server_process(PING_INTERVAL_SECONDS="1", PING_TIMEOUT_SECONDS="0.5")
    live = WsClient(server.url)
    try:
        await live.connect(make_token())  # python-socketio answers every PING
        async with _raw_connection(port, make_token()) as silent:
            frames = await frames_until_closed(silent, timeout=10)
        assert frames[-1] == "2"  # pinged, never answered, then closed
        assert live.sio.connected and (await live.call("ping"))["status"] == "pong"
    finally:
        await live.close()
        await server.stop()


async def test_graceful_shutdown_closes_open_websockets_with_1012():
    server, port = await _server_process()
    try:
        async with _raw_connection(port, make_token()) as raw:
            await server.stop()  # SIGTERM: uvicorn's graceful shutdown
            await frames_until_closed(raw, timeout=TIMEOUT)
            assert raw.close_code == 1012  # service restart: socket.io-client reconnects
    finally:
        await server.stop()
    output = "".join(server.output)
    assert "Finished server process" in output and "Traceback" not in output, output


@pytest.mark.parametrize("garbage", ["x", "", "9unknown", b"\xff\x00"])
async def test_an_undecodable_packet_closes_only_that_connection_with_one_warning(server, connect, caplog, garbage):
    bystander = await connect(make_token())
    async with _raw_connection(server.port, make_token()) as raw:
        caplog.clear()
        await raw.send(garbage)
        await frames_until_closed(raw, timeout=TIMEOUT)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("apps.")]
    assert len(warnings) == 1 and "clos" in warnings[0].getMessage(), [w.getMessage() for w in warnings]
    assert not server_errors(caplog.records)  # no traceback
    assert (await bystander.call("ping"))["status"] == "pong"


@pytest.mark.parametrize("transports", [["websocket"], ["polling"], ["polling", "websocket"]])
async def test_binary_packets_cross_in_both_directions(server, connect, transports):
    """Socket.IO binary attachments (a text packet, then a binary frame per attachment) through
    the hand-off, long-polling and the upgrade: an ack for a binary event, a binary event out."""
    client = await connect(make_token(), transports=transports)
    await client.expect("connection_established")
    reply = await client.call("ping", {"blob": b"\x00\x01\xfe\xff" * 100})
    assert reply["status"] == "pong"
    sio = server.app.state.sio
    await sio.emit("binary.test", {"blob": b"\x00\xff" * 1000, "n": 1}, to=client.sid, namespace="/ws")
    received = await client.expect("binary.test")
    assert received == {"blob": b"\x00\xff" * 1000, "n": 1}
