"""The local table of live connections: who each one is, and its per-connection limits.

Pure data, no Socket.IO. One instance per server process; it only knows this instance's clients.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from uuid import UUID

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

    def retry_after(self) -> float:
        """Seconds until :meth:`take` succeeds again (0 when it would now)."""
        missing = 1 - min(self.burst, self._tokens + (time.monotonic() - self._stamp) * self.rate)
        return max(missing, 0) / self.rate if self.rate > 0 else float("inf")


@dataclass(slots=True)
class Connection:
    sid: str
    principal: Principal  # replaced when the client hands a fresh token over (auth:refresh)
    remote_addr: str
    limiter: TokenBucket
    #: Refusals of the limiter a connection may run up (a burst, then a rate) before it is closed.
    overruns: TokenBucket
    closing: bool = False  # told why and being closed by the server
    connected_at: float = field(default_factory=time.time)


class Connections:
    """This instance's connections, by sid, with a count per user."""

    def __init__(
        self,
        *,
        events_per_second: float = 20,
        burst: float = 50,
        overruns_per_second: float = 5,
        overrun_burst: float = 100,
    ) -> None:
        self._by_sid: dict[str, Connection] = {}
        self._per_user: dict[UUID, int] = {}
        self._rate = events_per_second
        self._burst = burst
        self._overrun_rate = overruns_per_second
        self._overrun_burst = overrun_burst

    def add(self, sid: str, principal: Principal, remote_addr: str) -> Connection:
        conn = Connection(
            sid,
            principal,
            remote_addr,
            TokenBucket(self._rate, self._burst),
            TokenBucket(self._overrun_rate, self._overrun_burst),
        )
        self._by_sid[sid] = conn
        user = principal.user_id
        self._per_user[user] = self._per_user.get(user, 0) + 1
        return conn

    def get(self, sid: str) -> Connection | None:
        return self._by_sid.get(sid)

    def remove(self, sid: str) -> Connection | None:
        conn = self._by_sid.pop(sid, None)
        if conn is not None:
            user = conn.principal.user_id
            left = self._per_user.get(user, 1) - 1
            if left > 0:
                self._per_user[user] = left
            else:
                self._per_user.pop(user, None)
        return conn

    def of_user(self, user_id: UUID) -> int:
        """How many connections ``user_id`` has on this instance."""
        return self._per_user.get(user_id, 0)

    def __len__(self) -> int:
        return len(self._by_sid)

    def users(self) -> int:
        return len(self._per_user)


class AddressRates:
    """New connections per remote address: a token bucket for each of the ``max_addresses``
    addresses seen last (the least recently seen is forgotten first: it has had time to refill)."""

    def __init__(self, rate: float, burst: float, *, max_addresses: int = 100_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, address: str) -> float | None:
        """None when a connection from ``address`` may open now; else the seconds to wait."""
        if self._rate <= 0:
            return None
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        return None if bucket.take() else bucket.retry_after()
