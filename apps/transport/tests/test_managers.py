"""Client managers (managers.py): the packet text, and local delivery to each recipient once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import socketio

from apps.transport import LocalManager, SocketServer, event_packet
from apps.transport.tests.conftest import serve

TIMEOUT = 5.0


def test_event_packet_is_socketio_text():
    assert event_packet("/ws", "project.updated", '{"a":1}') == '2/ws,["project.updated",{"a":1}]'
    assert event_packet("/", 'we"ird', "[]") == '2["we\\"ird",[]]'


async def test_an_emit_to_several_rooms_reaches_each_member_once_in_order_and_skips_others():
    sio = SocketServer(client_manager=LocalManager(), ping_interval=5, ping_timeout=5)

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        for room in auth["rooms"]:
            await sio.enter_room(sid, room)

    async with serve(sio) as url, contextlib.AsyncExitStack() as stack:
        inboxes = []
        for rooms in (["a", "b"], ["b"], ["c"]):
            client = socketio.AsyncClient(reconnection=False)
            inbox: asyncio.Queue[Any] = asyncio.Queue()
            client.on("news", inbox.put_nowait)
            await client.connect(url, auth={"rooms": rooms}, transports=["websocket"], wait_timeout=TIMEOUT)
            stack.push_async_callback(client.disconnect)
            inboxes.append(inbox)
        for i in range(3):
            await sio.manager.emit_json("news", str(i), "/", ["a", "b"])
        await sio.emit("news", "last", to="c")
        assert await asyncio.wait_for(inboxes[2].get(), TIMEOUT) == "last"
        for inbox in inboxes[:2]:
            assert [await asyncio.wait_for(inbox.get(), TIMEOUT) for _ in range(3)] == [0, 1, 2]
        await sio.emit("news", "end", to=["a", "b", "c"])
        for inbox in inboxes:
            assert await asyncio.wait_for(inbox.get(), TIMEOUT) == "end"  # nothing else came first


async def test_a_connections_rooms_are_listed_in_the_order_joined_and_are_no_work_for_the_collector():
    """Each connection's rooms are kept for listing and leaving; kept as a set, they were one more
    object per connection for every full collection to walk."""
    manager = SocketServer(client_manager=LocalManager(), async_mode="asgi").manager
    manager.initialize()
    sid = await manager.connect("e1", "/ws")
    for room in ("user:1", "global", "agent:2"):
        manager.basic_enter_room(sid, "/ws", room)
    manager.basic_leave_room(sid, "/ws", "global")
    assert manager.get_rooms(sid, "/ws") == [sid, "user:1", "agent:2"]
    gc.collect()
    assert not gc.is_tracked(manager._rooms_of[("/ws", sid)])
