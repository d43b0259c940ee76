"""Client managers: who is in which room on this instance, and local delivery of an emit
without a Task per recipient.

python-socketio's ``AsyncManager.emit`` encodes a packet once, then starts one asyncio Task per
recipient and waits for all of them. Here the packet (and its WebSocket frame,
:class:`~apps.transport.framing.FramedStr`) is built once and handed to each recipient's
:class:`~apps.transport.engine_socket.EngineSocket`, which writes it at once. Emits with an ack
callback or binary data take python-socketio's path.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterable
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from apps.transport.engine_socket import EngineSocket, stats
from apps.transport.framing import FramedStr
from apps.transport.recovery import MemoryRecovery, Recovery, format_offset, without_offset

#: How long what reaches an instance from the channel after a recovery is checked against what
#: the recovery sent (the channel's messages are in flight for milliseconds).
FLOOR_SECONDS = 10.0


def message(encoded: str) -> eio_packet.Packet:
    """The Engine.IO MESSAGE carrying the Socket.IO packet ``encoded``, its WebSocket frame built."""
    pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
    pkt.encode_cache = FramedStr.of("4" + encoded)
    return pkt


async def deliver_packet(
    manager: socketio.AsyncManager,
    encoded: str,
    namespace: str,
    room: Any,
    skip_sid: Any = None,
    position: tuple[int, int] | None = None,
    plain: str | None = None,
) -> None:
    """Send the encoded Socket.IO packet ``encoded`` to this process's clients in ``room`` (a room,
    a sid or a list of them; each recipient once): framed once, written to each recipient. A
    connection that is recovering (:meth:`RoomIndex.hold`) gets it once what it missed has been
    sent (``position``: where the packet stands in the history, if it is in it). ``plain``: the
    packet without its offset, for the connections that take none (:attr:`RoomIndex.plain_sids`)."""
    if namespace not in manager.rooms:
        return
    pkt = message(encoded)
    skip = set(skip_sid) if isinstance(skip_sid, list) else {skip_sid}
    sockets = manager.server.eio.sockets
    held = getattr(manager, "held", None)
    floors = getattr(manager, "floors", None) if position is not None else None
    plain_sids = getattr(manager, "plain_sids", None) if plain is not None else None
    plain_pkt = None
    others = []
    delivered = 0
    for sid, eio_sid in manager.get_participants(namespace, room):
        socket = sockets.get(eio_sid)
        if socket is None or sid in skip:
            continue
        this = pkt
        if plain_sids and sid in plain_sids:
            if plain_pkt is None:
                plain_pkt = message(plain) if plain is not None else pkt
            this = plain_pkt
        if held and sid in held:
            held[sid].append((position, this))
            continue
        if floors and sid in floors and position is not None and position <= floors[sid]:
            continue  # sent to it already, with what it missed
        delivered += 1
        if type(socket) is EngineSocket:
            socket.send_nowait(this)
        else:  # an Engine.IO server other than EngineServer
            others.append((socket, this))
    stats.deliveries += delivered
    for socket, this in others:
        await socket.send(this)


async def deliver_locally(
    manager: socketio.AsyncManager,
    event: str,
    data: Any,
    namespace: str,
    room: Any = None,
    skip_sid: Any = None,
) -> bool:
    """Encode ``event`` with ``data`` and :func:`deliver_packet` it. Returns False, having sent
    nothing, when the packet is binary (the caller then takes python-socketio's path)."""
    if namespace not in manager.rooms:
        return True
    args = list(data) if isinstance(data, tuple) else ([] if data is None else [data])
    encoded = manager.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args]).encode()
    if not isinstance(encoded, str):  # binary attachments
        return False
    await deliver_packet(manager, encoded, namespace, room, skip_sid)
    return True


