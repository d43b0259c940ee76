"""Connection state recovery across instances: the history in a Redis stream, the sessions in
Redis keys, so that a client recovers on any instance, its own one killed or not.

- **The history** is one stream (``stream``), every event sent to rooms an entry: ``n`` its
  namespace, ``r`` its rooms (JSON), ``b`` its packet without the closing ``]``. An entry's id is
  the event's offset (the client gets ``<body>,"<id>"]``). One Lua script adds the entry (trimmed to
  ``max_events``, approximately, and to the window by age) and publishes the packet on the channel,
  so the channel's order is the stream's: every instance delivers in offset order, the publishing
  one too (it delivers what comes back from the channel, not before).
- **The sessions** are keys ``<sessions_prefix><pid>`` holding JSON: written when a connection
  opens, and again as its rooms change (before ``subscribe`` is answered), and kept alive
  while it is open (every third of the window); when it goes, its key lives for the window. A
  connection whose instance was killed left its key as last written: it lives at most the window
  after the last refresh.
- A recovery reads the entries after the client's offset (which must still be in the stream:
  trimming removes from the oldest), and takes the session in one script (the session names the
  connection holding it, so a late close of the old connection leaves it alone).

Redis errors raise :class:`~apps.transport.recovery.RecoveryUnavailable`: the client is then
connected afresh (``recovered`` false), and nothing else fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from redis import asyncio as aioredis

from apps.transport.recovery import Recorded, Recovery, RecoveryUnavailable, Session, parse_offset, stamped

logger = logging.getLogger(__name__)

#: How often the background task runs: sessions Redis could not take are written again, and (every
#: third of the window) every open session's key is kept alive.
FLUSH_SECONDS = 1.0
_ERRORS = (aioredis.RedisError, OSError, TimeoutError)

#: Adds an event to the stream and publishes its packet, with its id, on the channel; once per
#: event key (KEYS[2], kept ARGV[7] ms): a publish retried after an answer was lost does nothing.
#: KEYS[1] stream; ARGV: channel, max events, min id (ms), namespace, rooms (JSON), body (with
#: :data:`ID` where the id goes, filled in when it is read), the key's lifetime, then the number
#: of pieces of the channel message and the pieces: the message is the pieces joined by the id.
PUBLISH_RECORDED = """
if KEYS[2] ~= '' then
  local first = redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[7])
  if not first then return 'duplicate' end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[4], 'r', ARGV[5], 'b', ARGV[6])
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3])
local count = tonumber(ARGV[8])
local pieces = {}
for i = 1, count do
  pieces[#pieces + 1] = ARGV[8 + i]
  if i < count then pieces[#pieces + 1] = id end
end
redis.call('PUBLISH', ARGV[1], table.concat(pieces))
return id
"""

#: Gives the session to the connection ARGV[1] (returns it as it was), kept ARGV[2] ms.
TAKE_SESSION = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local session = cjson.decode(raw)
session['sid'] = ARGV[1]
session['gone_at'] = 0
redis.call('SET', KEYS[1], cjson.encode(session), 'PX', ARGV[2])
return raw
"""

#: The connection ARGV[1] holding the session went: kept ARGV[3] ms with rooms ARGV[2] (JSON) and
#: gone_at ARGV[4], or deleted when ARGV[3] is 0. Another connection's session is left alone.
CLOSE_SESSION = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local session = cjson.decode(raw)
if session['sid'] ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
  return 1
end
session['rooms'] = cjson.decode(ARGV[2])
session['gone_at'] = tonumber(ARGV[4])
redis.call('SET', KEYS[1], cjson.encode(session), 'PX', ARGV[3])
return 1
"""

#: Where an event's id goes in what is written before Redis gives it (NUL never is in JSON text).
ID = "\x00ID\x00"
_ID_JSON = json.dumps(ID)[1:-1]  # as it reads inside a JSON string


def recorded_body(head: str, json_args: str) -> str:
    """The packet of an event whose id is not known yet, without its last argument and ``]``: its
    argument stamped with :data:`ID` (see recovery.stamped)."""
    return head + stamped(json_args, ID)


def recorded_message(method: str, body: str, namespace: str, room: Any, host_id: str) -> tuple[str, ...]:
    """The channel message for an event whose id is not known yet, cut where the id goes: in the
    body (``recorded_body``), after it (``<body>,"<id>"]``) and as ``offset``."""
    text = json.dumps(
        {
            "method": method,
            "packet": f'{body},"{ID}"]',
            "offset": ID,
            "namespace": namespace,
            "room": room,
            "host_id": host_id,
        },
        separators=(",", ":"),
    )
    return tuple(text.split(_ID_JSON))


def _session_json(session: Session) -> str:
    data = asdict(session)
    data["gone_at"] = data["gone_at"] or 0
    return json.dumps(data, separators=(",", ":"))


def _session(raw: Any) -> Session | None:
    try:
        data = json.loads(raw)
        return Session(
            pid=str(data["pid"]),
            sid=str(data["sid"]),
            namespace=str(data["namespace"]),
            offset=str(data["offset"]),
            rooms=[str(room) for room in data.get("rooms", [])],
            data=dict(data.get("data") or {}),
            gone_at=float(data["gone_at"]) or None,
        )
    except (ValueError, KeyError, TypeError):
        return None


class RedisRecovery(Recovery):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str,
        sessions_prefix: str,
        window: float,
        max_events: int,
        timeout: float = 2.0,
    ) -> None:
        self.client = client
        self.stream = stream
        self.sessions_prefix = sessions_prefix
        self.window = window
        self.max_events = max_events
        self.timeout = timeout
        self._publish = client.register_script(PUBLISH_RECORDED)
        self._take = client.register_script(TAKE_SESSION)
        self._close = client.register_script(CLOSE_SESSION)
        self._open: dict[str, Session] = {}  # this instance's open sessions, by pid
        self._dirty: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def _open_ttl_ms(self) -> int:
        return int(self.window * 1000 + self.window * 1000 / 3 + 1000)

    def _key(self, pid: str) -> str:
        return self.sessions_prefix + pid

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except _ERRORS as exc:
            raise RecoveryUnavailable(f"Redis: {what}: {type(exc).__name__}") from None

    # --- publishing -----------------------------------------------------------------------

    async def publish(
        self, channel: str, body: str, namespace: str, room: Any, message: tuple[str, ...], key: str = ""
    ) -> str:
        """Add the event to the stream and publish it on ``channel``, once per ``key`` (an event
        id: a retry is a no-op); returns its offset (``duplicate`` for a retry). Raises what the
        client raises (the caller turns it into its own error)."""
        min_id = int((time.time() - self.window) * 1000)
        rooms = json.dumps(sorted({room} if isinstance(room, str) else set(room or ())))
        once = f"{self.stream}:published:{key}" if key else ""
        offset = await self._publish(
            keys=[self.stream, once],
            args=[
                channel,
                self.max_events,
                min_id,
                namespace,
                rooms,
                body,
                int(self.window * 1000) + 60_000,
                len(message),
                *message,
            ],
        )
        return offset.decode() if isinstance(offset, bytes) else str(offset)

    async def entries_after(self, offset: str, count: int | None = None) -> list[Recorded]:
        """The entries of the history after ``offset``, oldest first (at most ``count``), each
        with its packet as clients get it (its offset filled in). Unreadable entries are left out."""
        entries = await self._call("read history", self.client.xrange(self.stream, f"({offset}", "+", count=count))
        out = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            position = parse_offset(entry_id)
            try:
                namespace = fields[b"n"].decode()
                rooms = frozenset(json.loads(fields[b"r"]))
                body = fields[b"b"].decode().replace(ID, entry_id)
            except (KeyError, ValueError, TypeError, UnicodeDecodeError):
                continue
            if position is not None:
                out.append(Recorded(position, namespace, rooms, f'{body},"{entry_id}"]', 0.0))
        return out

    # --- sessions -------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._keep_sessions())

    async def session(self, pid: str) -> Session | None:
        if len(pid) > 64:
            return None
        return _session(await self._call("get session", self.client.get(self._key(pid))))

    async def open(self, session: Session) -> None:
        self._open[session.pid] = session
        self._start()
        await self._call(
            "open session", self.client.set(self._key(session.pid), _session_json(session), px=self._open_ttl_ms)
        )

    async def take(self, pid: str, sid: str) -> Session | None:
        raw = await self._call("take session", self._take(keys=[self._key(pid)], args=[sid, self._open_ttl_ms]))
        session = _session(raw) if raw else None
        if session is None:
            return None
        session.sid, session.gone_at = sid, None
        self._open[pid] = session
        self._start()
        return session

    async def closed(self, pid: str, sid: str, rooms: list[str], *, recoverable: bool) -> None:
        session = self._open.get(pid)
        if session is not None and session.sid == sid:
            del self._open[pid]
            self._dirty.discard(pid)
        ttl = int(self.window * 1000) if recoverable else 0
        await self._call(
            "close session",
            self._close(keys=[self._key(pid)], args=[sid, json.dumps(rooms), ttl, time.time()]),
        )

    async def rooms_changed(self, pid: str, rooms: list[str]) -> None:
        """Written at once: a room whose ``subscribe`` was answered is in the session, whatever
        happens to this instance next. Retried by the background task when Redis cannot take it."""
        session = self._open.get(pid)
        if session is None:
            return
        session.rooms = rooms
        try:
            await self._call(
                "write session", self.client.set(self._key(pid), _session_json(session), px=self._open_ttl_ms)
            )
        except RecoveryUnavailable:
            self._dirty.add(pid)
            raise

    async def _keep_sessions(self) -> None:
        """Write the rooms of sessions that changed, and keep every open session's key alive."""
        refresh_every = max(self.window / 3, FLUSH_SECONDS)
        refreshed = time.monotonic()
        while self._open or self._dirty:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                dirty, self._dirty = self._dirty, set()
                refresh = time.monotonic() - refreshed >= refresh_every
                if not dirty and not refresh:
                    continue
                async with self.client.pipeline(transaction=False) as pipe:
                    for pid in dirty:
                        session = self._open.get(pid)
                        if session is not None:
                            pipe.set(self._key(pid), _session_json(session), px=self._open_ttl_ms)
                    if refresh:
                        refreshed = time.monotonic()
                        for pid in self._open:
                            pipe.pexpire(self._key(pid), self._open_ttl_ms)
                    await asyncio.wait_for(pipe.execute(), self.timeout)
            except _ERRORS as exc:
                logger.warning("connection state recovery: sessions not written to Redis (%s)", type(exc).__name__)
                self._dirty |= dirty
            except asyncio.CancelledError:
                raise

    # --- history --------------------------------------------------------------------------

    async def covers(self, offset: str) -> bool:
        position = parse_offset(offset)
        if position is None:
            return False
        if position == (0, 0):  # no event had been sent when the session opened
            info = await self._info()
            return info is None or int(info.get("entries-added", 0)) == int(info.get("length", 0))
        found = await self._call("read history", self.client.xrange(self.stream, offset, offset, count=1))
        return bool(found)

    async def _info(self) -> dict[str, Any] | None:
        try:
            info = await self._call("read history", self.client.xinfo_stream(self.stream))
        except RecoveryUnavailable:
            exists = await self._call("read history", self.client.exists(self.stream))
            if not exists:
                return None
            raise
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}

    async def since(self, namespace: str, offset: str, rooms: Iterable[str]) -> list[Recorded] | None:
        if not await self.covers(offset):
            return None
        wanted = set(rooms)
        entries = await self.entries_after(offset, count=self.max_events + 1000)
        missed = [entry for entry in entries if entry.namespace == namespace and not entry.rooms.isdisjoint(wanted)]
        if not await self.covers(offset):  # trimmed while it was read
            return None
        return missed

    async def last(self) -> str:
        info = await self._info()
        if info is None:
            return "0-0"
        last = info.get("last-generated-id", b"0-0")
        return last.decode() if isinstance(last, bytes) else str(last)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
