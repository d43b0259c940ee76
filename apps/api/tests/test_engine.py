"""The fan-out fast path: frames built once are valid WebSocket frames of every size, and reach
real clients intact, in order."""

from __future__ import annotations

from uuid import uuid4

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from apps.api.events.broadcaster import get_broadcaster
from apps.api.tests.support import REPO_ROOT, make_token
from apps.api.websocket.engine import FramedStr
from apps.api.websocket.manager import event_packet


def parse(frame: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_framed_str_is_a_final_unmasked_text_frame(size):
    text = "é" * (size // 2) + "x" * (size % 2)  # multi-byte UTF-8: the length is in bytes
    framed = FramedStr.of(text)
    assert framed == text and isinstance(framed, str)
    frame = parse(framed.frame)
    assert (frame.opcode, frame.fin, frame.rsv1) == (Opcode.TEXT, True, False)
    assert frame.data.decode("utf-8") == text


def test_event_packet_is_socketio_text():
    assert event_packet("/ws", "project.updated", '{"a":1}') == '2/ws,["project.updated",{"a":1}]'
    assert event_packet("/", 'we"ird', "[]") == '2["we\\"ird",[]]'


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


def test_the_fast_path_runs_on_the_versions_it_was_built_for():
    """engine.py, manager.py and uvicorn_protocol.py extend internals of these exact versions
    (requirements.txt pins them). Upgrading one means reading those modules again first."""
    from importlib.metadata import version

    pinned = {
        line.split("==")[0].split("[")[0]: line.split("==")[1].strip()
        for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for package in ("python-socketio", "python-engineio", "uvicorn", "websockets"):
        assert package in pinned, f"{package} must be pinned in requirements.txt"
        assert version(package) == pinned[package], f"{package} {version(package)} is not the pinned {pinned[package]}"


async def test_a_client_that_falls_behind_still_gets_every_event_in_order(server, http):
    """Frames go straight to the transport while it takes them and through the queue (with flow
    control) once it is full; a client that reads nothing for a while, then everything, must see
    one ordered stream."""
    import asyncio
    import json

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


def test_direct_writes_only_when_nothing_is_queued_and_the_writer_waits():
    import asyncio

    from engineio import packet as eio_packet

    from apps.api.websocket.engine import FastSocket

    class Server:
        ping_timeout = 20

    written: list[bytes] = []
    accept = [True]
    socket = FastSocket.__new__(FastSocket)
    socket.server, socket.closed, socket.last_ping = Server(), False, None
    socket.queue = asyncio.Queue()
    socket.direct_write = lambda frame: accept[0] and (written.append(frame) or True)

    def packet(text: str) -> eio_packet.Packet:
        pkt = eio_packet.Packet(eio_packet.MESSAGE, text)
        pkt.encode_cache = FramedStr.of("4" + text)
        return pkt

    socket.writer_idle = False
    socket.send_nowait(packet("a"))  # the writer is busy: queued
    socket.writer_idle = True
    socket.send_nowait(packet("b"))  # something is queued: queued behind it
    assert (written, socket.queue.qsize()) == ([], 2)
    socket.queue = asyncio.Queue()
    socket.send_nowait(packet("c"))  # idle writer, empty queue: straight out
    assert written == [FramedStr.of("4c").frame]
    accept[0] = False
    socket.send_nowait(packet("d"))  # the transport is full: queued
    socket.send_nowait(eio_packet.Packet(eio_packet.PING))  # not pre-framed: queued
    assert (len(written), socket.queue.qsize()) == (1, 2)
