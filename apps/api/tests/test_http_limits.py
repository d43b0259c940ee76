"""HTTP rate limits (apps/api/http_limits.py): per caller after the token check, per client address
on every route but the probes and the scrape; moving windows shared by two instances through one
Redis; a Redis outage never turns a request into an error. Real servers, real Redis, real clients."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from uuid import uuid4

import httpx
import pytest
from pydantic import ValidationError

from apps.api.app import create_app
from apps.api.config import Settings
from apps.api.tests.redis_support import delete_prefix, isolation, own_redis
from apps.api.tests.support import (
    HIGH_HTTP_LIMITS,
    TEST_SECRET,
    WsClient,
    eventually,
    free_port,
    make_token,
    serve_in_process,
    start_server_process,
)
from apps.api.tests.support import test_settings as service_settings


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check_refusal(response: httpx.Response, *, window: int) -> int:
    """A 429 in the service's error shape, its Retry-After and retry_after the same whole seconds."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "RATE_LIMITED" and "retry after" in error["message"], error
    retry_after = int(response.headers["Retry-After"])
    assert error["retry_after"] == retry_after and 1 <= retry_after <= window, (error, retry_after)
    return retry_after


def test_the_defaults_and_the_notation():
    fields = Settings.model_fields
    assert fields["http_rate_limit_per_user"].default == "20/second;600/minute"
    assert fields["http_rate_limit_per_service"].default == "200/second"
    assert fields["http_rate_limit_per_address"].default == "300/second"
    for wrong in ("20/fortnight", "twenty", "20/second;"):
        with pytest.raises(ValidationError, match="is not a rate limit"):
            service_settings(http_rate_limit_per_user=wrong)
    assert service_settings(http_rate_limit_per_address=" 5 per minute ").http_rate_limit_per_address == "5 per minute"


async def test_a_burst_of_creations_is_limited_per_user_and_another_user_is_not():
    """200 creations at once by one user: the 10 of the window (10/minute) are created, the 190
    others are 429 with Retry-After and the JSON error; another user creates as usual."""
    app = create_app(service_settings(http_rate_limit_per_user="10/minute"))
    async with serve_in_process(app) as running, httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        burster = make_token()
        responses = await asyncio.gather(
            *(http.post("/api/v1/projects", json={"name": f"p{i}"}, headers=bearer(burster)) for i in range(200))
        )
        assert Counter(r.status_code for r in responses) == {201: 10, 429: 190}
        for response in responses:
            if response.status_code == 429:
                check_refusal(response, window=60)
        listed = await http.get("/api/v1/projects?limit=200", headers=bearer(make_token()))  # another user
        assert listed.status_code == 200
        # refused before the body is read: a bad body is 429 too, not 422
        refused = await http.post("/api/v1/projects", content=b"{not json", headers=bearer(burster))
        check_refusal(refused, window=60)
        other = make_token()
        created = await http.post("/api/v1/projects", json={"name": "mine"}, headers=bearer(other))
        assert created.status_code == 201, created.text
        # no token: 401 (the per-user limit follows the token check)
        assert (await http.post("/api/v1/projects", json={"name": "x"})).status_code == 401


async def test_services_have_a_limit_of_their_own():
    app = create_app(service_settings(http_rate_limit_per_user="2/minute", http_rate_limit_per_service="30/minute"))
    async with serve_in_process(app) as running, httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        user, service = make_token(), make_token(roles=["service"])
        by_user = [(await http.get("/api/v1/projects", headers=bearer(user))).status_code for _ in range(5)]
        by_service = [(await http.get("/api/v1/projects", headers=bearer(service))).status_code for _ in range(30)]
        assert by_user == [200, 200, 429, 429, 429]
        assert by_service == [200] * 30
        check_refusal(await http.get("/api/v1/projects", headers=bearer(service)), window=60)


