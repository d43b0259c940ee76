"""HTTP rate limits, per caller and per client address, with the ``limits`` library.

- **Per caller** (the token's ``sub``): ``HTTP_RATE_LIMIT_PER_USER`` (``20/second;600/minute``),
  or ``HTTP_RATE_LIMIT_PER_SERVICE`` (``200/second``) for tokens with ``JWT_SERVICE_ROLE``;
  checked once per request, right after the token (:func:`apps.api.deps.authenticate`), before
  the body is read.
- **Per address** (the client's address as uvicorn gives it: the forwarded one behind a proxy
  it trusts, ``FORWARDED_ALLOW_IPS``): ``HTTP_RATE_LIMIT_PER_ADDRESS`` (``300/second``), by
  :class:`AddressLimit` on every HTTP route but ``/health``, ``/ready`` and ``/metrics`` (probes
  and scrapes are never limited). Socket.IO's paths never reach it: the Socket.IO middleware is
  outside every HTTP middleware, and connections have limits of their own (per address, per
  user, per connection).

A refusal is ``429 RATE_LIMITED`` with ``Retry-After`` (whole seconds until the window has room)
and ``retry_after`` in the JSON body (browsers cannot read ``Retry-After`` across origins).

**Moving windows.** Each limit counts the requests of the last window (the last second, the last
minute) exactly, so no more than the limit ever pass in any window; a fixed window lets up to twice
the limit through around each window's boundary, and a burst would see its limit depend on where
in the window it began. The cost, a list of up to ``limit`` timestamps per caller and an atomic
Lua script per check, is small at these limits; ``Retry-After`` is exact (when the oldest request
of the window leaves it).

**Shared, and never failing a request.** With ``REDIS_URL`` the windows live in Redis (limits'
async Redis storage, on the backend's connection pool, keys under ``REDIS_KEY_PREFIX``), so the
limits hold across every instance. When Redis cannot be reached the request is not failed: the
limiter logs one warning, limits in this process's memory (each instance then on its own, as
without Redis) and checks Redis in the background once a second; once it answers, one line says
so and the shared windows are used again.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from apps.api.errors import error_body

logger = logging.getLogger(__name__)

#: Paths the per-address limit never applies to: liveness and readiness probes, the scrape.
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
#: Seconds between the starts of two passes that drop the in-memory windows' expired entries.
EXPIRY_INTERVAL = 1.0
#: Keys a hit looks at while a pass is under way (about a millisecond's work).
KEYS_PER_HIT = 1000
_STORAGE_ERRORS = (StorageError, RedisError, OSError, TimeoutError)


def parse_limits(text: str) -> list[RateLimitItem]:
    """``"20/second;600/minute"`` as limits' items; empty: none."""
    return parse_many(text) if text.strip() else []


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: ``retry_after`` whole seconds (at least 1) until the window has room."""

    limit: str
    retry_after: int

    @property
    def message(self) -> str:
        return f"Too many requests ({self.limit}); retry after {self.retry_after} s"


class QuietMemoryStorage(MemoryStorage):
    """limits' in-memory storage (the windows of an instance without Redis), with expired entries
    dropped by the hits themselves, a few keys at a time, in the event loop.

    limits 5.8's own starts a pass after every hit that finds none running, and the pass hands
    each key's search to a thread (``asyncio.to_thread``), one key after another: with a thousand
    callers in their windows it keeps a core busy for as long as requests arrive (measured: 1,000
    ms of CPU a second at 200 hits a second over 1,000 keys, against 60 with one key). Here a pass
    starts at most every :data:`EXPIRY_INTERVAL`, and each hit then looks at up to
    :data:`KEYS_PER_HIT` of its keys, so no hit holds the loop for long however many callers
    there are. Dropping expired entries only frees memory: a hit is decided by the entries inside
    the window, which a pass never touches. ``test_http_limits`` checks that limits still calls
    the step this replaces, and that a pass drops what limits' own would.
    """

    def __init__(self, *args: Any, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock
        self._next_pass = 0.0
        self._due: list[str] = []  # the keys the pass under way has yet to look at
        self.passes = 0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # limits' own, which every hit calls
        if not self._due:
            now = self._clock()
            if now < self._next_pass:
                return
            self._next_pass = now + EXPIRY_INTERVAL
            self._due = self._keys()
            self.passes += 1
        now = time.time()
        due = self._due
        for _ in range(min(KEYS_PER_HIT, len(due))):
            self._expire(due.pop(), now)

    def expire(self, now: float | None = None) -> None:
        """Drop everything that has expired by ``now`` (default: the time), at once."""
        now = time.time() if now is None else now
        for key in self._keys():
            self._expire(key, now)

    def _keys(self) -> list[str]:
        """Every key with a window or a counter, once."""
        return list(dict.fromkeys([*self.events, *self.expirations]))

    def _expire(self, key: str, now: float) -> None:
        """limits' own pass (``__expire_events``) for one key, with no thread and no await (no
        method of the storage awaits while it holds a key's lock, so none is held now)."""
        events = self.events.get(key)
        if events is not None:
            # newest first: the entries from ``cutoff`` on are out of every window
            cutoff = bisect.bisect_left(events, -now, key=lambda event: -event.expiry)
            if cutoff:
                del events[cutoff:]
            else:
                del self.events[key]
                self.locks.pop(key, None)
        expires = self.expirations.get(key)
        if expires is not None and expires <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)


