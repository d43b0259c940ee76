"""ws_protocol.py. HandedOffWebSocket, the protocol an Engine.IO WebSocket becomes once open,
against a real websockets client protocol (sans-I/O, in memory): what it delivers, what it
writes, how it closes (the end-to-end behaviour, real servers and clients, is in the service's
apps/api/tests/test_engine.py). And HandOffProtocol under a real uvicorn: a handshake websockets
refuses while parsing it is answered and closed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from apps.transport.framing import FramedStr
from apps.transport.http_protocol import HeadLimitsProtocol
from apps.transport.tests.support import exchange, masked_text_frame, request_head, serve_app, status_of
from apps.transport.ws_protocol import HandedOffWebSocket


class Transport(asyncio.Transport):
    """What the protocol wrote, and whether it closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed, "write after close"
        self.written += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return len(self.written)


class Receiver:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closed = 0
        self.dropped = 0

    def ws_message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def ws_closed(self) -> None:
        self.closed += 1

    def ws_dropped(self) -> None:
        self.dropped += 1


def handshake(deflate: bool) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), extensions=[ClientPerMessageDeflateFactory()])
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if deflate else [])
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    server.send_response(server.accept(server.events_received()[0]))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    return client, server


class Pair:
    def __init__(self, deflate: bool = False) -> None:
        self.client, conn = handshake(deflate)
        self.transport = Transport()
        self.receiver = Receiver()
        self.connections: set[Any] = set()
        self.ws = HandedOffWebSocket(self.transport, conn, self.receiver, self.connections, max_buffer=16 << 20)
        self.connections.add(self.ws)

    def from_client(self) -> None:
        self.ws.data_received(b"".join(self.client.data_to_send()))

    async def turn(self) -> None:
        """Let the event loop finish this turn: the connection's writes for it go out then
        (``sleep(0)`` yields once; the flush, scheduled before, runs first)."""
        await asyncio.sleep(0)

    def to_client(self) -> list[Frame]:
        self.client.receive_data(bytes(self.transport.written))
        self.transport.written.clear()
        return [event for event in self.client.events_received() if isinstance(event, Frame)]


async def test_a_prebuilt_frame_is_written_as_is_when_nothing_is_negotiated():
    pair = Pair()
    framed = FramedStr.of('42/ws,["agent.connected",{"a":1}]')
    pair.ws.send_framed(framed, framed.frame)
    await pair.turn()
    assert bytes(pair.transport.written) == framed.frame
    assert [(f.opcode, f.data.decode()) for f in pair.to_client()] == [(Opcode.TEXT, framed)]


async def test_what_one_turn_sends_goes_out_in_one_write_in_order_at_the_end_of_the_turn():
    pair = Pair()
    frames = [FramedStr.of(f'42/ws,["e",{i}]') for i in range(50)]
    for framed in frames:
        pair.ws.send_framed(framed, framed.frame)
    assert pair.transport.writes == 0  # nothing before the turn ends
    await pair.turn()
    assert pair.transport.writes == 1
    assert [f.data.decode() for f in pair.to_client()] == frames
    pair.ws.send_framed(frames[0], frames[0].frame)  # the next turn: a write of its own
    await pair.turn()
    assert pair.transport.writes == 2 and [f.data.decode() for f in pair.to_client()] == [frames[0]]


async def test_a_turns_writes_cover_every_connection_given_something_each_once():
    pairs = [Pair() for _ in range(3)]
    framed = FramedStr.of('42/ws,["e",1]')
    for _ in range(4):
        for pair in pairs:
            pair.ws.send_framed(framed, framed.frame)
    await pairs[0].turn()
    assert [pair.transport.writes for pair in pairs] == [1, 1, 1]
    assert all([f.data.decode() for f in pair.to_client()] == [framed] * 4 for pair in pairs)


async def test_frames_of_the_turn_go_before_the_close_frame_when_the_server_closes():
    pair = Pair()
    framed = FramedStr.of('42/ws,["bye",{}]')
    pair.ws.send_framed(framed, framed.frame)
    pair.ws.close(1000)
    await pair.turn()
    data, close = pair.to_client()
    assert data.data.decode() == framed and close.opcode is Opcode.CLOSE


