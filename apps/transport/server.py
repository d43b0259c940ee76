"""The Socket.IO server: python-socketio's ``AsyncServer`` on :class:`~apps.transport.engine_server.EngineServer`,
with one ordered conversation per connection and client input checked as socket.io checks it.

What changes from python-socketio 5.18.1 (each listed in the package README):

- **Order.** A connection's CONNECT, DISCONNECT and events are handled one after another, in the
  order it sent them (each handler awaited before the next starts, its ack sent before the next
  event is handled), over any transport; acks from the client are handled at once. Different
  connections never wait for one another. python-socketio runs each event in a Task of its own,
  so a handler that awaits (a database, Redis) lets later events overtake it.
- **Connect timeout.** An Engine.IO connection that has joined no namespace ``connect_timeout``
  seconds after it opened is closed (socket.io's ``connectTimeout``), whether it never sent a
  CONNECT or had its CONNECTs refused. python-socketio keeps it for as long as it answers pings.
- **Client input, as socket.io-parser decodes it.** A packet that does not decode, a CONNECT whose
  payload is not an object, an event whose payload is not a non-empty array led by a name, an
  event named ``connect``, ``connect_error``, ``disconnect``, ``disconnecting``, ``newListener``
  or ``removeListener``, more than ``max_attachments`` binary attachments or attachments over
  ``max_http_buffer_size`` bytes in all, and more than ``max_pending_events`` events waiting to be
  handled close that connection, with one warning line. python-socketio logged tracebacks, ran
  the server's own ``connect``/``disconnect`` handlers for client events of those names, and took
  any number of attachments.
- **Refusals.** A CONNECT to a namespace the server does not serve is refused with
  ``{"message": "Invalid namespace"}`` (python-socketio: the bare string ``"Unable to connect"``).
- **Admin UI.** ``instrument()`` (python-socketio's, same arguments) returns
  :class:`~apps.transport.admin.InstrumentedServer`, python-socketio's instrumentation adapted to
  this transport (what differs is in that module); ``shutdown()`` stops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from socketio import exceptions as sio_exceptions
from socketio import packet as sio_packet

from apps.transport.admin import InstrumentedServer
from apps.transport.conversation import Conversations, TooManyPending
from apps.transport.engine_server import EngineServer
from apps.transport.engine_socket import spawn, stats
from apps.transport.managers import deliver_packet, event_packet
from apps.transport.recovery import (
    RECOVERABLE_REASONS,
    Recorded,
    Recovery,
    RecoveryUnavailable,
    Session,
    new_pid,
    speaks_recovery,
)

logger = logging.getLogger(__name__)

#: Event names socket.io reserves (socket.io-parser refuses a packet that uses one).
RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class MalformedPacket(ValueError):
    """A packet socket.io-parser would refuse."""


def check_packet(pkt: Any) -> None:
    """socket.io-parser's ``isPayloadValid`` for what a client may send; raises :class:`MalformedPacket`."""
    kind, data = pkt.packet_type, pkt.data
    if kind == sio_packet.CONNECT:
        if data is not None and not isinstance(data, dict):
            raise MalformedPacket("a CONNECT payload must be an object")
    elif kind == sio_packet.DISCONNECT:
        if data is not None:
            raise MalformedPacket("a DISCONNECT has no payload")
    elif kind in (sio_packet.EVENT, sio_packet.BINARY_EVENT):
        if not isinstance(data, list) or not data:
            raise MalformedPacket("an event's payload must be a non-empty array")
        name = data[0]
        if isinstance(name, str):
            if name in RESERVED_EVENTS:
                raise MalformedPacket(f"{name!r} is a reserved event name")
        elif isinstance(name, bool) or not isinstance(name, int | float):
            raise MalformedPacket("an event's payload must start with its name")
    elif kind in (sio_packet.ACK, sio_packet.BINARY_ACK):
        if not isinstance(data, list):
            raise MalformedPacket("an ack's payload must be an array")
    else:  # CONNECT_ERROR, or no such type
        raise MalformedPacket(f"a client may not send packet type {kind}")


class SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's ``AsyncServer`` (see the module docstring for what differs).

    ``connect_timeout`` (seconds; 0 turns it off), ``max_attachments`` and ``max_pending_events``
    as above; everything else is python-socketio's (and python-engineio's, through
    :class:`EngineServer`: ``ping_interval``, ``ping_timeout``, ``max_http_buffer_size``,
    ``max_send_buffer_bytes``, ...).
    """

    def __init__(
        self,
        *args: Any,
        connect_timeout: float = 45.0,
        max_attachments: int = 10,
        max_pending_events: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout
        self.max_attachments = max_attachments
        self._conversations = Conversations(max_pending=max_pending_events, on_error=self._job_failed)
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}
        self._pids: dict[str, str] = {}
        self._missed: dict[str, list[Recorded]] = {}  # sid -> the private id of its session (recovery on)
        self._offered: dict[str, tuple[Session, str]] = {}  # sid -> the session it may recover, from
        self._asked: set[str] = set()  # sids whose CONNECT asked to recover (until the reply)
        self._kept: dict[str, dict[str, Any]] = {}  # sid -> what the connect handler keeps with it
        self.eio.on("message", self._on_eio_message)  # a plain function: called in order, at once
        self.eio.on("disconnect", self._on_eio_disconnect)

    def _engineio_server_class(self) -> type:
        return EngineServer

    # --- the Socket.IO Admin UI ------------------------------------------------------------

    _admin: Any = None

    def instrument(
        self,
        auth: Any = None,
        mode: str = "development",
        read_only: bool = False,
        server_id: str | None = None,
        namespace: str = "/admin",
        server_stats_interval: float = 2,
    ) -> Any:
        """python-socketio's ``instrument()`` for the Admin UI, adapted to this transport
        (:class:`~apps.transport.admin.InstrumentedServer`); :meth:`shutdown` stops it."""
        self._admin = InstrumentedServer(
            self,
            auth=auth,
            mode=mode,
            read_only=read_only,
            server_id=server_id,
            namespace=namespace,
            server_stats_interval=server_stats_interval,
        )
        return self._admin

    async def shutdown(self) -> None:
        if self._admin is not None:
            await self._admin.shutdown()
        await super().shutdown()

    # --- Engine.IO sessions ---------------------------------------------------------------

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        if self.connect_timeout:
            loop = asyncio.get_running_loop()
            self._connect_timers[eio_sid] = loop.call_later(self.connect_timeout, self._connect_timed_out, eio_sid)

    def _connect_timed_out(self, eio_sid: str) -> None:
        if self._connect_timers.pop(eio_sid, None) is not None:
            logger.info("%s joined no namespace within %g s; closing the connection", eio_sid, self.connect_timeout)
            spawn(self.eio.disconnect(eio_sid))

    def _cancel_connect_timer(self, eio_sid: str) -> None:
        timer = self._connect_timers.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()

    async def _on_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        self._cancel_connect_timer(eio_sid)
        self._binary_packet.pop(eio_sid, None)
        if self._conversations.busy(eio_sid):  # after the events it sent before it went
            self._conversations.add(eio_sid, self._handle_eio_disconnect(eio_sid, reason))
        else:
            await self._handle_eio_disconnect(eio_sid, reason)

    # --- connection state recovery ---------------------------------------------------------

    @property
    def recovery(self) -> Recovery | None:
        """The manager's recovery (None: off)."""
        return getattr(self.manager, "recovery", None)

    def recovering(self, sid: str) -> Session | None:
        """In a connect handler: the session the connection asks to recover (its rooms, what was
        kept with it), or None. The handler decides: it joins the rooms it still allows, or calls
        :meth:`decline_recovery`."""
        offered = self._offered.get(sid)
        return offered[0] if offered is not None else None

    def decline_recovery(self, sid: str) -> None:
        """In a connect handler: connect this connection as a new one (``recovered`` false)."""
        self._offered.pop(sid, None)

    def keep_with_session(self, sid: str, data: dict[str, Any]) -> None:
        """In a connect handler: what to keep with the connection's session (given back by
        :meth:`recovering` when it recovers)."""
        self._kept[sid] = data

    async def _offer(self, eio_sid: str, sid: str, namespace: str, data: Any) -> None:
        recovery = self.recovery
        if recovery is None:
            return
        if not speaks_recovery(self.environ.get(eio_sid, {}).get("QUERY_STRING", ""), data):
            self.manager.plain_sids.add(sid)  # no offsets, no session
            return
        if not isinstance(data, dict):
            return
        pid, offset = data.get("pid"), data.get("offset")
        if not isinstance(pid, str):
            return
        self._asked.add(sid)
        try:
            session = await recovery.session(pid)
            if session is None or session.namespace != namespace:
                return
            offset = offset if isinstance(offset, str) else session.offset
            if not await recovery.covers(offset):
                return
        except RecoveryUnavailable as exc:
            logger.warning("connection state recovery unavailable (%s): connecting %s afresh", exc, sid)
            return
        self._offered[sid] = (session, offset)

    async def _connected(self, sid: str, namespace: str) -> dict[str, Any]:
        """After the connect handler accepted ``sid``: its session, recovered (what it missed is
        then kept for :meth:`_send_missed`, after the reply) or new. Returns the CONNECT reply's
        data (with the session's ``pid``, unless the client takes no offsets or the store is down)."""
        recovery = self.recovery
        if recovery is None or sid in self.manager.plain_sids:
            self._kept.pop(sid, None)
            return {"sid": sid}
        kept = self._kept.pop(sid, {})
        offered = self._offered.pop(sid, None)
        asked = sid in self._asked
        self._asked.discard(sid)
        if offered is None and asked:
            stats.not_recovered += 1
        if offered is not None:
            session, offset = offered
            rooms = self._session_rooms(sid, namespace)
            try:
                missed = await recovery.since(namespace, offset, rooms)
                taken = await recovery.take(session.pid, sid) if missed is not None else None
            except RecoveryUnavailable as exc:
                logger.warning("connection state recovery unavailable (%s): connecting %s afresh", exc, sid)
                missed = taken = None
            if taken is None or missed is None:
                stats.not_recovered += 1
            if taken is not None and missed is not None:  # recovered
                stats.recovered += 1
                taken.data = kept or taken.data
                self._pids[sid] = taken.pid
                await self._rooms_changed(sid, namespace)
                self._missed[sid] = missed
                return {"sid": sid, "pid": taken.pid}
        try:
            session = Session(new_pid(), sid, namespace, await recovery.last(), data=kept)
            await recovery.open(session)
        except RecoveryUnavailable as exc:
            logger.warning("connection state recovery unavailable (%s): %s has no session", exc, sid)
            return {"sid": sid}
        self._pids[sid] = session.pid
        return {"sid": sid, "pid": session.pid}

    def _send_missed(self, sid: str) -> None:
        """After the CONNECT reply: what ``sid`` missed (when it recovered), then what was held."""
        if self.recovery is None:
            return
        missed = self._missed.pop(sid, None) or []
        self.manager.release(sid, missed[-1].position if missed else None, [event.packet for event in missed])

    async def _forget(self, sid: str, namespace: str, reason: Any) -> None:
        """``sid`` left ``namespace``: its session is kept for the window when it was lost (not
        closed on purpose), with the rooms it was in."""
        self._offered.pop(sid, None)
        self._asked.discard(sid)
        self._kept.pop(sid, None)
        self._missed.pop(sid, None)
        self.manager.plain_sids.discard(sid)
        pid = self._pids.pop(sid, None)
        recovery = self.recovery
        if pid is None or recovery is None:
            return
        rooms = self._session_rooms(sid, namespace)
        try:
            await recovery.closed(pid, sid, rooms, recoverable=reason in RECOVERABLE_REASONS)
        except RecoveryUnavailable as exc:
            logger.warning("connection state recovery unavailable (%s): the session of %s was not kept", exc, sid)

    def _session_rooms(self, sid: str, namespace: str) -> list[str]:
        """The rooms a session keeps: those ``sid`` is in, but its own."""
        return [room for room in self.manager.get_rooms(sid, namespace) if room != sid]

    async def send_json(self, sid: str, event: str, json_args: str, namespace: str) -> None:
        """Send ``event`` to the connection ``sid`` of this instance alone, its one argument already
        JSON text; not recorded for recovery (a message for that connection only, such as its
        welcome: a recovered session must not get the old connection's again)."""
        await deliver_packet(self.manager, event_packet(namespace, event, json_args), namespace, sid)

    async def enter_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        await super().enter_room(sid, room, namespace=namespace)
        await self._rooms_changed(sid, namespace or "/")

    async def leave_room(self, sid: str, room: Any, namespace: str | None = None) -> None:
        await super().leave_room(sid, room, namespace=namespace)
        await self._rooms_changed(sid, namespace or "/")

    async def _rooms_changed(self, sid: str, namespace: str) -> None:
        """The session of ``sid`` (once it has one) is told its rooms as they change."""
        pid = self._pids.get(sid)
        recovery = self.recovery
        if pid is None or recovery is None:
            return
        try:
            await recovery.rooms_changed(pid, self._session_rooms(sid, namespace))
        except RecoveryUnavailable as exc:
            logger.warning("connection state recovery unavailable (%s): the rooms of %s not kept yet", exc, sid)

    async def replay(self, sid: str, namespace: str, room: str, since: str, join: Any) -> int | None:
        """``join()`` (which puts ``sid`` in ``room``, or returns False), then send ``sid`` what was
        sent to ``room`` after the offset ``since``, before anything newer: the number sent, or None
        when the history no longer covers ``since`` (nothing is replayed then; the room is joined
        all the same). Raises RecoveryUnavailable when the history cannot be read."""
        recovery = self.recovery
        if recovery is None:
            await join()
            return None
        self.manager.hold(sid)
        try:
            if await join() is False:  # refused: nothing of the room
                self.manager.release(sid, None, [])
                return None
            missed = await recovery.since(namespace, since, [room])
        except BaseException:
            self.manager.release(sid, None, [])
            raise
        packets = [event.packet for event in missed or ()]
        self.manager.release(sid, missed[-1].position if missed else None, packets)
        return None if missed is None else len(missed)

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        """python-socketio's; before a connection's ``disconnect`` handler (every way it goes),
        its session is put aside for recovery."""
        if event == "disconnect" and args and self.recovery is not None:
            await self._forget(args[0], namespace, args[1] if len(args) > 1 else None)
        return await super()._trigger_event(event, namespace, *args)

    # --- what clients send ----------------------------------------------------------------

    def _get_event_handler(self, event: str, namespace: str, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        """python-socketio's, except for a client event named ``*``: python-socketio hands it to
        the catch-all handler without its name, so the handler takes the sid for the name and the
        first argument for the sid (a client could charge its events to another connection). Here
        the catch-all gets the name, as for any other event."""
        if event != "*":
            return super()._get_event_handler(event, namespace, args)  # type: ignore[no-any-return]
        if "*" in self.handlers.get(namespace, {}):
            return self.handlers[namespace]["*"], (event, *args)
        if "*" in self.handlers.get("*", {}):
            return self.handlers["*"]["*"], (event, namespace, *args)
        return None, args

    def _on_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        """A message from a client, in arrival order: decoded and checked now, handled in the
        connection's conversation."""
        try:
            pkt = self._decode(eio_sid, data)
            if pkt is None:  # a binary packet waiting for more attachments
                return
            kind = pkt.packet_type
            if kind in (sio_packet.ACK, sio_packet.BINARY_ACK):
                spawn(self._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data))
            elif kind == sio_packet.CONNECT:
                self._conversations.add(eio_sid, self._handle_connect(eio_sid, pkt.namespace, pkt.data))
            elif kind == sio_packet.DISCONNECT:
                self._conversations.add(
                    eio_sid, self._handle_disconnect(eio_sid, pkt.namespace, self.reason.CLIENT_DISCONNECT)
                )
            else:
                self._conversations.add(eio_sid, self._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data))
        except (MalformedPacket, TooManyPending) as exc:
            self._close_malformed(eio_sid, str(exc))

    def _decode(self, eio_sid: str, data: str | bytes) -> Any:
        """The packet ``data`` completes, or None while a binary packet waits for attachments."""
        pending = self._binary_packet.get(eio_sid)
        if pending is not None:
            if not isinstance(data, bytes):
                raise MalformedPacket("text while binary attachments were expected")
            if sum(map(len, pending.attachments)) + len(data) > self.eio.max_http_buffer_size:
                raise MalformedPacket(f"binary attachments over {self.eio.max_http_buffer_size} bytes")
            if not pending.add_attachment(data):
                return None
            del self._binary_packet[eio_sid]
            return pending
        if not isinstance(data, str):
            raise MalformedPacket("binary data when no attachment was expected")
        try:
            pkt = self.packet_class(encoded_packet=data)
        except Exception:
            raise MalformedPacket("undecodable packet") from None
        check_packet(pkt)
        if pkt.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
            if pkt.attachment_count > self.max_attachments:
                raise MalformedPacket(f"{pkt.attachment_count} binary attachments (at most {self.max_attachments})")
            if not self.manager.sid_from_eio_sid(eio_sid, pkt.namespace or "/"):
                raise MalformedPacket("a binary packet for a namespace the connection has not joined")
            if pkt.attachment_count:
                self._binary_packet[eio_sid] = pkt
                return None
        return pkt

    def _close_malformed(self, eio_sid: str, why: str) -> None:
        logger.warning("websocket connection %s sent a malformed packet (%s): closing it", eio_sid, why)
        self._binary_packet.pop(eio_sid, None)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            spawn(socket.close(wait=False, reason=self.reason.TRANSPORT_ERROR))

    def _job_failed(self, eio_sid: str) -> None:
        logger.exception("handler failed for connection %s", eio_sid)

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        """python-socketio's, with the handler awaited here (in the connection's conversation)."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            logger.debug("%s is not connected to namespace %s", sid, namespace)
            return
        await self._handle_event_internal(self, sid, eio_sid, data, namespace, id)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        """python-socketio's, refusing an unknown namespace with ``{"message": ...}`` and marking
        the connection as having joined one."""
        namespace = namespace or "/"
        sid = None
        if (
            namespace in self.handlers
            or namespace in self.namespace_handlers
            or self.namespaces == "*"
            or namespace in self.namespaces
        ):
            sid = await self.manager.pre_connect(eio_sid, namespace)
        else:
            await self._refuse_connect(eio_sid, namespace, "Invalid namespace")
            return
        if sid is None:
            await self._refuse_connect(eio_sid, namespace, "Already connected to this namespace")
            return
        await self._offer(eio_sid, sid, namespace, data)
        if self.recovery is not None and sid not in self.manager.plain_sids:
            # what is sent to it waits for the CONNECT reply, and for what it missed
            self.manager.hold(sid)
        if self.always_connect:
            await self._send_packet(eio_sid, self.packet_class(sio_packet.CONNECT, {"sid": sid}, namespace=namespace))
            await self.manager.connect(sid, namespace)
        fail_reason = sio_exceptions.ConnectionRefusedError().error_args
        environ = self.environ.get(eio_sid, {})
        try:
            if data:
                success = await self._trigger_event("connect", namespace, sid, environ, data)
            else:
                try:
                    success = await self._trigger_event("connect", namespace, sid, environ, None)
                except TypeError as exc:
                    try:
                        success = await self._trigger_event("connect", namespace, sid, environ)
                    except TypeError:
                        raise exc from None
        except sio_exceptions.ConnectionRefusedError as exc:
            fail_reason = exc.error_args
            success = False
        except ConnectionRefusedError:
            fail_reason = {"message": "Connection refused by server"}
            success = False

        if success is False:
            self._offered.pop(sid, None)
            self._asked.discard(sid)
            self._kept.pop(sid, None)
            if self.recovery is not None:
                self.manager.held.pop(sid, None)  # refused: nothing of it is sent
                self.manager.plain_sids.discard(sid)
            if self.always_connect:
                self.manager.pre_disconnect(sid, namespace)
                await self._send_packet(
                    eio_sid, self.packet_class(sio_packet.DISCONNECT, data=fail_reason, namespace=namespace)
                )
            else:
                await self._send_packet(
                    eio_sid, self.packet_class(sio_packet.CONNECT_ERROR, data=fail_reason, namespace=namespace)
                )
            await self.manager.disconnect(sid, namespace, ignore_queue=True)
            return
        self._cancel_connect_timer(eio_sid)
        if not self.always_connect:
            reply = await self._connected(sid, namespace)
            await self._send_packet(eio_sid, self.packet_class(sio_packet.CONNECT, reply, namespace=namespace))
            await self.manager.connect(sid, namespace)
            self._send_missed(sid)

    async def _refuse_connect(self, eio_sid: str, namespace: str, message: str) -> None:
        await self._send_packet(
            eio_sid, self.packet_class(sio_packet.CONNECT_ERROR, data={"message": message}, namespace=namespace)
        )