class HttpLimiter:
    """The process's HTTP limits: in Redis through ``redis_client``'s pool when it is given, else
    (and while Redis is unreachable) in memory."""

    def __init__(
        self,
        *,
        per_user: str,
        per_service: str,
        per_address: str,
        service_role: str,
        redis_client: Any = None,
        key_prefix: str = "",
        probe_interval: float = 1.0,
    ) -> None:
        self._per_user = parse_limits(per_user)
        self._per_service = parse_limits(per_service)
        self._per_address = parse_limits(per_address)
        self._service_role = service_role
        self._memory = MovingWindowRateLimiter(QuietMemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        self._probe_interval = probe_interval
        self._probe: asyncio.Task[None] | None = None
        self.redis_down = False
        if redis_client is not None:
            storage = RedisStorage(
                "async+redis://",  # the URL is the backend's; this only selects the Redis flavour
                implementation="redispy",
                connection_pool=redis_client.connection_pool,
                wrap_exceptions=True,
                key_prefix=f"{key_prefix}ratelimit",
            )
            self._shared = MovingWindowRateLimiter(storage)

    @property
    def shared(self) -> bool:
        """Whether the limits are shared through Redis (when it can be reached)."""
        return self._shared is not None

    async def check_caller(self, user_id: UUID, roles: Collection[str]) -> Refusal | None:
        if self._service_role in roles:
            return await self._check(self._per_service, "service", str(user_id))
        return await self._check(self._per_user, "user", str(user_id))

    async def check_address(self, address: str) -> Refusal | None:
        return await self._check(self._per_address, "address", address)

    async def _check(self, items: list[RateLimitItem], *identifiers: str) -> Refusal | None:
        if not items:
            return None
        shared = self._shared
        if shared is not None and not self.redis_down:
            try:
                return await _hit(shared, items, identifiers)
            except _STORAGE_ERRORS as exc:
                self._lost(exc)
        return await _hit(self._memory, items, identifiers)

    def _lost(self, exc: BaseException) -> None:
        if self.redis_down:
            return
        self.redis_down = True
        logger.warning(
            "HTTP rate limits: Redis unreachable (%s); limiting in this instance's memory until it is back",
            type(exc.__cause__ or exc).__name__,
        )
        self._probe = asyncio.ensure_future(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        assert self._shared is not None
        storage = self._shared.storage
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                if await storage.check():  # a PING, bounded by the pool's socket timeout
                    break
            except _STORAGE_ERRORS:
                continue
        self.redis_down = False
        logger.info("HTTP rate limits: Redis reachable again; the limits are shared again")

    async def aclose(self) -> None:
        """Stop the background check (the connection pool is the backend's to close)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            try:
                await probe
            except asyncio.CancelledError:
                pass


async def _hit(
    limiter: MovingWindowRateLimiter, items: list[RateLimitItem], identifiers: Sequence[str]
) -> Refusal | None:
    for item in items:
        if not await limiter.hit(item, *identifiers):
            stats = await limiter.get_window_stats(item, *identifiers)
            wait = max(1, math.ceil(stats.reset_time - time.time()))
            return Refusal(str(item), min(wait, item.get_expiry()))
    return None


def client_address(scope: Scope) -> str:
    """The client's address as uvicorn gives it (behind a trusted proxy, the forwarded one)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def refusal_response(refusal: Refusal) -> JSONResponse:
    return JSONResponse(
        error_body("RATE_LIMITED", refusal.message, retry_after=refusal.retry_after),
        status_code=429,
        headers={"Retry-After": str(refusal.retry_after)},
    )


class AddressLimit:
    """ASGI middleware: the per-address limit on every HTTP request but :data:`EXEMPT_PATHS`."""

    def __init__(self, app: ASGIApp, *, limiter: Callable[[], HttpLimiter | None]) -> None:
        self.app = app
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self._limiter() if scope["type"] == "http" and scope["path"] not in EXEMPT_PATHS else None
        if limiter is not None:
            refusal = await limiter.check_address(client_address(scope))
            if refusal is not None:
                await refusal_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