def evict_locally(
    manager: socketio.AsyncManager, namespace: str, room: Any, only_in: Any = None, notice: str | None = None
) -> list[str]:
    """Take this process's connections out of ``room`` (only those also in ``only_in``, when it is
    given), sending each the encoded packet ``notice`` first. Returns their sids."""
    rooms = manager.rooms.get(namespace, {})
    members = rooms.get(room)
    if not members:
        return []
    sids = list(members)
    if only_in is not None:
        others = rooms.get(only_in, {})
        sids = [sid for sid in sids if sid in others]
    if notice is not None and sids:
        pkt = eio_packet.Packet(eio_packet.MESSAGE, notice)
        pkt.encode_cache = FramedStr.of("4" + notice)
        sockets = manager.server.eio.sockets
        for sid in sids:
            socket = sockets.get(members[sid])
            if type(socket) is EngineSocket:
                socket.send_nowait(pkt)
                stats.deliveries += 1
    for sid in sids:
        manager.basic_leave_room(sid, namespace, room)
    return sids


async def disconnect_locally(
    manager: socketio.AsyncManager, namespace: str, target: Any, notice: str | None = None
) -> list[str]:
    """Disconnect this process's connections that ``target`` names (see
    :meth:`RoomIndex.select_connections`), sending each the encoded packet ``notice`` first; the
    client then sees its DISCONNECT ("io server disconnect"). Returns their sids."""
    sids: list[str] = manager.select_connections(namespace, target)
    if notice is not None and sids:
        pkt = eio_packet.Packet(eio_packet.MESSAGE, notice)
        pkt.encode_cache = FramedStr.of("4" + notice)
        connected = manager.rooms.get(namespace, {}).get(None, {})
        sockets = manager.server.eio.sockets
        for sid in sids:
            socket = sockets.get(connected.get(sid))
            if type(socket) is EngineSocket:
                socket.send_nowait(pkt)
                stats.deliveries += 1
            elif socket is not None:  # an Engine.IO server other than EngineServer
                await socket.send(pkt)
    for sid in sids:
        await manager.server.disconnect(sid, namespace=namespace, ignore_queue=True)
    return sids


def event_packet(namespace: str, event: str, json_args: str) -> str:
    """The Socket.IO EVENT packet text for ``event`` with one argument given as JSON text."""
    return f"{packet_head(namespace, event)}{json_args}]"


@functools.lru_cache(maxsize=256)
def packet_head(namespace: str, event: str) -> str:
    prefix = "2" if namespace == "/" else f"2{namespace},"
    return f"{prefix}[{json.dumps(event)},"


