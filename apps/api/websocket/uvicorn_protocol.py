"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), writing a frame the app
built once (the ``ext.frame`` key of ``websocket.send``) straight to the transport, instead of
framing the same text again for every recipient. Flow control, disconnects and everything else
are uvicorn's."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from apps.api.websocket.engine import DIRECT_WRITE_KEY, FRAME_KEY


class FramePassthroughProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # the app has not run yet: offer it a synchronous write for frames it built
        self.scope["extensions"][DIRECT_WRITE_KEY] = self.write_frame_now  # type: ignore[assignment]

    def write_frame_now(self, frame: bytes) -> bool:
        """Write a complete frame if the connection is open and the transport takes data now;
        False otherwise (the caller then queues it for the async path, with flow control)."""
        if (
            self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and not self.disconnected
            and self.writable.is_set()
            and self.conn.state is State.OPEN
            and not self.transport.is_closing()
        ):
            self.transport.write(frame)
            return True
        return False

    async def send(self, message: Any) -> None:
        frame = message.get(FRAME_KEY) if message["type"] == "websocket.send" else None
        if frame is None or not self.handshake_complete or self.initial_response is not None:
            await super().send(message)
            return
        await self.writable.wait()  # the transport's flow control, as in uvicorn
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(frame)


#: What ``apps/api/main.py`` gives uvicorn as ``ws`` (an import string, so worker processes can load it).
WEBSOCKET_PROTOCOL = f"{__name__}:{FramePassthroughProtocol.__name__}"