async def test_the_address_limit_spares_the_probes_the_scrape_and_socketio():
    """Per client address, the forwarded one (uvicorn trusts the proxy on 127.0.0.1): 20 a minute
    from one address, then 429 on any route, with a token or without; another address is not
    affected; /health, /ready and /metrics are never limited, and Socket.IO connects as usual."""
    app = create_app(service_settings(http_rate_limit_per_address="20/minute"))
    async with serve_in_process(app) as running, httpx.AsyncClient(base_url=running.url, timeout=10) as http:
        one, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
        statuses = [(await http.get("/ws", headers=one)).status_code for _ in range(25)]
        assert statuses == [200] * 20 + [429] * 5
        check_refusal(await http.get("/api/v1/projects", headers={**one, **bearer(make_token())}), window=60)
        check_refusal(await http.post("/api/v1/projects", json={"name": "x"}, headers=one), window=60)  # no token
        for path in ("/health", "/ready", "/metrics"):
            assert all([(await http.get(path, headers=one)).status_code != 429 for _ in range(30)]), (
                f"{path} was limited"
            )
        assert (await http.get("/ws", headers=other)).status_code == 200
        client = WsClient(running.url)
        try:
            await client.connect(make_token(), headers=one)  # /socket.io/ is not an HTTP route of the API
            assert (await client.expect("connection_established"))["data"]["connection_id"] == client.sid
        finally:
            await client.close()
        # a browser on another origin can read the refusal (CORS headers on the 429 too)
        origin = {"Origin": "http://localhost:3000", **one}
        refused = await http.get("/ws", headers=origin)
        assert refused.status_code == 429
        assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_two_instances_on_one_redis_share_the_limit(redis_url):
    """The same user sends 100 requests to each of two instances at once: 10 a minute pass in all,
    not 10 on each."""
    tags = {k: v for k, v in isolation().items() if k != "DATABASE_URL"}  # a database each: they only read
    servers = []
    try:
        for _ in range(2):
            env = {
                "REDIS_URL": redis_url,
                "JWT_SECRET_KEY": TEST_SECRET,
                "LOG_FILE": "",
                "HOST": "127.0.0.1",
                "PORT": str(free_port()),
                **tags,
                **HIGH_HTTP_LIMITS,
                "HTTP_RATE_LIMIT_PER_USER": "10/minute",
            }
            servers.append(await start_server_process([sys.executable, "apps/api/main.py"], env=env))
        token = make_token(uuid4())

        async def burst(url: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                return await asyncio.gather(*(http.get("/api/v1/projects", headers=bearer(token)) for _ in range(100)))

        results = await asyncio.gather(*(burst(server.url) for server in servers))
        per_instance = [Counter(r.status_code for r in responses) for responses in results]
        assert sum(c[200] for c in per_instance) == 10, per_instance
        assert all(c[200] + c[429] == 100 for c in per_instance), per_instance
        for responses in results:
            for response in responses:
                if response.status_code == 429:
                    check_refusal(response, window=60)
    finally:
        for server in servers:
            await server.stop()
        await delete_prefix(redis_url, tags["REDIS_KEY_PREFIX"])


async def test_a_redis_outage_fails_no_request(caplog):
    """Redis killed under a running instance: requests are answered as usual (limited in the
    instance's memory meanwhile), one warning says so; once Redis is back, the limits are shared
    again and one line says so."""
    caplog.set_level(logging.INFO, logger="apps.api.http_limits")
    async with own_redis() as redis:
        settings = service_settings(redis_url=redis.url, http_rate_limit_per_user="5/minute", redis_timeout_seconds=1)
        app = create_app(settings)
        async with serve_in_process(app) as running, httpx.AsyncClient(base_url=running.url, timeout=10) as http:
            limiter = app.state.http_limits
            assert limiter.shared
            before = make_token()
            assert [(await http.get("/api/v1/projects", headers=bearer(before))).status_code for _ in range(6)] == [
                200
            ] * 5 + [429]

            await redis.stop()
            during = make_token()
            statuses = [(await http.get("/api/v1/projects", headers=bearer(during))).status_code for _ in range(8)]
            assert statuses == [200] * 5 + [429] * 3, statuses  # this instance's own window meanwhile
            unauthenticated = await http.get("/ws")
            assert unauthenticated.status_code == 200
            lost = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
            assert len(lost) == 1 and lost[0].levelno == logging.WARNING, [r.getMessage() for r in lost]
            assert limiter.redis_down

            await redis.start()

            async def shared_again() -> bool:
                return not limiter.redis_down

            await eventually(shared_again, what="the limiter using Redis again")
            # the shared window kept the first user's requests (Redis keeps its data across the restart)
            check_refusal(await http.get("/api/v1/projects", headers=bearer(before)), window=60)
            after = make_token()
            statuses = [(await http.get("/api/v1/projects", headers=bearer(after))).status_code for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            assert len([r for r in caplog.records if "Redis unreachable" in r.getMessage()]) == 1
            assert len([r for r in caplog.records if "Redis reachable again" in r.getMessage()]) == 1


async def test_the_in_memory_windows_expire_at_most_once_a_second_in_the_loop(monkeypatch: pytest.MonkeyPatch):
    """limits' own in-memory storage runs an expiry pass after every hit, with a thread hand-off
    per key (a core busy with a thousand callers in their windows); QuietMemoryStorage starts one
    at most once every EXPIRY_INTERVAL, and each hit takes a few of its keys, without a thread or
    a task. This fails if limits stops calling the step it replaces (its private
    ``__schedule_expiry``)."""
    from limits import parse
    from limits.aio.strategies import MovingWindowRateLimiter

    from apps.api import http_limits
    from apps.api.http_limits import EXPIRY_INTERVAL, QuietMemoryStorage

    async def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("the in-memory limiter handed work to a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    monkeypatch.setattr(http_limits, "KEYS_PER_HIT", 2)
    clock = [1000.0]
    storage = QuietMemoryStorage(clock=lambda: clock[0])
    limiter = MovingWindowRateLimiter(storage)
    per_second, per_minute = parse("1/second"), parse("2/minute")
    tasks = len(asyncio.all_tasks())
    assert await limiter.hit(per_minute, "b")
    assert await limiter.hit(per_minute, "b")
    assert not await limiter.hit(per_minute, "b")  # a moving window, as limits' own
    assert storage.passes == 1  # one pass, started by the first hit
    for caller in range(5):
        assert await limiter.hit(per_second, f"a{caller}")
    assert storage.passes == 1  # none within the interval
    assert storage.timer is None and len(asyncio.all_tasks()) == tasks  # limits' own pass is a task
    # the next pass: each hit looks at two keys, and drops what has expired
    monkeypatch.setattr(http_limits.time, "time", lambda real=time.time: real() + 5)
    clock[0] += EXPIRY_INTERVAL
    assert not await limiter.hit(per_minute, "b")  # still in its window: the entries stay
    assert storage.passes == 2
    assert len(storage.events) == 4  # two of the six keys looked at: one expired, gone
    assert not await limiter.hit(per_minute, "b")
    assert not await limiter.hit(per_minute, "b")
    assert set(storage.events) == {per_minute.key_for("b")}
    assert storage.passes == 2


async def test_a_pass_drops_what_limits_own_pass_drops():
    """Entry for entry and counter for counter, against limits' ``__expire_events`` on the same
    contents (a window partly expired, wholly expired, not at all, empty; counters either side)."""
    from limits.aio.storage import MemoryStorage
    from limits.aio.storage.memory import Entry

    from apps.api.http_limits import QuietMemoryStorage

    now = time.time()

    def entries(*expiries: float) -> list[Entry]:  # newest first, as the storage keeps them
        made = []
        for expiry in sorted(expiries, reverse=True):
            entry = Entry(60)
            entry.expiry = now + expiry
            made.append(entry)
        return made

    def fill(storage: MemoryStorage) -> MemoryStorage:
        storage.events.update(
            mixed=entries(100, 50, -5, -50), gone=entries(-5, -10), kept=entries(100), empty=entries()
        )
        storage.storage.update(old=3, new=4)
        storage.expirations.update(old=now - 1, new=now + 100)
        for key in ("mixed", "gone", "old"):
            storage.locks[key]  # a defaultdict: this creates the key's lock
        return storage

    def contents(storage: MemoryStorage) -> tuple[object, ...]:
        events = {key: [round(entry.expiry - now) for entry in found] for key, found in storage.events.items()}
        return events, dict(storage.storage), dict(storage.expirations)

    ours, theirs = fill(QuietMemoryStorage()), fill(MemoryStorage())
    ours.expire(now)
    await theirs._MemoryStorage__expire_events()  # type: ignore[attr-defined]
    assert contents(ours) == contents(theirs)
    assert contents(ours)[0] == {"mixed": [100, 50], "kept": [100]}
    # no lock is left for a key that went (limits' own also makes one for each key it looked at)
    assert set(ours.locks) == {"mixed"} and set(ours.locks) <= set(theirs.locks)


async def test_the_in_memory_windows_decide_as_limits_own_do():
    """Only the expiry differs: hit for hit, the same decisions as limits' MemoryStorage."""
    import random

    from limits import parse
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    from apps.api.http_limits import QuietMemoryStorage

    ours, theirs = MovingWindowRateLimiter(QuietMemoryStorage()), MovingWindowRateLimiter(MemoryStorage())
    items = [parse("3/minute"), parse("5/hour"), parse("1/day")]
    rng = random.Random(12)  # noqa: S311 (a fixed sequence of callers, not a secret)
    decisions = []
    for _ in range(600):
        item, key = rng.choice(items), f"caller-{rng.randrange(40)}"
        decisions.append((await ours.hit(item, key), await theirs.hit(item, key)))
    assert all(a == b for a, b in decisions)
    assert 0 < sum(a for a, _ in decisions) < len(decisions)  # some allowed, some refused
