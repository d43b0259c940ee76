"""Connection state recovery, as socket.io-client 4.6+ speaks it (Node's ``connectionStateRecovery``).

The protocol, from the client's side: a server's CONNECT reply that carries a private session id
(``{"sid", "pid"}``) makes the client remember it, and the last argument of every event it
receives when that argument is a string (the event's *offset*). On its next CONNECT it sends both
back (``auth`` gets ``pid`` and ``offset`` beside what the application put there); if the reply
carries the same ``pid``, ``socket.recovered`` is true, and the events the server sends before
any newer one are those it missed.

This module keeps what the server needs for that, in this process's memory:

- :class:`MemoryHistory`: the events sent to rooms, each with its offset, bounded by count and by
  age (the recovery window). Offsets have the form of Redis stream ids (``<ms>-<seq>``), so that
  the in-memory history and the Redis one (``redis_manager``) give the client the same kind.
- :class:`MemorySessions`: each connection's session (its rooms, and what the application keeps
  with it), by private id, while the connection is open and for the window after it went.

Nothing here does I/O; the server (``server.SocketServer``) and the managers use it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

#: Disconnect reasons after which a session is kept for the window (as Node's): the connection was
#: lost, not closed on purpose by either side.
RECOVERABLE_REASONS = frozenset({"transport close", "transport error", "ping timeout", "server shutting down"})


#: The ``t`` query parameter python-engineio's client adds to its requests (``time.time()``);
#: socket.io-client's is a random string, or absent.
_PYTHON_ENGINEIO_TIMESTAMP = re.compile(r"\d{9,}\.\d+")


def speaks_recovery(query_string: str, auth: object) -> bool:
    """Whether a connection's client takes events with an offset after their arguments. Clients
    that do not recover would see it as one more argument, and python-socketio's client calls a
    handler with every argument: ``def handler(event)`` would fail. So no offsets go to
    python-socketio's client (known by the ``t`` parameter python-engineio adds to its requests),
    unless its ``auth`` says ``"recovery": true``; ``"recovery": false`` turns them off for any
    client."""
    if isinstance(auth, dict) and isinstance(auth.get("recovery"), bool):
        return bool(auth["recovery"])
    stamps = parse_qs(query_string).get("t", [])
    return not any(_PYTHON_ENGINEIO_TIMESTAMP.fullmatch(stamp) for stamp in stamps)


def new_pid() -> str:
    """A private session id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def parse_offset(text: object) -> tuple[int, int] | None:
    """``"<ms>-<seq>"`` as a pair that orders as the offsets do, or None when it is not one."""
    if not isinstance(text, str) or len(text) > 41:
        return None
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or not ms.isascii() or not seq.isascii():
        return None
    return int(ms), int(seq)


