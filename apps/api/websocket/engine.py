"""Engine.IO tuned for fan-out and for many idle connections: python-engineio's server with its
WebSocket transport run by the connection itself.

Everything on the wire stays python-engineio's (pinned in requirements.txt); what changes:

- :class:`FramedStr` is a packet's text with its WebSocket frame built once, so an emit to N
  clients frames the message once instead of N times.
- :class:`FastSocket`, once its WebSocket is open, takes it over from the ASGI app through the
  scope extension of the service's uvicorn protocol
  (:data:`~apps.api.websocket.uvicorn_protocol.HAND_OFF_KEY`): the connection then calls the
  socket for each message it parses (:meth:`FastSocket.ws_message`) and when it closes
  (:meth:`FastSocket.ws_closed`), and the socket writes each packet straight to it
  (:meth:`FastSocket.send_nowait`, no coroutine, no queue). python-engineio would keep, per
  connection and for its whole life, the ASGI task, a reader Task per message wait (``wait_for``
  on Python 3.11) and a writer Task.
- Under an ASGI server without that extension, the socket works as python-engineio's does;
  long-polling is python-engineio's, except that a pending poll is answered as soon as the
  session closes.
- The heartbeat is a timer instead of a Task that sleeps; a client that stops answering it is
  closed by python-engineio's service task, as before.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any

import engineio
from engineio import packet as eio_packet
from engineio.async_drivers import asgi as eio_asgi
from engineio.async_socket import AsyncSocket

from apps.api.websocket.asgi_environ import translate_request
from apps.api.websocket.uvicorn_protocol import HAND_OFF_KEY, HandedOffWebSocket

logger = logging.getLogger(__name__)

#: Tasks started for received messages, kept until they end (asyncio holds only weak references).
_running: set[asyncio.Task[Any]] = set()


class FramedStr(str):
    """A text message, and its unmasked, final, text WebSocket frame (RFC 6455 5.2)."""

    __slots__ = ("frame",)
    frame: bytes

    @classmethod
    def of(cls, text: str) -> FramedStr:
        framed = cls(text)
        payload = text.encode("utf-8")
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x81, length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x81, 126, length)
        else:
            header = struct.pack("!BBQ", 0x81, 127, length)
        framed.frame = header + payload
        return framed


class FastSocket(AsyncSocket):  # type: ignore[misc]
    last_ping: float | None
    connected: bool
    closed: bool
    closing: bool
    queue: Any  # an asyncio.Queue, then _NO_QUEUE once the socket has its WebSocket
    #: The WebSocket this socket was handed, while it is open.
    ws: HandedOffWebSocket | None = None
    handed_off = False

    # sending

    def send_nowait(self, pkt: Any) -> None:
        """Send ``pkt`` to this client: written to its WebSocket now if the socket has it, else
        queued for python-engineio's transports (what ``send`` does)."""
        if self.closed:
            return
        if self.last_ping and _close_if_silent(self, time.time()):
            return
        ws = self.ws
        if ws is None:
            self.queue.put_nowait(pkt)
            return
        encoded = pkt.encode_cache
        if isinstance(encoded, FramedStr):
            ws.send_framed(encoded, encoded.frame)
        else:
            ws.send_message(pkt.encode())

    async def send(self, pkt: Any) -> None:
        self.send_nowait(pkt)

    def schedule_ping(self) -> None:
        # python-engineio starts a Task that sleeps ping_interval per connection; a timer does the
        # same with a fraction of the memory.
        if self.last_ping:
            self.last_ping = None
            asyncio.get_running_loop().call_later(self.server.ping_interval, self._ping_now)

    def _ping_now(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.send_nowait(_PING)

    # the WebSocket transport

    async def _websocket_handler(self, ws: Any) -> None:
        hand_off = getattr(ws, "hand_off", None)
        if hand_off is None:  # an ASGI server without the extension: python-engineio's transport
            await super()._websocket_handler(ws)
            return
        if self.connected:  # an upgrade from long-polling
            if not await self._upgrade_probe(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        handed = hand_off(self, self.server.max_send_buffer_bytes)
        if handed is None:  # closed during the handshake
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            return
        self.ws, pending = handed
        self.handed_off = True
        # what was queued before the hand-off (the OPEN packet; what an upgrade held back) goes first
        queue, self.queue = self.queue, _NO_QUEUE
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None:
                self.send_nowait(pkt)
        for data in pending:
            self.ws_message(data)
        # the ASGI app returns now; the connection stays open and calls this socket from here on

    async def _upgrade_probe(self, ws: Any) -> bool:
        """python-engineio's upgrade handshake (PING probe, PONG probe, UPGRADE) over the ASGI
        connection, before the hand-off."""
        self.upgrading = True
        try:
            probe = eio_packet.Packet(encoded_packet=await ws.wait())
            if probe.packet_type != eio_packet.PING or probe.data != "probe":
                return False
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            upgrade = eio_packet.Packet(encoded_packet=await ws.wait())
            if upgrade.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                return False
            self.upgraded = True
            return True
        except (OSError, ValueError):
            return False
        finally:
            self.upgrading = False

    def ws_message(self, data: str | bytes) -> None:
        """A message from the client, parsed by the connection (called synchronously)."""
        if self.closing or self.closed:
            return
        if len(data) > self.server.max_http_buffer_size:
            self._drop("packet is too large", 1009)
            return
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception:
            self._drop("undecodable Engine.IO packet", 1007)
            return
        kind = pkt.packet_type
        if kind == eio_packet.PONG:
            self.schedule_ping()
        elif kind == eio_packet.MESSAGE:
            # each message's handler runs in a Task of its own, as python-engineio's async_handlers
            _spawn(self.server._trigger_event("message", self.sid, pkt.data, run_async=False))
        elif kind == eio_packet.CLOSE:
            _spawn(self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT))
        elif kind == eio_packet.UPGRADE:
            self.send_nowait(eio_packet.Packet(eio_packet.NOOP))
        elif kind not in (eio_packet.OPEN, eio_packet.PING, eio_packet.NOOP):  # those are ignored, as before
            self._drop(f"unknown Engine.IO packet type {kind}", 1008)

    def _drop(self, why: str, code: int) -> None:
        logger.warning("%s: %s; closing the connection", self.sid, why)
        if self.ws is not None:
            self.ws.close(code)
        _spawn(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR))

    def ws_closed(self) -> None:
        """The connection is gone (closed by either side)."""
        self.ws = None
        if not self.closing and not self.closed:
            _spawn(self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE))

    # closing

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if not self.handed_off:
            await super().close(wait=wait, abort=abort, reason=reason)
            # python-engineio leaves a pending long-poll GET (or the WebSocket writer) waiting until
            # its timeout after a close: wake it now.
            self.queue.put_nowait(None)
            return
        # python-engineio's close, for a socket that writes to its WebSocket itself
        if self.closed or self.closing:
            return
        self.closing = True
        try:
            await self.server._trigger_event(
                "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
            )
            if not abort:
                self.send_nowait(eio_packet.Packet(eio_packet.CLOSE))
        finally:
            self.closed = True
            self.server.sockets.pop(self.sid, None)
            ws, self.ws = self.ws, None
            if ws is not None:
                ws.close()


