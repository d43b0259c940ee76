"""A uvicorn WebSocket protocol: uvicorn's own (websockets' sans-I/O implementation) for the
handshake, then, for a connection whose app asks for it, a hand-off to a small protocol that
delivers each message straight to a receiver (the Engine.IO socket) and writes frames built once
per emit as they are.

Under uvicorn's protocol every open WebSocket keeps an ASGI task running for its whole life (with
the coroutines of the app it is in), an ASGI receive queue, events, the scope and the request
headers: about half of what an idle connection costs. Once the Engine.IO handshake is done the
app calls the scope extension :data:`HAND_OFF_KEY`; from then on the connection is a
:class:`HandedOffWebSocket` (``transport.set_protocol``), the ASGI task ends, and what stays per
connection is the transport, websockets' frame parser and the Engine.IO socket.

A WebSocket whose app does not take the hand-off (another WebSocket route) works as uvicorn's
protocol always does. One fix besides: a handshake that websockets refuses while parsing it (a
request or header line over 8 KiB, more than 128 headers) is answered with websockets' 414 or
431 and closed; uvicorn's protocol leaves the answer unsent and the connection open.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

#: Scope extension: ``hand_off(receiver, max_buffer)`` turns the open WebSocket over to ``receiver``
#: (the connection is dropped when more than ``max_buffer`` bytes wait to be sent); it returns
#: ``(websocket, messages)``: the :class:`HandedOffWebSocket` and what arrived before the hand-off,
#: in order, which the receiver must take first; or None if the connection is already closing.
HAND_OFF_KEY = "ext.websocket.hand_off"

#: Seconds to wait for the peer's reply to our close frame before dropping the connection.
CLOSE_TIMEOUT = 5.0

logger = logging.getLogger(__name__)
uvicorn_logger = logging.getLogger("uvicorn.error")  # what uvicorn's own protocol logs to


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"


class Receiver(Protocol):
    """What a handed-off WebSocket delivers to (the Engine.IO socket)."""

    def ws_message(self, data: str | bytes) -> None: ...

    def ws_closed(self) -> None: ...

    def ws_dropped(self) -> None:
        """The connection was dropped for leaving more than ``max_buffer`` bytes unread."""


class TurnWrites:
    """The connections of one event loop with frames waiting for the end of this turn of the
    loop. The first frame a connection is given in a turn puts it here (and the first connection
    schedules :meth:`flush`, with ``call_soon``: it runs as soon as what is running now yields);
    the flush writes each connection's frames in one ``write``. However many events a turn emits
    (a burst from one task, a batch from Redis, what a recovery replays, the pong and the close
    frame websockets queues), each connection costs one system call and, when it fits, one TCP
    segment, and nothing waits longer than the turn that sent it."""

    __slots__ = ("dirty", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[HandedOffWebSocket] = []

    def add(self, ws: HandedOffWebSocket) -> None:
        if not self.dirty:
            self.loop.call_soon(self.flush)
        self.dirty.append(ws)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for ws in dirty:
            ws.write_out()


_turn_writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnWrites] = weakref.WeakKeyDictionary()


def turn_writes() -> TurnWrites:
    """The :class:`TurnWrites` of the running loop."""
    loop = asyncio.get_running_loop()
    writes = _turn_writes.get(loop)
    if writes is None:
        writes = _turn_writes[loop] = TurnWrites(loop)
    return writes


class HandedOffWebSocket(asyncio.Protocol):
    """An open WebSocket (server side) delivering each complete message to its receiver as it is
    parsed, with no task of its own. What it is given to send in one turn of the event loop goes
    to the transport in one write at the end of that turn (:class:`TurnWrites`); while the
    transport's buffer is over its high-water mark frames wait here, in order, and go out together
    when it drains; a client with more than ``max_buffer`` bytes waiting is dropped."""

    __slots__ = (
        "close_timer",
        "closing",
        "conn",
        "connections",
        "fragments",
        "fragments_text",
        "max_buffer",
        "out",
        "out_bytes",
        "paused",
        "pending",
        "pending_bytes",
        "receiver",
        "transport",
        "turn",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        conn: ServerProtocol,
        receiver: Receiver,
        connections: set[Any],
        max_buffer: int,
        *,
        paused: bool = False,
    ):
        self.transport = transport
        self.conn = conn
        self.receiver: Receiver | None = receiver
        self.connections = connections
        self.max_buffer = max_buffer
        self.fragments: list[bytes] | None = None  # a fragmented message being received
        self.fragments_text = False
        self.closing = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.paused = paused
        self.pending: list[bytes] | None = None  # what waits for the transport to drain
        self.pending_bytes = 0
        self.out: list[bytes] | None = None  # what was sent this turn, for the turn's write
        self.out_bytes = 0
        self.turn = turn_writes()

    # writing

    def send_framed(self, text: str, frame: bytes) -> None:
        """Send the text message ``text``, whose frame the caller built once for every recipient:
        written as is, unless this connection compresses (permessage-deflate negotiated), in
        which case websockets frames and compresses it for this connection. Nothing is written
        once either side has started to close (the peer's close frame: websockets' state)."""
        if self.closing or self.conn.state is not State.OPEN:
            return
        if self.conn.extensions:
            self.conn.send_text(text.encode())
            self._flush()
        else:
            self._write(frame)

    def send_message(self, data: str | bytes) -> None:
        """Frame ``data`` (text or binary) and write it (nothing once either side is closing)."""
        if self.closing or self.conn.state is not State.OPEN:
            return
        if isinstance(data, str):
            self.conn.send_text(data.encode())
        else:
            self.conn.send_binary(data)
        self._flush()

    def _write(self, data: bytes) -> None:
        if self.paused:  # the transport is buffering already: keep it here, counted
            if self.out:
                self.write_out()  # what came first this turn goes first
            self._hold(data)
            return
        out = self.out
        if out is None:
            self.out = [data]
            self.out_bytes = len(data)
            self.turn.add(self)
            return
        out.append(data)
        self.out_bytes += len(data)
        if self.out_bytes > self.max_buffer:  # more in one turn than the client may leave unread
            self._drop_slow_client()

    def _hold(self, data: bytes) -> None:
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > self.max_buffer:
            self._drop_slow_client()

    def write_out(self) -> None:
        """Write what this turn sent, in one write (:class:`TurnWrites` calls it; so does anything
        about to close the transport, which would discard it)."""
        out, self.out = self.out, None
        if not out or self.transport.is_closing():
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if self.paused:  # it filled up since (a drained backlog, written first, was over the mark)
            self._hold(data)
        else:
            self.transport.write(data)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self._write(b"".join(data))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        pending, self.pending, self.pending_bytes = self.pending, None, 0
        if pending and not self.transport.is_closing():
            self.transport.write(b"".join(pending))  # in one write (and one system call, if it fits)

    def _drop_slow_client(self) -> None:
        """The client has not read what it was sent, by more than ``max_buffer`` bytes (or one turn
        of the event loop sent it more than that): drop the connection (a close frame would wait
        behind all of it). socket.io-client reconnects."""
        logger.warning(
            "websocket client %s dropped: more than %d bytes sent to it are unread",
            _peer(self.transport),
            self.max_buffer,
        )
        self.closing = True
        self.pending, self.pending_bytes, self.out = None, 0, None
        self.transport.abort()
        if self.receiver is not None:
            self.receiver.ws_dropped()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the connection is dropped when the peer answers, or after
        :data:`CLOSE_TIMEOUT`. Nothing is written after this."""
        if self.closing:
            return
        self.closing = True
        if self.transport.is_closing():
            return
        if self.conn.state is State.OPEN:
            self.conn.send_close(code, reason)
            self._flush()
        self._abort_later()  # a peer that does not answer in time, or does not even read

    def _abort_later(self) -> None:
        """Drop the connection after :data:`CLOSE_TIMEOUT` unless it has ended by then."""
        if self.close_timer is None:
            self.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.abort)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: 1012, service restart."""
        self.close(1012)

    # reading

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        for event in conn.events_received():
            if isinstance(event, Frame):
                self._frame(event)
        self._flush()  # pongs and the reply to a close frame, which websockets queues itself
        if conn.parser_exc is not None or conn.close_rcvd is not None:
            # a protocol error or an oversized message (websockets has queued the close frame), or
            # the closing handshake is over
            self.closing = True
            self.write_out()  # this turn's frames, the close frame last, before the transport closes
            self.transport.close()  # once what is buffered is written...
            self._abort_later()  # ...or not, if the peer does not read it

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self.fragments, self.fragments_text = [bytes(frame.data)], opcode is Opcode.TEXT
        elif opcode is Opcode.CONT and self.fragments is not None:  # websockets checks the sequence
            self.fragments.append(bytes(frame.data))
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self._message(data, self.fragments_text)

    def _message(self, data: bytes, text: bool) -> None:
        receiver = self.receiver
        if receiver is None or self.closing:
            return
        if not text:
            receiver.ws_message(data)
            return
        try:
            message = data.decode()
        except UnicodeDecodeError:
            self.close(1007, "invalid UTF-8")
            return
        receiver.ws_message(message)

    def eof_received(self) -> None:
        self.closing = True  # the transport closes itself (returning None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.out = None
        self.connections.discard(self)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.ws_closed()


class HandOffProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, offering the hand-off to the app (:data:`HAND_OFF_KEY`)."""

    handed_off = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.handshake_initiated and not self.transport.is_closing():
            # websockets refused the request while parsing it and queued its answer (414, 431) or
            # an EOF; uvicorn only looks for a parsed request, so the answer would never be sent
            answer = b"".join(self.conn.data_to_send())
            # one log line per refusal: websockets has logged the answer it queued ("HTTP response
            # sent (431 ...)", to uvicorn.error), not an EOF
            log = logger.debug if answer else logger.info
            log("websocket handshake from %s refused: %s", _peer(self.transport), self.conn.handshake_exc)
            self.transport.write(answer)
            self.transport.close()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if getattr(self, "scope", None) is not None and self.response.status_code == 101:
            self.scope["extensions"][HAND_OFF_KEY] = self.hand_off  # type: ignore[assignment]

    def hand_off(self, receiver: Receiver, max_buffer: int) -> tuple[HandedOffWebSocket, list[str | bytes]] | None:
        if (
            not self.handshake_complete
            or self.initial_response is not None
            or self.close_sent
            or self.disconnected
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return None
        pending: list[str | bytes] = []
        while not self.queue.empty():
            message = self.queue.get_nowait()
            if message["type"] != "websocket.receive":
                return None  # a disconnect is on its way: nothing to hand over
            text, data = message.get("text"), message.get("bytes")
            pending.append(text if text is not None else data or b"")
        handed = HandedOffWebSocket(
            self.transport, self.conn, receiver, self.connections, max_buffer, paused=not self.writable.is_set()
        )
        self.handed_off = True
        self.stop_keepalive()
        self.connections.discard(self)
        self.connections.add(handed)  # type: ignore[arg-type]  # it has the shutdown() uvicorn calls
        self.transport.set_protocol(handed)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # The request stays referenced by websockets' parser for the connection's life: its headers
        # need not (the ASGI scope has its own copy, which goes with this protocol when the app's
        # task ends).
        self.request.headers.clear()
        # the extension refers to this protocol, which refers to the scope: without this the two
        # would wait for the cyclic garbage collector once the app returns
        self.scope["extensions"].pop(HAND_OFF_KEY, None)
        return handed, pending

    async def run_asgi(self) -> None:
        # uvicorn's, except that a handed-off connection stays open when the app returns
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            uvicorn_logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                uvicorn_logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                uvicorn_logger.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None and not self.handed_off:
            self.transport.close()


#: What uvicorn is given as ``ws`` (an import string, so worker processes can load it).
WEBSOCKET_PROTOCOL = f"{__name__}:{HandOffProtocol.__name__}"