def format_offset(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"


def without_offset(packet: str, offset: str) -> str:
    """The EVENT packet text ``packet`` (which ends with its offset) without it."""
    suffix = f',"{offset}"]'
    return packet[: -len(suffix)] + "]" if packet.endswith(suffix) else packet


#: The key an event's offset is given in its argument too, when that argument is a JSON object
#: (the envelope then says where it stands, for clients that do not take the extra argument).
OFFSET_KEY = "offset"


def stamped(json_args: str, offset: str) -> str:
    """``json_args`` with ``"offset": <offset>`` added when it is a JSON object (else as it is)."""
    text = json_args.rstrip()
    if not text.endswith("}"):
        return json_args
    inner = text[:-1].rstrip()
    separator = "" if inner.endswith("{") else ","
    return f'{inner}{separator}"{OFFSET_KEY}":"{offset}"}}'


def with_offset(packet_head: str, json_args: str, offset: str) -> str:
    """The EVENT packet text whose argument is ``json_args`` (stamped with the offset) followed by
    the offset itself (``packet_head`` is ``2/ns,["event",``)."""
    return f'{packet_head}{stamped(json_args, offset)},"{offset}"]'


@dataclass(slots=True)
class Recorded:
    """One event of the history: where it went and the packet text that carries its offset."""

    position: tuple[int, int]
    namespace: str
    rooms: frozenset[str]
    packet: str
    at: float


def rooms_of(room: Any) -> frozenset[str]:
    """The rooms an emit named (one, or a list of them)."""
    if room is None:
        return frozenset()
    if isinstance(room, str):
        return frozenset((room,))
    if type(room) is list and len(room) == 1 and isinstance(room[0], str):  # what the broadcaster sends
        return frozenset(room)
    return frozenset(r for r in room if isinstance(r, str))


class MemoryHistory:
    """The events sent to rooms in this process, oldest first: at most ``max_events``, none older
    than ``max_age`` seconds (trimmed as events are added)."""

    def __init__(self, *, max_events: int, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.max_events = max_events
        self.max_age = max_age
        self._clock = clock
        self._events: deque[Recorded] = deque()
        self._last = (0, 0)
        #: the newest position ever trimmed: an offset at or before it may have missed events
        self._trimmed = (0, 0)

    def _next_position(self) -> tuple[int, int]:
        ms = int(self._clock() * 1000)
        last_ms, last_seq = self._last
        position = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        self._last = position
        return position

    def last(self) -> str:
        """The offset of the newest event (``0-0`` before the first)."""
        return format_offset(self._last)

    def append(self, namespace: str, room: Any, packet_head: str, json_args: str) -> tuple[tuple[int, int], str]:
        """Record an event sent to ``room`` (one or several); returns its position and its packet
        (with its offset)."""
        position = self._next_position()
        packet = with_offset(packet_head, json_args, format_offset(position))
        now = self._clock()
        self._events.append(Recorded(position, namespace, rooms_of(room), packet, now))
        self._trim(now)
        return position, packet

    def covers(self, offset: str) -> bool:
        """Whether every event after ``offset`` is still here."""
        position = parse_offset(offset)
        if position is None or position > self._last:
            return False
        self._trim(self._clock())
        return position >= self._trimmed

    def _trim(self, now: float) -> None:
        events, oldest = self._events, now - self.max_age
        while events and (len(events) > self.max_events or events[0].at < oldest):
            self._trimmed = events.popleft().position

    def since(self, namespace: str, offset: str, rooms: Iterable[str]) -> list[Recorded] | None:
        """The events after ``offset`` sent to any of ``rooms`` in ``namespace``, oldest first; None
        when the history no longer covers what came after ``offset`` (or it is no offset of ours)."""
        if not self.covers(offset):
            return None
        position = parse_offset(offset)
        assert position is not None
        wanted = set(rooms)
        return [
            event
            for event in self._events
            if event.position > position and event.namespace == namespace and not event.rooms.isdisjoint(wanted)
        ]


@dataclass(slots=True)
class Session:
    """A connection's recoverable state: ``rooms`` it is in, ``data`` the application keeps with it
    (for the service: whose it is), ``offset`` the history's position when it was opened (an
    offset to recover from when the client has received no event yet)."""

    pid: str
    sid: str
    namespace: str
    offset: str
    #: empty while the connection is open (a tuple: an empty list would be one more object per
    #: connection for the garbage collector), the rooms it was in once it went
    rooms: Sequence[str] = ()
    data: dict[str, Any] = field(default_factory=dict)
    #: when the connection went (None while it is open)
    gone_at: float | None = None


class MemorySessions:
    """Sessions by private id: kept while their connection is open, and ``window`` seconds after
    it went for a reason in :data:`RECOVERABLE_REASONS`."""

    def __init__(self, *, window: float, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._gone: deque[tuple[float, str]] = deque()  # (when, pid), oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session: Session) -> None:
        self._sessions[session.pid] = session

    def get(self, pid: str) -> Session | None:
        session = self._sessions.get(pid)
        if session is None or session.gone_at is None:
            return session
        if session.gone_at + self.window < self._clock():
            del self._sessions[pid]
            return None
        return session

    def closed(self, pid: str, sid: str, rooms: list[str], *, recoverable: bool) -> None:
        """The connection ``sid`` holding session ``pid`` went: kept for the window with its rooms
        when ``recoverable``, else forgotten. A session another connection has taken since (a
        recovery elsewhere) is left alone."""
        session = self._sessions.get(pid)
        if session is None or session.sid != sid:
            return
        if not recoverable:
            del self._sessions[pid]
            return
        session.rooms, session.gone_at = rooms, self._clock()
        self._gone.append((session.gone_at, pid))
        self._expire()

    def take(self, pid: str, sid: str) -> Session | None:
        """The session ``pid`` for the connection ``sid`` that recovers it (None: no such session,
        or its window passed); it is then that connection's."""
        session = self.get(pid)
        if session is None:
            return None
        session.sid, session.gone_at = sid, None
        return session

    def _expire(self) -> None:
        threshold = self._clock() - self.window
        gone = self._gone
        while gone and gone[0][0] < threshold:
            when, pid = gone.popleft()
            session = self._sessions.get(pid)
            if session is not None and session.gone_at == when:  # not recovered (nor gone again) since
                del self._sessions[pid]


class RecoveryUnavailable(RuntimeError):
    """The recovery's store (Redis) cannot be reached: the connection is connected afresh."""


class Recovery:
    """What the server asks of recovery (all awaitable, whether kept in memory or in Redis): the
    sessions by private id, and the history of what was sent to rooms."""

    window: float

    async def session(self, pid: str) -> Session | None:
        raise NotImplementedError

    async def open(self, session: Session) -> None:
        raise NotImplementedError

    async def take(self, pid: str, sid: str) -> Session | None:
        raise NotImplementedError

    async def closed(self, pid: str, sid: str, rooms: list[str], *, recoverable: bool) -> None:
        raise NotImplementedError

    async def rooms_changed(self, pid: str, rooms: list[str]) -> None:
        """The open session ``pid`` is now in ``rooms`` (kept where it outlives this process)."""

    async def covers(self, offset: str) -> bool:
        raise NotImplementedError

    async def since(self, namespace: str, offset: str, rooms: Iterable[str]) -> list[Recorded] | None:
        raise NotImplementedError

    async def last(self) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        """Stop what runs in the background."""


class MemoryRecovery(Recovery):
    """Recovery in this process's memory (one instance)."""

    def __init__(self, *, window: float, max_events: int, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.history = MemoryHistory(max_events=max_events, max_age=window, clock=clock)
        self.sessions = MemorySessions(window=window, clock=clock)

    async def session(self, pid: str) -> Session | None:
        return self.sessions.get(pid)

    async def open(self, session: Session) -> None:
        self.sessions.open(session)

    async def take(self, pid: str, sid: str) -> Session | None:
        return self.sessions.take(pid, sid)

    async def closed(self, pid: str, sid: str, rooms: list[str], *, recoverable: bool) -> None:
        self.sessions.closed(pid, sid, rooms, recoverable=recoverable)

    async def covers(self, offset: str) -> bool:
        return self.history.covers(offset)

    async def since(self, namespace: str, offset: str, rooms: Iterable[str]) -> list[Recorded] | None:
        return self.history.since(namespace, offset, rooms)

    async def last(self) -> str:
        return self.history.last()

    def append(self, namespace: str, room: Any, packet_head: str, json_args: str) -> tuple[tuple[int, int], str]:
        return self.history.append(namespace, room, packet_head, json_args)
