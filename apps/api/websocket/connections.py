"""The local table of live connections: who each one is, and its per-connection limits.

Pure data, no Socket.IO. One instance per server process; it only knows this instance's clients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from apps.api.websocket.auth import Principal


class TokenBucket:
    """``rate`` events a second on average, bursts of up to ``burst``."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass(slots=True)
class Connection:
    sid: str
    principal: Principal
    remote_addr: str
    limiter: TokenBucket
    expiry: Any = None  # asyncio.TimerHandle of the token-expiry disconnect, if any
    connected_at: float = field(default_factory=time.time)


class Connections:
    def __init__(self, *, events_per_second: float = 20, burst: float = 50) -> None:
        self._by_sid: dict[str, Connection] = {}
        self._rate = events_per_second
        self._burst = burst

    def add(self, sid: str, principal: Principal, remote_addr: str) -> Connection:
        conn = Connection(sid, principal, remote_addr, TokenBucket(self._rate, self._burst))
        self._by_sid[sid] = conn
        return conn

    def get(self, sid: str) -> Connection | None:
        return self._by_sid.get(sid)

    def remove(self, sid: str) -> Connection | None:
        conn = self._by_sid.pop(sid, None)
        if conn is not None and conn.expiry is not None:
            conn.expiry.cancel()
        return conn

    def __len__(self) -> int:
        return len(self._by_sid)

    def users(self) -> int:
        return len({c.principal.user_id for c in self._by_sid.values()})
