"""One Engine.IO session: python-engineio's ``AsyncSocket``, with the send path, the heartbeat,
long-polling and the upgrade made to behave as the reference server (engine.io 6) does.

What changes from python-engineio 4.15.1 (each listed in the package README):

- **Send path.** :meth:`EngineSocket.send_nowait` hands a packet straight to the session's
  WebSocket once it has one (no queue, no writer Task), which writes what it was given in a turn of
  the event loop in one write at the end of the turn; a :class:`~apps.transport.framing.FramedStr`
  packet is written as the frame built once for every recipient. Until then (long-polling, an
  upgrade in progress) packets wait in python-engineio's queue for the next poll.
- **The WebSocket hand-off.** Under :mod:`apps.transport.ws_protocol` the open WebSocket is taken
  over from the ASGI app: the connection calls :meth:`EngineSocket.ws_message` for each message
  and :meth:`EngineSocket.ws_closed` when it ends. No ASGI task, reader Task or queue stays per
  connection. Under any other ASGI server python-engineio's WebSocket transport runs unchanged.
- **Heartbeat by deadlines, closed at its deadline.** A PING every ``ping_interval``; a client
  that has not answered ``ping_timeout`` after the PING was due is closed then (and any request it
  makes after that is refused), not by a periodic sweep. Every session's next step is a deadline
  of the server's :class:`~apps.transport.deadlines.Deadlines`, on one event-loop timer.
- **Messages in order.** Every MESSAGE is handed to the server's message dispatch in the order it
  arrived, over any transport (:meth:`EngineServer.deliver_message`).
- **Long-polling.** A poll is answered with 16 packets at most (python-engineio's client refuses
  more, and drops its connection); a second GET while one is pending, a second POST while one is being read, a
  malformed packet and a body over ``max_http_buffer_size`` each close the session (the pending
  GET is answered with a CLOSE); a session that closes answers its pending GET with a NOOP; a POST
  may carry any number of packets (python-engineio refuses more than 16, and then loses them).
- **Upgrade.** The NOOP that ends the pending poll is sent only to a poll that is pending (never
  on the new WebSocket); a second WebSocket for a session that is upgrading or upgraded is refused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from engineio.exceptions import QueueEmpty

from apps.transport.environ import AwaitablePayload, BodyIncomplete, BodyTooLarge
from apps.transport.framing import FramedStr
from apps.transport.ws_protocol import HandedOffWebSocket

logger = logging.getLogger(__name__)


class TransportStats:
    """What the transport counts, as plain integers (the process's one instance is :data:`stats`).
    A service exports them as it likes (the event service: as Prometheus counters); the transport
    only adds to them, on paths it runs anyway, and never reads them."""

    __slots__ = ("deliveries", "not_recovered", "recovered", "slow_clients_dropped")

    def __init__(self) -> None:
        #: Packets handed to recipients' Engine.IO sockets by local delivery (one per recipient of
        #: an emit or an eviction notice; a packet a session had no transport for yet waits in its queue).
        self.deliveries = 0
        #: WebSocket clients dropped for leaving more than ``max_send_buffer_bytes`` unread.
        self.slow_clients_dropped = 0
        #: Connections that asked to recover a session (a ``pid``): recovered, or connected afresh
        #: (unknown or expired session, history gap, another user, the store unreachable).
        self.recovered = 0
        self.not_recovered = 0


#: This process's counters.
stats = TransportStats()

#: Tasks started by sockets, kept until they end (asyncio holds only weak references).
_running: set[asyncio.Task[Any]] = set()


class RequestRefused(Exception):
    """A long-polling request the session refuses; the session may have been closed for it.
    ``status`` is the HTTP status to answer with, ``code`` and ``message`` Engine.IO's error."""

    def __init__(self, message: str, *, status: int = 400, code: int = 3) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class UnknownPacket(ValueError):
    """A packet of a type the client may not send."""


def _framed_packet(kind: int) -> eio_packet.Packet:
    """An Engine.IO packet without data, encoded and framed once for every connection."""
    pkt = eio_packet.Packet(kind)
    pkt.encode_cache = FramedStr.of(pkt.encode())
    return pkt


#: Most packets in one long-poll answer: python-engineio's client refuses a payload of more than
#: 16 (``Payload.max_decode_packets``) and drops its connection; socket.io-client reads any number.
MAX_POLL_PACKETS = 16

#: The heartbeat's PING: written as this one frame to every connection.
PING = _framed_packet(eio_packet.PING)
NOOP = eio_packet.NOOP
CLOSE = eio_packet.CLOSE


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


def spawn(coro: Any) -> asyncio.Task[Any]:
    """Run ``coro`` in a Task that is kept until it ends."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def decode_payload(body: bytes) -> list[eio_packet.Packet]:
    """The packets of a long-polling POST body (``\\x1e``-separated), any number of them.
    Raises ValueError (UnicodeDecodeError included) for a body that is not a valid payload."""
    text = body.decode("utf-8")
    if not text:
        raise ValueError("empty payload")
    return [eio_packet.Packet(encoded_packet=part) for part in text.split("\x1e")]


class EngineSocket(AsyncSocket):  # type: ignore[misc]
    """One Engine.IO session (see the module's docstring for what differs from python-engineio)."""

    server: Any  # apps.transport.engine_server.EngineServer
    sid: str
    queue: Any  # an asyncio.Queue, then _NO_QUEUE once the socket has its WebSocket
    connected: bool
    upgrading: bool
    upgraded: bool
    closing: bool
    closed: bool
    #: The WebSocket this socket was handed, while it is open.
    ws: HandedOffWebSocket | None = None
    handed_off = False
    #: A long-polling GET is waiting for packets / a POST body is being read.
    polling = False
    posting = False
    #: When the next PING is due, and (event loop time) the deadline of the PING sent while it is
    #: unanswered: the next step is on the server's ``heartbeats``.
    _due: float = 0.0
    _deadline: float | None = None

    def __init__(self, server: Any, sid: str) -> None:
        super().__init__(server, sid)
        self.last_ping = None  # python-engineio's heartbeat is not used

    # --- sending --------------------------------------------------------------------------

    def send_nowait(self, pkt: Any) -> None:
        """Send ``pkt``: written to the WebSocket now if the socket has it, else queued for the
        next poll (or for the WebSocket an upgrade is bringing)."""
        if self.closed:
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

    # --- heartbeat ------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Schedule the next PING, ``ping_interval`` from now (at the handshake, and after each PONG)."""
        self._due = asyncio.get_running_loop().time() + self.server.ping_interval
        self.server.heartbeats.set(self.sid, self._due)

    def heartbeat_due(self) -> None:
        """The heartbeat's next step has come: the PING, or the deadline of the PING sent."""
        if self._deadline is None:
            self._ping()
        else:
            self._check_deadline()

    def _ping(self) -> None:
        if self.closing or self.closed:
            return
        try:
            # the deadline counts from when the PING was due, so a late timer gives no extra time
            self._deadline = self._due + self.server.ping_timeout
            self.server.heartbeats.set(self.sid, self._deadline)
            self.send_nowait(PING)
        except Exception:
            logger.exception("websocket sid=%s: heartbeat failed; closing the session", self.sid)
            self.abort(self.server.reason.TRANSPORT_ERROR)

    def _check_deadline(self) -> None:
        # due (within the timers' resolution) and no PONG since the PING: _pong clears the deadline
        if self._deadline is not None and not (self.closing or self.closed):
            logger.debug("websocket sid=%s: no PONG within ping_timeout; closing the session", self.sid)
            self.abort(self.server.reason.PING_TIMEOUT)  # as engine.io: no CLOSE to a silent client

    def silent(self) -> bool:
        """Whether the client has let a PING go unanswered past its deadline."""
        return self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline

    def _pong(self) -> None:
        if self._deadline is None:  # a PONG nobody asked for
            return
        self._deadline = None
        self.start_heartbeat()  # in place of the deadline

    def schedule_ping(self) -> None:
        """python-engineio's hook (called after its handshake): the heartbeat is a deadline of the
        server's ``heartbeats``, started by :meth:`start_heartbeat`."""

    # --- receiving ------------------------------------------------------------------------

    def receive_nowait(self, pkt: Any) -> None:
        """A packet from the client, over any transport. Raises :class:`UnknownPacket` for a type
        a client may not send."""
        kind = pkt.packet_type
        if kind == eio_packet.MESSAGE:
            self.server.deliver_message(self.sid, pkt.data)
        elif kind == eio_packet.PONG:
            self._pong()
        elif kind == eio_packet.CLOSE:
            self.abort(self.server.reason.CLIENT_DISCONNECT)
        elif kind == eio_packet.UPGRADE:
            self.send_nowait(eio_packet.Packet(NOOP))
        elif kind not in (eio_packet.PING, eio_packet.NOOP):
            raise UnknownPacket(f"unknown Engine.IO packet type {kind}")

    async def receive(self, pkt: Any) -> None:
        self.receive_nowait(pkt)

    def ws_message(self, data: str | bytes) -> None:
        """A message from the client, parsed by the handed-off connection (called synchronously)."""
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
        try:
            self.receive_nowait(pkt)
        except UnknownPacket as exc:
            self._drop(str(exc), 1008)

    def ws_dropped(self) -> None:
        """The handed-off connection was dropped: it left too much unread (``ws_closed`` follows)."""
        stats.slow_clients_dropped += 1

    def ws_closed(self) -> None:
        """The handed-off connection is gone (closed by either side)."""
        self.ws = None
        if not self.closing and not self.closed:
            self.abort(self.server.reason.TRANSPORT_CLOSE)

    def _drop(self, why: str, code: int) -> None:
        logger.warning("websocket sid=%s: %s; closing the connection", self.sid, why)
        if self.ws is not None:
            self.ws.close(code)
        self.abort(self.server.reason.TRANSPORT_ERROR)

    def abort(self, reason: str) -> None:
        """Close the session now, without a CLOSE packet."""
        spawn(self.close(wait=False, abort=True, reason=reason))

    # --- long-polling ---------------------------------------------------------------------

    async def poll(self) -> list[Any]:
        """The packets for a long-poll: waits up to ``ping_interval + ping_timeout`` for the
        first, then takes what else is queued, :data:`MAX_POLL_PACKETS` at most (the rest go in
        the next poll). An empty list: the session closed. python-engineio's, with the cap and
        without turning a cancellation into ``QueueEmpty``."""
        try:
            first = await asyncio.wait_for(self.queue.get(), self.server.ping_interval + self.server.ping_timeout)
        except TimeoutError:
            raise QueueEmpty from None
        self.queue.task_done()
        if first is None:
            return []
        packets = [first]
        while len(packets) < MAX_POLL_PACKETS:
            try:
                pkt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queue.task_done()
            if pkt is None:
                self.queue.put_nowait(None)  # the session is closing: the next poll says so
                break
            packets.append(pkt)
        return packets

    async def handle_get_request(self, environ: dict[str, Any]) -> Any:
        """A GET for this session: a WebSocket upgrade, or a long poll (its packets)."""
        connections = [s.strip() for s in environ.get("HTTP_CONNECTION", "").lower().split(",")]
        transport = environ.get("HTTP_UPGRADE", "").lower()
        if "upgrade" in connections and transport in self.upgrade_protocols:
            if self.upgrading or self.upgraded:
                raise RequestRefused("the session is already upgrading or upgraded")
            if self.connected:
                self.upgrading = True  # from now on: a second WebSocket is refused, polls get a NOOP
            try:
                return await self._upgrade_websocket(environ)
            finally:
                if not self.upgraded:
                    self.upgrading = False
        if self.upgraded:
            raise RequestRefused("the session has been upgraded to WebSocket")
        if self.upgrading:
            return [eio_packet.Packet(NOOP)]  # no more packets over polling
        if self.polling:
            logger.warning("websocket sid=%s: a second long-poll while one is pending; closing the session", self.sid)
            await self.close(wait=False, reason=self.server.reason.TRANSPORT_ERROR)
            raise RequestRefused("overlapping long-poll requests")
        self.polling = True
        try:
            packets = await self.poll()
        except QueueEmpty:
            # nothing to send for ping_interval + ping_timeout: the client's heartbeat stopped
            await self.close(wait=False, reason=self.server.reason.TRANSPORT_ERROR)
            raise RequestRefused("the session timed out") from None
        finally:
            self.polling = False
        return packets or [eio_packet.Packet(NOOP)]  # closed meanwhile: NOOP ends the poll

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """A POST for this session: its packets, read with the size cap and decoded strictly."""
        if self.posting:
            await self._refuse("a second POST while one is being read")
        body_reader: AwaitablePayload = environ["wsgi.input"]
        self.posting = True
        try:
            body = await body_reader.read_capped(self.server.max_http_buffer_size, environ.get("CONTENT_LENGTH"))
        except BodyTooLarge:
            await self._refuse(f"long-polling body over {self.server.max_http_buffer_size} bytes", status=413)
        except BodyIncomplete:
            await self._refuse("long-polling body abandoned by the client")
        except ValueError:
            await self._refuse("invalid Content-Length")
        finally:
            self.posting = False
        try:
            packets = decode_payload(body)
        except ValueError:
            await self._refuse("undecodable long-polling payload")
        for pkt in packets:
            try:
                self.receive_nowait(pkt)
            except UnknownPacket as exc:
                await self._refuse(str(exc))

    async def _refuse(self, why: str, *, status: int = 400) -> NoReturn:
        logger.warning("websocket sid=%s: %s; closing the session", self.sid, why)
        await self.close(wait=False, reason=self.server.reason.TRANSPORT_ERROR)
        raise RequestRefused(why, status=status)

    # --- the WebSocket transport ----------------------------------------------------------

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
        # what was queued before the hand-off (the OPEN packet; what an upgrade held back) goes
        # first; a NOOP was meant for a poll, never for the WebSocket
        queue, self.queue = self.queue, _NO_QUEUE
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None and pkt.packet_type != NOOP:
                self.send_nowait(pkt)
        for data in pending:
            self.ws_message(data)
        # the ASGI app returns now; the connection stays open and calls this socket from here on

    async def _upgrade_probe(self, ws: Any) -> bool:
        """The upgrade handshake (PING probe, PONG probe, UPGRADE) over the ASGI connection,
        before the hand-off."""
        self.upgrading = True
        try:
            probe = eio_packet.Packet(encoded_packet=await ws.wait())
            if probe.packet_type != eio_packet.PING or probe.data != "probe":
                return False
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            if self.polling:  # end the pending poll (engine.io: only if one is pending)
                self.queue.put_nowait(eio_packet.Packet(NOOP))
            upgrade = eio_packet.Packet(encoded_packet=await ws.wait())
            if upgrade.packet_type != eio_packet.UPGRADE:
                return False
            self.upgraded = True
            return True
        except (OSError, ValueError, IndexError):
            return False
        finally:
            self.upgrading = False

    # --- closing --------------------------------------------------------------------------

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """Close the session: the server's disconnect handler runs, a CLOSE packet is sent unless
        ``abort``, and the session is forgotten. Never waits for the client (``wait`` is ignored:
        python-engineio waits for the queue to drain, which a client that stopped polling never
        does)."""
        if self.closed or self.closing:
            return
        self.closing = True
        self.server.heartbeats.cancel(self.sid)
        try:
            await self.server._trigger_event(
                "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT, run_async=False
            )
            if not abort:
                self.send_nowait(eio_packet.Packet(CLOSE))
        finally:
            self.closed = True
            if self.server.sockets.get(self.sid) is self:
                del self.server.sockets[self.sid]
            ws, self.ws = self.ws, None
            if ws is not None:
                ws.close()
            else:
                self.queue.put_nowait(None)  # wake a pending poll (or python-engineio's writer)
