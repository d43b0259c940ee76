"""Engine.IO tuned for fan-out: python-engineio's server with three changes on the send path.

Everything on the wire stays python-engineio's (pinned in requirements.txt); what changes is how
a packet travels from an emit to a WebSocket:

- :class:`FastSocket` queues a packet without a coroutine call (``send_nowait``), and its
  WebSocket writer waits for the next packet without ``asyncio.wait_for`` (which, on Python 3.11,
  creates a Task per wake-up). The reader side still drops a silent client after
  ``ping_interval + ping_timeout`` and wakes the writer to exit.
- :class:`FramedStr` is a packet's text with its WebSocket frame built once, so an emit to N
  clients frames the message once instead of N times.
- :class:`FramedWebSocket` hands that frame to the ASGI server under the ``ext.frame`` key of the
  ``websocket.send`` message. The service's own uvicorn protocol
  (:mod:`apps.api.websocket.uvicorn_protocol`) writes it as is; any other ASGI server ignores the
  unknown key and sends the ``text`` as usual.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import engineio
from engineio import packet as eio_packet
from engineio.async_drivers import asgi as eio_asgi
from engineio.async_socket import AsyncSocket

FRAME_KEY = "ext.frame"
#: Scope extension by which the service's uvicorn protocol offers a synchronous frame write.
DIRECT_WRITE_KEY = "ext.frame.write_now"


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
    #: Writes a frame to the transport now, or answers False (set by :class:`FramedWebSocket`).
    direct_write: Any = None
    #: True while the WebSocket writer waits on an empty queue.
    writer_idle = False

    def send_nowait(self, pkt: Any) -> None:
        """Send ``pkt`` to this client: straight to the transport when its writer is idle and
        nothing is queued (so order is kept), else through the queue (what ``send`` does)."""
        if self.closed:
            return
        last_ping = self.last_ping
        if last_ping and time.time() - last_ping > self.server.ping_timeout:
            # the client stopped answering pings: let the stock path close it
            self.server.start_background_task(self.check_ping_timeout)
            return
        if self.writer_idle and self.direct_write is not None and self.queue.empty():
            encoded = pkt.encode_cache
            if isinstance(encoded, FramedStr) and self.direct_write(encoded.frame):
                return
        self.queue.put_nowait(pkt)

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
            self.send_nowait(eio_packet.Packet(eio_packet.PING))

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        await super().close(wait=wait, abort=abort, reason=reason)
        # python-engineio leaves a pending long-poll GET (or the WebSocket writer) waiting until its
        # timeout after a close: wake it now.
        self.queue.put_nowait(None)

    async def poll(self) -> list[Any]:
        if not self.upgraded:  # long-polling: the GET must end after ping_interval + ping_timeout
            packets: list[Any] = await super().poll()
            return packets
        # WebSocket writer: no timeout needed here; the reader times out a silent client and
        # then queues None, which ends the writer.
        self.writer_idle = True
        try:
            first = await self.queue.get()
        finally:
            self.writer_idle = False
        self.queue.task_done()
        if first is None:
            return []
        packets = [first]
        while not self.queue.empty():
            pkt = self.queue.get_nowait()
            self.queue.task_done()
            if pkt is None:
                self.queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets


class FramedWebSocket(eio_asgi.WebSocket):  # type: ignore[misc]
    async def __call__(self, environ: dict[str, Any]) -> Any:
        write_now = environ.get("asgi.scope", {}).get("extensions", {}).get(DIRECT_WRITE_KEY)
        socket = getattr(self.handler, "__self__", None)
        if write_now is not None and isinstance(socket, FastSocket):
            socket.direct_write = write_now
        return await super().__call__(environ)

    async def send(self, message: Any) -> None:
        if isinstance(message, FramedStr):
            await self.asgi_send({"type": "websocket.send", "text": message, FRAME_KEY: message.frame})
        else:
            await super().send(message)


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's ASGI server, using :class:`FastSocket` and :class:`FramedWebSocket`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async: dict[str, Any] = {**self._async, "websocket": FramedWebSocket}

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            # The socket exists and its transport has not started: give it the fast send path.
            socket = self.sockets.get(args[0])
            if socket is not None and type(socket) is AsyncSocket:
                socket.__class__ = FastSocket
        return await super()._trigger_event(event, *args, **kwargs)
