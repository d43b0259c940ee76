"""The Admin UI's instrumentation (admin.py) on SocketServer, against real clients: the transport's
own disconnect handling kept, python-engineio's AsyncSocket left alone, only accepted connections
reported, credentials never shown, the fast path reported, and a prompt shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from typing import Any

import socketio
import websockets
from engineio.async_socket import AsyncSocket

from apps.transport import LocalManager, SocketServer
from apps.transport.admin import REDACTED, InstrumentedServer
from apps.transport.tests.conftest import serve

TIMEOUT = 5.0
AUTH = {"username": "ops", "password": "admin-ui-test-password"}


def make_server(**instrument: Any) -> SocketServer:
    sio = SocketServer(client_manager=LocalManager(), ping_interval=5, ping_timeout=5, cors_allowed_origins="*")
    sio.instrument(auth=AUTH, server_stats_interval=0.1, **instrument)
    return sio


class Admin:
    """A python-socketio client on ``/admin`` that queues what the instrumentation sends it."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self.sio.on("*", self._record, namespace="/admin")

    async def _record(self, event: str, *args: Any) -> None:
        self.events[event].put_nowait(args)

    async def expect(self, event: str, where: Any = lambda args: True) -> Any:
        """The next ``event`` whose arguments satisfy ``where`` (earlier ones are passed over)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                args = await self.events[event].get()
                if where(args):
                    return args


@contextlib.asynccontextmanager
async def admin(url: str) -> Any:
    client = Admin()
    await client.sio.connect(url, namespaces=["/admin"], auth=AUTH, transports=["websocket"], wait_timeout=TIMEOUT)
    try:
        yield client
    finally:
        await client.sio.disconnect()


@contextlib.asynccontextmanager
async def raw(url: str, query: str = "") -> Any:
    """A WebSocket speaking Engine.IO by hand, past the Engine.IO handshake."""
    ws_url = url.replace("http", "ws") + f"/socket.io/?EIO=4&transport=websocket{query}"
    async with websockets.connect(ws_url, additional_headers={"Authorization": "Bearer secret-token"}) as ws:
        assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("0{")
        yield ws


def test_instrument_returns_the_transports_instrumentation_and_leaves_asyncsocket_alone():
    before = dict(vars(AsyncSocket))
    first, second = make_server(), make_server(mode="production")
    assert isinstance(first._admin, InstrumentedServer) and isinstance(second._admin, InstrumentedServer)
    assert dict(vars(AsyncSocket)) == before


async def test_a_busy_connections_disconnect_still_waits_for_the_events_it_sent_before():
    sio = make_server()
    release = asyncio.Event()
    order: list[str] = []

    @sio.on("work", namespace="/ns")
    async def work(sid: str, data: Any) -> None:
        await release.wait()
        order.append("work")

    @sio.on("disconnect", namespace="/ns")
    async def disconnect(sid: str, reason: Any) -> None:
        order.append("disconnect")
        release.set()

    async with serve(sio) as url:
        async with raw(url) as ws:
            await ws.send("40/ns,")
            assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("40/ns,")
            await ws.send('42/ns,["work",1]')
            await ws.send("41/ns,")
            await asyncio.sleep(0)  # (no wait on anything: the release below is bounded)
            release.set()
            await asyncio.wait_for(_until(lambda: len(order) == 2), TIMEOUT)
    assert order == ["work", "disconnect"]


async def test_a_connection_that_leaves_before_joining_leaves_no_connect_timer():
    sio = make_server()
    async with serve(sio) as url:
        async with raw(url):
            await asyncio.wait_for(_until(lambda: len(sio._connect_timers) == 1), TIMEOUT)
        await asyncio.wait_for(_until(lambda: not sio.eio.sockets), TIMEOUT)
        assert sio._connect_timers == {}


async def test_only_accepted_connections_are_reported_with_their_rooms_and_no_credentials():
    sio = make_server()

    @sio.on("connect", namespace="/ns")
    async def connect(sid: str, environ: Any, auth: Any) -> bool:
        if not auth or auth.get("ok") is not True:
            return False
        await sio.enter_room(sid, "lobby", namespace="/ns")
        return True

    async with serve(sio) as url, admin(url) as watcher:
        async with raw(url, "&token=secret-token") as refused:
            await refused.send('40/ns,{"ok":false}')
            assert (await asyncio.wait_for(refused.recv(), TIMEOUT)).startswith("44/ns,")
        async with raw(url, "&token=secret-token") as accepted:
            await accepted.send('40/ns,{"ok":true}')
            assert (await asyncio.wait_for(accepted.recv(), TIMEOUT)).startswith("40/ns,")
            socket, _ = await watcher.expect("socket_connected", lambda args: args[0]["nsp"] == "/ns")
    assert sorted(socket["rooms"]) == sorted([socket["id"], "lobby"])
    assert socket["handshake"]["query"]["token"] == REDACTED
    assert socket["handshake"]["headers"]["authorization"] == REDACTED
    assert "secret-token" not in json.dumps(socket)
    assert len([s for s in sio.manager._timestamps if s != watcher.sio.get_sid("/admin")]) == 0


async def test_the_fast_path_is_reported_as_event_sent():
    sio = make_server()
    sio.on("connect", lambda sid, environ, auth: True, namespace="/ns")
    async with serve(sio) as url, admin(url) as watcher:
        client = socketio.AsyncClient(reconnection=False)
        got: asyncio.Queue[Any] = asyncio.Queue()
        client.on("news", got.put_nowait, namespace="/ns")
        await client.connect(url, namespaces=["/ns"], transports=["websocket"], wait_timeout=TIMEOUT)
        try:
            await sio.manager.emit_json("news", json.dumps({"n": 1}), "/ns", None)
            assert await asyncio.wait_for(got.get(), TIMEOUT) == {"n": 1}
            namespace, sid, data, _ = await watcher.expect("event_sent")
            own_sid = client.get_sid("/ns")
        finally:
            await client.disconnect()
    assert (namespace, sid, data) == ("/ns", own_sid, ["news", {"n": 1}])


async def test_a_send_to_one_connection_is_reported_as_event_sent():
    sio = make_server()
    sio.on("connect", lambda sid, environ, auth: True, namespace="/ns")
    async with serve(sio) as url, admin(url) as watcher:
        clients = [socketio.AsyncClient(reconnection=False) for _ in range(2)]
        got: asyncio.Queue[Any] = asyncio.Queue()
        clients[0].on("hello", got.put_nowait, namespace="/ns")
        for client in clients:
            await client.connect(url, namespaces=["/ns"], transports=["websocket"], wait_timeout=TIMEOUT)
        try:
            own_sid = clients[0].get_sid("/ns")
            await sio.send_json(own_sid, "hello", json.dumps({"password": "p", "n": 2}), "/ns")
            assert await asyncio.wait_for(got.get(), TIMEOUT) == {"password": "p", "n": 2}
            namespace, sid, data, _ = await watcher.expect("event_sent")
            # the next report is of the next send: nothing was reported for the other connection
            other_sid = clients[1].get_sid("/ns")
            await sio.manager.emit_json("bye", "1", "/ns", other_sid)
            after = await watcher.expect("event_sent")
        finally:
            for client in clients:
                await client.disconnect()
    assert (namespace, sid, data) == ("/ns", own_sid, ["hello", {"password": REDACTED, "n": 2}])
    assert tuple(after[:3]) == ("/ns", other_sid, ["bye", 1])


async def test_shutdown_stops_the_stats_task_at_once():
    sio = SocketServer(client_manager=LocalManager(), cors_allowed_origins="*")
    instrumented = sio.instrument(auth=AUTH, server_stats_interval=60)
    async with serve(sio) as url, admin(url):
        await asyncio.wait_for(_until(lambda: instrumented.stats_task is not None), TIMEOUT)
        task = instrumented.stats_task
        await asyncio.wait_for(sio.shutdown(), 1)
    assert task.done() and instrumented.stats_task is None


async def _until(check: Any) -> None:
    while not check():  # noqa: ASYNC110 - the server's state, polled (bounded by the caller)
        await asyncio.sleep(0.01)


async def test_the_list_of_connections_goes_to_the_admin_that_connected():
    """python-socketio 5.18.1 sends ``all_sockets`` to the last connection its loop saw: with
    ``/admin`` listed before ``/ns`` (an admin came first), a connection of ``/ns``."""
    sio = make_server()
    sio.on("connect", lambda sid, environ, auth: True, namespace="/ns")
    async with serve(sio) as url, admin(url):
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, namespaces=["/ns"], transports=["websocket"], wait_timeout=TIMEOUT)
        try:
            async with admin(url) as watcher:
                (sockets,) = await watcher.expect("all_sockets")
        finally:
            await client.disconnect()
    assert any(s["nsp"] == "/ns" for s in sockets)


async def test_tokens_and_passwords_in_event_data_are_never_shown():
    sio = make_server()
    sio.on("connect", lambda sid, environ, auth: True, namespace="/ns")
    sio.on("refresh", lambda sid, data: "ok", namespace="/ns")
    async with serve(sio) as url, admin(url) as watcher:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, namespaces=["/ns"], transports=["websocket"], wait_timeout=TIMEOUT)
        try:
            payload = {"token": "secret-token", "nested": [{"password": "hunter2"}], "room": "r"}
            assert await client.call("refresh", payload, namespace="/ns", timeout=TIMEOUT) == "ok"
            _, _, data, _ = await watcher.expect("event_received", lambda args: args[0] == "/ns")
            await sio.manager.emit_json("news", json.dumps({"access_token": "secret-token"}), "/ns", None)
            _, _, sent, _ = await watcher.expect("event_sent", lambda args: args[0] == "/ns")
        finally:
            await client.disconnect()
    assert data == ["refresh", {"token": REDACTED, "nested": [{"password": REDACTED}], "room": "r"}]
    assert sent == ["news", {"access_token": REDACTED}]
