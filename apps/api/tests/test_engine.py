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
