"""Local delivery of an emit, without a Task per recipient.

python-socketio's ``AsyncManager.emit`` encodes a packet once, then starts one asyncio Task per
recipient and waits for all of them. Here the packet (and its WebSocket frame,
:class:`~apps.api.websocket.engine.FramedStr`) is built once and put straight on each recipient's
queue; each connection's writer sends it. Emits with an ack callback or binary data take
python-socketio's own path.
"""

from __future__ import annotations

import json
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from apps.api.websocket.engine import FastSocket, FramedStr


def _deliver(manager: socketio.AsyncManager, encoded: str, namespace: str, room: Any, skip_sid: Any) -> list[Any]:
    """Queue the Socket.IO packet ``encoded`` for this process's clients in ``room``; returns the
    recipients' sockets that need the slow (coroutine) path."""
    pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
    pkt.encode_cache = FramedStr.of("4" + encoded)
    skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
    sockets = manager.server.eio.sockets
    slow = []
    for sid, eio_sid in manager.get_participants(namespace, room):
        if sid in skip:
            continue
        socket = sockets.get(eio_sid)
        if socket is None:
            continue
        if type(socket) is FastSocket:
            socket.send_nowait(pkt)
        else:
            slow.append(socket)
    return [(socket, pkt) for socket in slow]


async def deliver_locally(
    manager: socketio.AsyncManager,
    event: str,
    data: Any,
    namespace: str,
    room: Any = None,
    skip_sid: Any = None,
) -> bool:
    """Queue ``event`` for this process's clients in ``room``. Returns False, having sent nothing,
    when the packet is binary (the caller then takes python-socketio's path)."""
    if namespace not in manager.rooms:
        return True
    args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
    encoded = manager.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
    if not isinstance(encoded, str):  # binary attachments
        return False
    for socket, pkt in _deliver(manager, encoded, namespace, room, skip_sid):
        await socket.send(pkt)
    return True


async def deliver_packet(manager: socketio.AsyncManager, encoded: str, namespace: str, room: Any) -> None:
    """Queue the already encoded Socket.IO packet for this process's clients in ``room``."""
    if namespace not in manager.rooms:
        return
    for socket, pkt in _deliver(manager, encoded, namespace, room, None):
        await socket.send(pkt)


def event_packet(namespace: str, event: str, json_args: str) -> str:
    """The Socket.IO EVENT packet text for ``event`` with one argument given as JSON text."""
    prefix = "2" if namespace == "/" else f"2{namespace},"
    return f"{prefix}[{json.dumps(event)},{json_args}]"


class LocalManager(socketio.AsyncManager):  # type: ignore[misc]
    """The client manager of a single instance: python-socketio's, with :func:`deliver_locally`."""

    async def emit_json(self, event: str, json_args: str, namespace: str, room: Any) -> None:
        """Emit ``event`` whose one argument is already JSON text (the broadcaster's envelope)."""
        await deliver_packet(self, event_packet(namespace, event, json_args), namespace, room)

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        if callback is None and await deliver_locally(self, event, data, namespace, to or room, skip_sid):
            return
        await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to, **kwargs)