async def test_frames_of_the_turn_go_out_before_the_reply_to_the_clients_close_and_the_end():
    pair = Pair()
    framed = FramedStr.of('42/ws,["last",{}]')
    pair.ws.send_framed(framed, framed.frame)
    pair.client.send_close(1000)
    pair.from_client()  # the transport closes now: what the turn had must be written first
    assert pair.transport.closed
    data, close = pair.to_client()
    assert data.data.decode() == framed and close.opcode is Opcode.CLOSE
    await pair.turn()  # the turn's flush finds nothing left (the Transport refuses a write after close)


async def test_a_connection_lost_before_its_turn_ends_writes_nothing():
    pair = Pair()
    framed = FramedStr.of('42/ws,["e",1]')
    pair.ws.send_framed(framed, framed.frame)
    pair.ws.connection_lost(None)
    pair.transport.closed = True
    await pair.turn()
    assert pair.transport.writes == 0 and pair.receiver.closed == 1


async def test_a_connection_that_negotiated_compression_gets_compressed_frames():
    pair = Pair(deflate=True)
    framed = FramedStr.of("42/ws," + '{"x":"' + "a" * 5000 + '"}')
    pair.ws.send_framed(framed, framed.frame)
    await pair.turn()
    written = bytes(pair.transport.written)
    assert written[0] == 0xC1 and len(written) < 200  # FIN + RSV1 (compressed) + text, deflated
    assert [f.data.decode() for f in pair.to_client()] == [framed]


async def test_messages_from_the_client_are_delivered_whole_and_in_order():
    pair = Pair()
    pair.client.send_text(b"40/ws,{}")
    pair.client.send_text(b"42/ws,", fin=False)
    pair.client.send_continuation(b'["a"]', fin=True)
    pair.client.send_binary(b"\x01\x02")
    pair.from_client()
    assert pair.receiver.messages == ["40/ws,{}", '42/ws,["a"]', b"\x01\x02"]


async def test_a_ping_is_answered_and_a_close_is_answered_then_the_connection_ends():
    pair = Pair()
    pair.client.send_ping(b"hi")
    pair.from_client()
    await pair.turn()
    assert [(f.opcode, f.data) for f in pair.to_client()] == [(Opcode.PONG, b"hi")]
    pair.client.send_close(1000)
    pair.from_client()
    assert [f.opcode for f in pair.to_client()] == [Opcode.CLOSE] and pair.transport.closed
    pair.ws.connection_lost(None)
    assert pair.receiver.closed == 1 and pair.connections == set()
    pair.ws.connection_lost(None)  # the receiver hears of it once
    assert pair.receiver.closed == 1


async def test_invalid_utf8_text_closes_with_1007_and_delivers_nothing():
    pair = Pair()
    pair.client.send_text(b"\xff\xfe")
    pair.from_client()
    await pair.turn()
    assert pair.receiver.messages == []
    (close,) = pair.to_client()
    assert close.opcode is Opcode.CLOSE and int.from_bytes(close.data[:2], "big") == 1007


@pytest.mark.parametrize("code", [1000, 1012])
async def test_closing_sends_a_close_frame_and_nothing_after_it(code):
    pair = Pair()
    pair.ws.close(code)
    framed = FramedStr.of("42/ws,[]")
    pair.ws.send_framed(framed, framed.frame)  # dropped: the connection is closing
    await pair.turn()
    (close,) = pair.to_client()
    assert close.opcode is Opcode.CLOSE and int.from_bytes(close.data[:2], "big") == code
    pair.from_client()  # the client's reply (websockets queued it) ends the connection
    assert pair.transport.closed


async def test_while_the_transport_is_full_frames_wait_in_order_and_go_out_together():
    pair = Pair()
    frames = [FramedStr.of(f"42/ws,[{i}]") for i in range(3)]
    pair.ws.send_framed(frames[0], frames[0].frame)
    await pair.turn()
    pair.ws.pause_writing()  # the transport's buffer passed its high-water mark
    pair.ws.send_framed(frames[1], frames[1].frame)
    pair.ws.send_framed(frames[2], frames[2].frame)
    assert bytes(pair.transport.written) == frames[0].frame
    pair.ws.resume_writing()
    assert [f.data.decode() for f in pair.to_client()] == frames