class HandOffWebSocket(eio_asgi.WebSocket):  # type: ignore[misc]
    """python-engineio's ASGI WebSocket, exposing the hand-off of the service's uvicorn protocol."""

    hand_off: Any = None

    async def __call__(self, environ: dict[str, Any]) -> Any:
        self.hand_off = environ.get("asgi.scope", {}).get("extensions", {}).get(HAND_OFF_KEY)
        return await super().__call__(environ)


def _framed_packet(kind: int) -> Any:
    """An Engine.IO packet without data, encoded and framed once for every connection."""
    pkt = eio_packet.Packet(kind)
    pkt.encode_cache = FramedStr.of(pkt.encode())
    return pkt


#: The heartbeat's PING: 40 a second per 1,000 connections, each written as this one frame.
_PING = _framed_packet(eio_packet.PING)


class _NoQueue:
    """The queue of a socket that writes to its WebSocket itself (an asyncio.Queue is four deques
    and an Event: about 3 KB per connection). Nothing is queued once the socket has its WebSocket."""

    __slots__ = ()

    def put_nowait(self, item: Any) -> None:
        pass

    async def put(self, item: Any) -> None:
        pass

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        pass


_NO_QUEUE = _NoQueue()


def _close_if_silent(socket: AsyncSocket, now: float) -> bool:
    """python-engineio's ``check_ping_timeout`` without a coroutine: if the client has not answered
    the last PING within ``ping_timeout``, start closing the socket and answer True."""
    last_ping = socket.last_ping
    if not last_ping or now - last_ping <= socket.server.ping_timeout:
        return False
    if not socket.closing:
        _spawn(socket.close(wait=False, reason=socket.server.reason.PING_TIMEOUT))
    return True


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's ASGI server, using :class:`FastSocket`, :class:`HandOffWebSocket` and
    :func:`~apps.api.websocket.asgi_environ.translate_request`."""

    #: What a handed-off WebSocket may hold unsent before its client is dropped.
    max_send_buffer_bytes = 16 * 1024 * 1024

    def __init__(self, *args: Any, max_send_buffer_bytes: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_send_buffer_bytes is not None:
            self.max_send_buffer_bytes = max_send_buffer_bytes
        self._async: dict[str, Any] = {
            **self._async,
            "translate_request": translate_request,
            "websocket": HandOffWebSocket,
        }

    async def _service_task(self) -> None:
        """Close the sessions whose client stopped answering pings, and forget closed ones.

        python-engineio visits one socket at a time, each visit an ``asyncio.wait_for`` (a Task on
        Python 3.11) spaced ``ping_timeout / N`` apart: 500 Tasks a second with 10,000 clients,
        a large share of an idle instance's CPU. Here one sweep of plain checks (about 1 us a
        socket) runs every ``ping_timeout / 4`` seconds, 5 s at most: a silent client is closed
        within 1.25 x ``ping_timeout`` of its missed PONG (python-engineio: within 2 x)."""
        self.service_task_event = self.create_event()
        interval = min(5.0, self.ping_timeout / 4)
        while not self.service_task_event.is_set():
            try:
                await asyncio.wait_for(self.service_task_event.wait(), interval)
                break
            except TimeoutError:
                pass
            now = time.time()
            for sid, socket in list(self.sockets.items()):
                if socket.closed:
                    self.sockets.pop(sid, None)
                else:
                    _close_if_silent(socket, now)

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            # The socket exists and its transport has not started: give it the fast send path.
            socket = self.sockets.get(args[0])
            if socket is not None and type(socket) is AsyncSocket:
                socket.__class__ = FastSocket
        return await super()._trigger_event(event, *args, **kwargs)