class RoomIndex:
    """Keeps the rooms of each connection, so that listing them and leaving them all on disconnect
    cost that connection's rooms. python-socketio scans every room of the namespace for both,
    which makes connecting and disconnecting N clients O(N^2)."""

    rooms: dict[Any, dict[Any, Any]]
    server: Any
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, recovery: Recovery | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: (namespace, sid) -> its rooms, in the order joined: a dict of rooms to None, not a set,
        #: because a dict of strings is no work for the garbage collector and a set always is
        self._rooms_of: dict[tuple[str, str], dict[Any, None]] = {}
        #: connection state recovery (None: off)
        self.recovery = recovery
        #: the connections that take no offsets after the arguments (see recovery.speaks_recovery)
        self.plain_sids: set[str] = set()
        #: sid -> the newest position of what was sent to it as missed: what reaches this instance
        #: later from the channel up to there is not sent again (kept :data:`FLOOR_SECONDS`)
        self.floors: dict[str, tuple[int, int]] = {}
        #: sid -> what was sent to it while it recovers: (its position in the history, the packet)
        self.held: dict[str, list[tuple[tuple[int, int] | None, eio_packet.Packet]]] = {}

    def hold(self, sid: str) -> None:
        """Keep what is sent to ``sid`` from now on until :meth:`release`."""
        self.held.setdefault(sid, [])

    def release(self, sid: str, after: tuple[int, int] | None, missed: list[str]) -> None:
        """Send ``sid`` the packets ``missed`` (it missed them: they are in the history up to
        ``after``), then what was held for it, less what ``missed`` had already; stop holding."""
        held = self.held.pop(sid, None)
        socket = self._socket_of(sid)
        if socket is None:
            return
        if after is not None:
            self.floors[sid] = after
            asyncio.get_running_loop().call_later(FLOOR_SECONDS, self.floors.pop, sid, None)
        plain = sid in self.plain_sids
        for encoded in missed:
            if plain:  # it takes no offsets: the packet ends with one ("...,"<offset>"]")
                encoded = encoded[: encoded.rindex(',"')] + "]"
            socket.send_nowait(message(encoded))
        for position, pkt in held or ():
            if position is None or after is None or position > after:
                socket.send_nowait(pkt)
        stats.deliveries += len(missed) + len(held or ())

    def _socket_of(self, sid: str) -> Any:
        for rooms in self.rooms.values():
            eio_sid = rooms.get(None, {}).get(sid)
            if eio_sid is not None:
                socket = self.server.eio.sockets.get(eio_sid)
                return socket if type(socket) is EngineSocket else None
        return None

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        joined = self._rooms_of.get((namespace, sid))
        if joined is not None:
            joined.pop(room, None)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        for room in self._rooms_of.pop((namespace, sid), {}):
            super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        # the rest is python-socketio's BaseManager.basic_disconnect
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]

    def is_local_sid(self, namespace: str, sid: Any) -> bool:
        """Whether ``sid`` is a connection of this instance in ``namespace``."""
        return isinstance(sid, str) and sid in self.rooms.get(namespace, {}).get(None, ())

    #: Resolves the disconnect targets the index does not know (the user's own, such as
    #: ``{"user": id}``): ``select(namespace, target)`` gives the sids, or None for "not mine".
    select: Callable[[str, Any], Iterable[str] | None] | None = None

    def select_connections(self, namespace: str, target: Any) -> list[str]:
        """This instance's connections in ``namespace`` that ``target`` names: ``{"sid": sid}``
        (that connection, if it is here), ``{"room": name}`` (everyone in the room), or what
        :attr:`select` resolves. Anything else names nobody."""
        if self.select is not None:
            chosen = self.select(namespace, target)
            if chosen is not None:
                return list(chosen)
        if not isinstance(target, dict):
            return []
        sid, room = target.get("sid"), target.get("room")
        if isinstance(sid, str):
            return [sid] if self.is_local_sid(namespace, sid) else []
        if isinstance(room, str):
            return list(self.rooms.get(namespace, {}).get(room, {}))
        return []


class LocalManager(RoomIndex, socketio.AsyncManager):  # type: ignore[misc]
    """The client manager of a single instance: python-socketio's, with :func:`deliver_locally`."""

    async def emit_json(self, event: str, json_args: str, namespace: str, room: Any, key: str = "") -> None:
        """Emit ``event`` whose one argument is already JSON text (with recovery on: recorded in
        the history, its offset after it)."""
        recovery = self.recovery
        if not isinstance(recovery, MemoryRecovery):
            await deliver_packet(self, event_packet(namespace, event, json_args), namespace, room)
            return
        head = packet_head(namespace, event)
        position, packet = recovery.append(namespace, room, head, json_args)
        plain = without_offset(packet, format_offset(position)) if self.plain_sids else None
        await deliver_packet(self, packet, namespace, room, position=position, plain=plain)

    async def evict(self, namespace: str, room: Any, *, only_in: Any = None, notice: str | None = None) -> None:
        """Take every connection out of ``room`` (or only those also in ``only_in``), telling each
        with the encoded packet ``notice``; see :func:`evict_locally`."""
        evict_locally(self, namespace, room, only_in, notice)

    async def disconnect_connections(self, namespace: str, target: Any, *, notice: str | None = None) -> int:
        """Disconnect the connections ``target`` names, telling each with the encoded packet
        ``notice`` first; see :func:`disconnect_locally`. Returns how many there were."""
        return len(await disconnect_locally(self, namespace, target, notice))

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