async def test_a_client_that_leaves_more_than_max_buffer_unread_is_dropped():
    pair = Pair()
    pair.ws.max_buffer = 10_000
    pair.ws.pause_writing()  # and it never drains
    framed = FramedStr.of("x" * 4000)
    pair.ws.send_framed(framed, framed.frame)
    pair.ws.send_framed(framed, framed.frame)
    assert not pair.transport.closed
    pair.ws.send_framed(framed, framed.frame)  # 12 KB waiting
    assert pair.transport.aborted and pair.transport.written == b""
    assert pair.receiver.dropped == 1
    pair.ws.send_framed(framed, framed.frame)  # nothing more is kept
    assert pair.ws.pending is None


async def test_a_turn_that_sends_a_client_more_than_max_buffer_drops_it():
    pair = Pair()
    pair.ws.max_buffer = 10_000
    framed = FramedStr.of("x" * 4000)
    for _ in range(2):
        pair.ws.send_framed(framed, framed.frame)
    assert not pair.transport.closed
    pair.ws.send_framed(framed, framed.frame)  # 12 KB in one turn, none of it written yet
    assert pair.transport.aborted and pair.receiver.dropped == 1
    await pair.turn()
    assert pair.transport.written == b""


async def test_what_a_turn_sent_before_the_transport_filled_up_stays_ahead_of_what_follows():
    pair = Pair()
    frames = [FramedStr.of(f"42/ws,[{i}]") for i in range(3)]
    pair.ws.send_framed(frames[0], frames[0].frame)  # this turn's, not written yet
    pair.ws.pause_writing()
    pair.ws.send_framed(frames[1], frames[1].frame)
    await pair.turn()
    pair.ws.send_framed(frames[2], frames[2].frame)
    assert pair.transport.writes == 0
    pair.ws.resume_writing()
    assert pair.transport.writes == 1 and [f.data.decode() for f in pair.to_client()] == frames


# HandOffProtocol: handshakes that uvicorn's HTTP protocol passes on but websockets refuses


class RoomyHeads(HeadLimitsProtocol):
    """Request-head limits well above websockets' own (a line of 8 KiB, 128 headers), so that what
    websockets refuses reaches it."""

    max_line_bytes = 64 * 1024
    max_head_bytes = 256 * 1024


# (name: (status, path, headers)), each over one of websockets' limits only
REFUSED_BY_WEBSOCKETS = {
    "a 10 KiB header line": (431, "/ws", [("X-Long", "a" * 10 * 1024)]),
    "a 10 KiB request line": (414, "/ws?" + "a" * 10 * 1024, []),
    "more than 128 headers": (431, "/ws", [(f"X-H{i}", "a") for i in range(140)]),
}


@pytest.mark.parametrize("case", list(REFUSED_BY_WEBSOCKETS))
async def test_a_websocket_handshake_websockets_refuses_while_parsing_is_answered_and_closed(caplog, case):
    status, path, headers = REFUSED_BY_WEBSOCKETS[case]
    caplog.set_level(logging.INFO)
    for name in ("uvicorn.error", "apps.transport"):
        caplog.set_level(logging.INFO, logger=name)
    async with serve_app(http=RoomyHeads) as port:
        caplog.clear()
        # uvicorn's protocol left this connection open and unanswered: closed within 2 s or failed
        response = await exchange(port, request_head(path, headers, websocket=True), timeout=2)
        assert status_of(response) == status, response[:300]
        lines = [
            r.getMessage() for r in caplog.records if r.name == "uvicorn.error" or r.name.startswith("apps.transport")
        ]
        assert len(lines) == 1, lines
        assert [r for r in caplog.records if r.exc_info] == [] and "Traceback" not in caplog.text


async def test_a_websocket_handshake_within_websockets_limits_is_accepted_under_the_same_server():
    async with serve_app(http=RoomyHeads) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            headers = [("X-Long", "a" * 7 * 1024), *((f"X-H{i}", "a") for i in range(100))]
            writer.write(request_head("/ws", headers, websocket=True))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status_of(head) == 101, head
            writer.write(masked_text_frame("hello"))
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05hello"
        finally:
            writer.close()
