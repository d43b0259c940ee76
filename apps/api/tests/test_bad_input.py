"""Bad input, in bulk: more than 10,000 malformed or hostile inputs against one real server,
each answered as WEBSOCKET_API.md says, none of them noticed by anyone else.

1. client events with every kind of wrong payload, over one python-socketio client: each gets an
   ack ``{status: "error", code, message}`` with a documented code within a bounded time;
2. connect auth: garbage tokens and auth payloads are refused (``connect_error`` with
   ``AUTH_FAILED`` and a documented ``reason``), never accepted;
3. raw Engine.IO / Socket.IO frames over plain WebSockets: the connection is closed or the packet
   refused (or handled), and the connection then answers a ping or is closed; never a hang;
4. HTTP: malformed bodies, query parameters and path ids get a 4xx in the JSON error shape,
   never a 5xx;
5. all along and at the end, a control client keeps receiving its events and ``/health`` is 200.

Inputs come from ``random.Random`` with fixed seeds plus hand-written hostile values, so every run
sends the same ones.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx
import jwt
import pytest
import socketio
import websockets

from apps.api.app import create_app
from apps.api.tests.support import (
    ISSUED_TOKENS,
    NAMESPACE,
    TEST_SECRET,
    RunningServer,
    WsClient,
    create_project,
    eventually,
    make_token,
    serve_in_process,
)
from apps.api.tests.support import test_settings as settings_for
from apps.api.websocket.rooms import RoomError, RoomKind, parse_room

#: Inputs sent, by category; the last test checks the total.
COUNTS: Counter[str] = Counter()
CATEGORIES = ("client_events", "connect_auth", "raw_frames", "http")
#: Every wait is bounded by this (seconds): silence longer than this is a hang.
ANSWER_TIMEOUT = 5.0

EVENT_CODES = {
    "subscribe": {"INVALID_ROOM", "ROOM_ACCESS_DENIED", "ROOM_LIMIT", "INVALID_REQUEST"},
    "unsubscribe": {"INVALID_ROOM", "INVALID_REQUEST"},
    "auth:refresh": {"AUTH_FAILED", "INVALID_REQUEST"},
}
AUTH_REASONS = {
    "missing",
    "malformed",
    "bad_signature",
    "bad_algorithm",
    "expired",
    "not_yet_valid",
    "missing_claim",
    "bad_issuer",
    "bad_audience",
    "invalid_subject",
    "invalid_claim",
    "unknown_key",
}
HANDLED_EVENTS = ("subscribe", "unsubscribe", "debug:rooms", "ping", "auth:refresh")
RESERVED_EVENTS = ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener")


def _rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 -- reproducible inputs, not secrets


# --- hostile values ----------------------------------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\x00" * 64,
    "\n\r\t\x0b\x0c",
    "\u202e\u2066evil\u2069",  # bidi overrides
    "\ufeff",  # BOM
    "\u200b" * 10,  # zero-width spaces
    "null",
    "undefined",
    "NaN",
    "[object Object]",
    "{}",
    "[]",
    '{"room":"global"}',
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "%00",
    "%2e%2e%2f",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "\\",
    '"',
    "😀" * 20,
    "\U0001d518\U0001d52b\U0001d526\U0001d520",  # Fraktur letters
    "ÅÄÖ åäö ß",
    "日本語",
    "x" * 65,
    "x" * 10_000,
    "global " * 20,
    "role:admin",
    "user",
    "user:",
    "user::",
    "project:not-a-uuid",
    "project:" + "0" * 36,
    "project:12345678-1234-1234-1234-1234567890123",
    "project:12345678-1234-1234-1234-12345678901",
    "project:12345678-1234-1234-1234-12345678901g",
    "agent:" + "-" * 36,
    "agent: ",
    "global:" + str(UUID(int=1)),
    "global:",
    "GLOBAL",
    "Global",
    " global",
    "global\x00",
    "team:" + str(UUID(int=2)),
    "USER:" + str(UUID(int=3)),
    "Project:" + str(UUID(int=4)),
    "user :" + str(UUID(int=5)),
    ":" + str(UUID(int=6)),
    "agent:" + str(UUID(int=7)) + "\x00",
    "agent:" + str(UUID(int=8)) + " extra",
    "agent:" + str(UUID(int=9)) + ":x",
]

CHAR_POOLS = [
    string.ascii_letters + string.digits,
    string.printable,
    "".join(chr(c) for c in range(0, 32)),
    "\u0300\u0301\u0302\u200d\u202e\u2028\u2029\ufeff\ufffd\uffff",
    "ąčęėįšųūž日本語한국어العربيةעברית😀🙈🎉",
    ":-{}[]\"'\\/ ",
]


def random_text(rng: random.Random, max_len: int = 40) -> str:
    pool = rng.choice(CHAR_POOLS)
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, max_len)))


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64, 10**30, rng.randint(-(10**6), 10**6)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e308, -1e-308, 3.14, rng.uniform(-1e6, 1e6)])
    if kind == 4:
        return rng.choice(NASTY_STRINGS)
    if kind == 5:
        return str(uuid4()) if rng.random() < 0.5 else str(uuid4()).upper()
    return random_text(rng)


def random_json(rng: random.Random, depth: int = 3) -> Any:
    """A JSON-ish value (no NaN: the Socket.IO packet itself must stay valid JSON)."""
    if depth <= 0 or rng.random() < 0.45:
        return random_scalar(rng)
    if rng.random() < 0.5:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    keys = ["room", "token", "data", "id", "", "__proto__", "constructor"] + [random_text(rng, 8) for _ in range(3)]
    return {rng.choice(keys): random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def hostile_rooms(rng: random.Random, me: UUID) -> Iterable[Any]:
    """Room names built to be almost right."""
    prefixes = ["user", "project", "agent", "global", "role", "team", "", "USER", "Agent", " user", "user ", "ws"]
    separators = [":", "::", " :", ": ", "", "/", "\x00", "\uff1a"]  # the last one a full-width colon
    ids = [
        "not-a-uuid",
        str(uuid4())[:-1],
        str(uuid4()) + "0",
        str(uuid4()).replace("-", "_"),
        str(uuid4()).replace("a", "g"),
        "",
        " ",
        "null",
        "0",
        "{" + str(uuid4()),
        "x" * 100,
        "\u0660" * 8 + "-" + "x" * 27,  # Arabic-Indic digits
    ]
    while True:
        yield rng.choice(prefixes) + rng.choice(separators) + rng.choice(ids)
        yield f"user:{uuid4()}"  # another user's room
        yield f"project:{uuid4()}"  # a project nobody made them a member of


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, payload: bytes, secret: str = TEST_SECRET) -> str:
    """A JWT of any header and payload bytes, with a valid HS256 signature by ``secret``."""
    head = f"{b64(header)}.{b64(payload)}"
    token = f"{head}.{b64(hmac.new(secret.encode(), head.encode(), hashlib.sha256).digest())}"
    ISSUED_TOKENS.add(token)  # no log may show it either
    return token


def _tamper(token: str) -> str:
    head, _, signature = token.rpartition(".")
    middle = len(signature) // 2
    swapped = "A" if signature[middle] != "A" else "B"
    return f"{head}.{signature[:middle]}{swapped}{signature[middle + 1 :]}"


def hostile_tokens(rng: random.Random, me: UUID) -> list[tuple[str, str | None]]:
    """(token, the reason it must be refused with, or None for any documented reason)."""
    now = int(time.time())
    good_header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    good_claims = {"sub": str(me), "exp": now + 3600}

    def claimed(**claims: Any) -> str:
        """Correctly signed, with these claims (of any type; None kept as null) over good ones."""
        return signed(good_header, json.dumps({**good_claims, **claims}).encode())

    tokens: list[tuple[str, str | None]] = [
        (jwt.encode(good_claims, key="", algorithm="none"), "bad_algorithm"),
        (b64(b'{"alg":"none"}') + "." + b64(json.dumps(good_claims).encode()) + ".", "bad_algorithm"),
        (b64(b'{"alg":"NONE","typ":"JWT"}') + "." + b64(json.dumps(good_claims).encode()) + ".", "bad_algorithm"),
        (_tamper(make_token(me)), "bad_signature"),
        (make_token(me, secret="another-secret-" + "fedcba9876543210" * 4), "bad_signature"),
        (make_token(me, algorithm="HS384"), "bad_algorithm"),
        (make_token(me, algorithm="HS512"), "bad_algorithm"),
        (signed(b'{"alg":"RS256"}', json.dumps(good_claims).encode()), "bad_algorithm"),
        (signed(b'{"alg":["HS256"]}', json.dumps(good_claims).encode()), "bad_algorithm"),
        (signed(b'{"alg":null}', json.dumps(good_claims).encode()), "bad_algorithm"),
        (signed(b'{"alg":"HS256","kid":5}', json.dumps(good_claims).encode()), "malformed"),
        (signed(b'{"alg":"HS256","kid":{"a":1}}', json.dumps(good_claims).encode()), "malformed"),
        (signed(b"[1,2,3]", json.dumps(good_claims).encode()), "malformed"),
        (signed(b'"HS256"', json.dumps(good_claims).encode()), "malformed"),
        (signed(good_header, b"[1,2,3]"), "malformed"),
        (signed(good_header, b"null"), "malformed"),
        (signed(good_header, b"\xff\xfe\x00garbage"), "malformed"),
        (signed(good_header, b"{" * 50), "malformed"),
        (signed(good_header, b'{"sub":' + b"[" * 2500 + b"]" * 2500 + b"}"), None),
        (b64(b"[" * 3000 + b"]" * 3000) + ".e30.sig", "malformed"),
        (make_token(me, ttl=-3600), "expired"),
        (make_token(me, ttl=-1), "expired"),
        (make_token(me, nbf=now + 3600), "not_yet_valid"),
        (make_token(me, iat=now + 3600), "not_yet_valid"),
        (claimed(exp="9999999999"), "invalid_claim"),
        (claimed(exp=True), "invalid_claim"),
        (claimed(exp=[now + 3600]), "invalid_claim"),
        (claimed(exp={"at": now + 3600}), "invalid_claim"),
        (claimed(exp=10**20), "invalid_claim"),
        (claimed(exp=-1), "invalid_claim"),
        (claimed(exp=1e400), "invalid_claim"),  # json writes Infinity
        (claimed(exp=None), "missing_claim"),
        (claimed(nbf="yesterday"), "invalid_claim"),
        (claimed(iat=[]), "invalid_claim"),
        (claimed(roles="admin"), "invalid_claim"),
        (claimed(roles=[1, 2]), "invalid_claim"),
        (claimed(roles=[["admin"]]), "invalid_claim"),
        (claimed(roles={"admin": True}), "invalid_claim"),
        (claimed(roles=None), "invalid_claim"),
        (make_token("not-a-uuid"), "invalid_subject"),
        (claimed(sub=123), "invalid_subject"),
        (claimed(sub=["x"]), "invalid_subject"),
        (claimed(sub=None), None),
        (claimed(sub=str(me) + "0"), "invalid_subject"),
        (jwt.encode({"sub": str(me)}, TEST_SECRET, algorithm="HS256"), "missing_claim"),
        (jwt.encode({"exp": now + 3600}, TEST_SECRET, algorithm="HS256"), "missing_claim"),
        (make_token(me, pad="x" * 9000), "malformed"),  # over 8 KB
        ("x" * 8193, "malformed"),
        ("a.b.c" * 2000, "malformed"),
        ("Bearer " + make_token(me, ttl=-5), None),
        ("not a jwt", "malformed"),
        ("...", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d.e", "malformed"),
        ("\x00", "malformed"),
        ("日本.語.😀", "malformed"),
        ("eyJ.eyJ.eyJ", "malformed"),
    ]
    ISSUED_TOKENS.update(token for token, _ in tokens)
    alphabet = string.ascii_letters + string.digits + "-_=+/."
    while len(tokens) < 220:
        kind = rng.randrange(4)
        if kind == 0:  # three random base64url segments
            parts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3)]
            tokens.append((".".join(parts), None))
        elif kind == 1:  # a real token with random bytes flipped
            raw = list(make_token(me))
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(raw) - 1)  # the signature's last character may carry padding bits only
                raw[at] = rng.choice(alphabet.replace(raw[at], ""))
            tokens.append(("".join(raw), None))
        elif kind == 2:  # correctly signed, random claims
            claims = random_json(rng, 2)
            payload = json.dumps(claims if isinstance(claims, dict) else {"sub": claims}).encode()
            tokens.append((signed(good_header, payload), None))
        else:  # random text
            tokens.append((random_text(rng, 80) or "x", None))
    return tokens


# --- the server --------------------------------------------------------------------------------


@dataclass
class Env:
    server: RunningServer
    http: httpx.AsyncClient
    user: UUID
    token: str
    service_headers: dict[str, str]
    project_id: str
    other_project_id: str
    control: WsClient
    control_user: UUID

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[Env]:
    settings = settings_for(
        client_events_per_second=1_000_000,
        client_event_burst=1_000_000,
        client_event_overrun_burst=1_000_000,
        connects_per_second_per_address=0,
        max_connections_per_user=10_000,
        max_rooms_per_connection=1000,
        connect_timeout_seconds=30,
        http_rate_limit_per_user="",
        http_rate_limit_per_service="",
        http_rate_limit_per_address="",
    )
    async with (
        serve_in_process(create_app(settings)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):

        async def healthy() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return (await http.get("/health")).status_code == 200
            return False

        await eventually(healthy, what="GET /health answering 200")  # the lifespan has run
        user, control_user = uuid4(), uuid4()
        token = make_token(user)
        control = WsClient(server.url)
        await control.connect(make_token(control_user))
        await control.expect("connection_established")
        env = Env(
            server=server,
            http=http,
            user=user,
            token=token,
            service_headers={"Authorization": f"Bearer {make_token(roles=['service'])}"},
            project_id=await create_project(http, token, "mine"),
            other_project_id=await create_project(http, make_token(uuid4()), "someone else's"),
            control=control,
            control_user=control_user,
        )
        await check_control(env)
        try:
            yield env
        finally:
            await control.close()


async def check_control(env: Env) -> None:
    """The control client receives an event published for it now, and /health is 200."""
    workflow = str(uuid4())
    body = {"type": "workflow.started", "data": {"workflow_id": workflow, "user_id": str(env.control_user)}}
    response = await env.http.post("/api/v1/events", json=body, headers=env.service_headers)
    assert response.status_code == 202, response.text
    async with asyncio.timeout(ANSWER_TIMEOUT):
        while (await env.control.expect("workflow.started"))["data"]["workflow_id"] != workflow:
            pass
    assert env.control.sio.connected
    health = await env.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text


@contextlib.asynccontextmanager
async def control_checked(env: Env) -> AsyncIterator[None]:
    """Check the control client every 0.3 s while the body runs, and once more after it."""
    done = asyncio.Event()
    checks = 0

    async def keep_checking() -> None:
        nonlocal checks
        while not done.is_set():
            await check_control(env)
            checks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.3)

    task = asyncio.create_task(keep_checking())
    try:
        yield
    except BaseException:
        task.cancel()
        raise
    done.set()
    await asyncio.wait_for(task, 2 * ANSWER_TIMEOUT)  # raises what a check raised
    await check_control(env)
    assert checks >= 1


async def bounded_gather(calls: Iterable[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the calls, at most ``limit`` at a time; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


# --- 1. client event payloads ------------------------------------------------------------------


def _room_of(payload: Any) -> Any:
    if isinstance(payload, dict):
        return payload.get("room")
    return payload if isinstance(payload, str) else None


def expected(event: str, payload: Any, me: UUID) -> set[str]:
    """What the ack may be: ``success`` or the error codes allowed for it."""
    if isinstance(payload, tuple):  # several arguments
        return {"INVALID_REQUEST"}
    if event in ("ping", "debug:rooms"):
        return {"pong"} if event == "ping" else {"success"}
    if event == "auth:refresh":
        token = payload.get("token") if isinstance(payload, dict) else None
        return {"AUTH_FAILED"} if isinstance(token, str) and token else {"INVALID_REQUEST"}
    if event not in ("subscribe", "unsubscribe"):
        return {"UNKNOWN_EVENT"}
    try:
        room = parse_room(_room_of(payload))
    except RoomError:
        return {"INVALID_ROOM"}
    if event == "unsubscribe":
        return {"success"}
    if room.kind is RoomKind.PROJECT or (room.kind is RoomKind.USER and room.id != me):
        return {"ROOM_ACCESS_DENIED"}
    return {"success", "ROOM_LIMIT"}


def client_event_inputs(me: UUID, project_id: str) -> list[tuple[str, Any]]:
    rng = _rng(1)
    rooms = hostile_rooms(rng, me)
    inputs: list[tuple[str, Any]] = []
    fixed: list[Any] = [
        None,
        0,
        -1,
        1.5,
        True,
        [],
        ["global"],
        {},
        {"room": None},
        {"room": 5},
        {"room": ["global"]},
        {"room": {"room": "global"}},
        {"room": ""},
        {"room": "x" * 900_000},  # just under MAX_PAYLOAD_BYTES
        "x" * 900_000,
        {"ROOM": "global"},
        {"room ": "global"},
        {"room": "role:admin"},
        {"room": f"project:{project_id}x"},
        {"room": f"user:{uuid4()}"},
        b"global",
        {"room": b"global"},
        {"room": "\ud800"},  # a lone surrogate
        ("global", "global"),  # two arguments
        ({"room": "global"}, 1, 2),
        *NASTY_STRINGS,
        *({"room": name} for name in NASTY_STRINGS),
    ]
    for payload in fixed:
        inputs += [("subscribe", payload), ("unsubscribe", payload)]
    for _ in range(1400):
        inputs.append(("subscribe", {"room": next(rooms)} if rng.random() < 0.8 else next(rooms)))
    for _ in range(700):
        inputs.append(("unsubscribe", {"room": next(rooms)}))
    for _ in range(1200):  # any JSON at all
        inputs.append((rng.choice(("subscribe", "unsubscribe")), random_json(rng)))
    for _ in range(150):
        inputs.append((rng.choice(("subscribe", "unsubscribe")), {"room": random_json(rng, 2)}))
    for _ in range(150):  # binary attachments where text is expected
        inputs.append(("subscribe", {"room": rng.randbytes(rng.randint(0, 64))}))
    for _ in range(100):
        inputs.append((rng.choice(HANDLED_EVENTS), tuple(random_json(rng, 1) for _ in range(rng.randint(2, 4)))))
    for payload in [None, 1, "token", [], {}, {"token": None}, {"token": ""}, {"token": 5}, {"token": ["a"]}]:
        inputs.append(("auth:refresh", payload))
    for token, _ in hostile_tokens(_rng(2), me):
        inputs.append(("auth:refresh", {"token": token}))
    inputs.append(("auth:refresh", {"token": make_token(uuid4())}))  # another user's
    for _ in range(200):
        inputs.append(("auth:refresh", random_json(rng)))
    for _ in range(300):
        inputs.append((rng.choice(("ping", "debug:rooms")), random_json(rng)))
    odd_names = ["message", "Subscribe", "SUBSCRIBE", " subscribe", "subscribe ", "subscribe\x00", "auth", "ws"]
    odd_names += ["debug:rooms:", "ping!", "__proto__", "constructor", "", "x" * 10_000, "日本語", "😀"]
    for name in odd_names:
        inputs += [(name, None), (name, {"room": "global"}), (name, random_json(rng))]
    while len(inputs) < 8000:
        name = random_text(rng, 30)
        if name in HANDLED_EVENTS or name in RESERVED_EVENTS or not name:
            continue
        inputs.append((name, random_json(rng)))
    return inputs


async def test_client_events_with_bad_payloads_are_each_answered_with_an_error_ack(env: Env) -> None:
    client = WsClient(env.server.url)
    await client.connect(env.token)
    await client.expect("connection_established")
    inputs = client_event_inputs(env.user, env.project_id)
    surprises: list[str] = []

    async def send(event: str, payload: Any) -> None:
        args = payload if isinstance(payload, tuple) else (payload,)
        try:
            ack = await client.sio.call(event, args if len(args) > 1 else args[0], namespace=NAMESPACE, timeout=10)
        except socketio.exceptions.TimeoutError:
            surprises.append(f"no ack within 10 s for {event!r} {payload!r:.200}")
            return
        allowed = expected(event, payload, env.user)
        status = ack.get("status") if isinstance(ack, dict) else None
        got = status if status in ("success", "pong") else ack.get("code") if isinstance(ack, dict) else None
        if got not in allowed or (status == "error" and not isinstance(ack.get("message"), str)):
            surprises.append(f"{event!r} {payload!r:.200} -> {ack!r:.300} (expected one of {sorted(allowed)})")
        if event == "auth:refresh" and status == "error" and got == "AUTH_FAILED":
            assert ack.get("reason") in AUTH_REASONS | {"other_user"}, ack

    started = time.monotonic()
    try:
        async with control_checked(env):
            await bounded_gather([lambda e=e, p=p: send(e, p) for e, p in inputs], limit=100)
            # the connection is still up, its rooms are what it asked for, and it still works
            rooms = await client.call("debug:rooms", {})
            assert rooms["status"] == "success" and f"user:{env.user}" in rooms["rooms"], rooms
            assert (await client.call("ping", {}))["status"] == "pong"
            assert client.sio.connected
    finally:
        await client.close()
    COUNTS["client_events"] += len(inputs)
    assert not surprises, f"{len(surprises)} of {len(inputs)} acks were wrong, e.g.:\n" + "\n".join(surprises[:20])
    assert time.monotonic() - started < 40


async def test_an_event_named_star_is_answered_unknown_event_like_any_other(env: Env) -> None:
    """python-socketio hands an event named '*' to the catch-all handler without its name (the
    handler then took the sid for the name and the first argument for the sid: another
    connection's sid spent that connection's rate limit); the transport gives it its name."""
    async with RawSocket(env.server.port) as victim, RawSocket(env.server.port) as raw:
        assert await victim.alive_after_connect(make_token(uuid4()))
        assert await raw.alive_after_connect(make_token(uuid4()))
        await victim.ws.send('42/ws,1["debug:rooms",{}]')
        victim_sid = json.loads((await victim.recv_until(lambda f: f.startswith("43/ws,1[")))[len("43/ws,1") :])[0]
        victim_sid = victim_sid["connection_id"]
        for ack, args in enumerate([[], [None], [{"room": "global"}], ["global"], [victim_sid]], start=1):
            await raw.ws.send(f"42/ws,{ack}" + json.dumps(["*", *args]))
            try:
                async with asyncio.timeout(1):
                    frame = await raw.recv_until(lambda f, ack=ack: f.startswith(f"43/ws,{ack}["))
            except TimeoutError:
                raise AssertionError(f"no ack for ['*', *{args!r}]") from None
            answer = json.loads(frame[len(f"43/ws,{ack}") :])[0]
            assert answer["code"] == "UNKNOWN_EVENT", (args, answer)


# --- 2. connect auth ---------------------------------------------------------------------------


async def _client_connect(
    url: str, *, auth: Any = None, headers: dict[str, str] | None = None, wait_timeout: float = ANSWER_TIMEOUT
) -> Any:
    """Connect a python-socketio client; returns the connect_error data (None when there was
    none), and fails if the connection was accepted."""
    sio = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    sio.on("connect_error", lambda data=None: refusals.append(data), namespace=NAMESPACE)
    try:
        await sio.connect(
            url,
            namespaces=[NAMESPACE],
            auth=auth,
            headers=headers or {},
            transports=["websocket"],
            wait_timeout=wait_timeout,
        )
    except socketio.exceptions.ConnectionError:
        data = refusals[0] if refusals else None
        # python-socketio's client hands over {message, data}: data is the server's {content}
        return data["data"].get("content") if isinstance(data, dict) and isinstance(data.get("data"), dict) else data
    finally:
        accepted = NAMESPACE in sio.namespaces
        await sio.disconnect()
    raise AssertionError(f"accepted: auth={auth!r:.200} headers={headers!r:.200} (accepted={accepted})")


def _check_refusal(data: Any, reason: str | None, what: str) -> None:
    assert isinstance(data, dict), f"{what}: connect_error data {data!r}"
    assert data.get("code") == "AUTH_FAILED", f"{what}: {data!r}"
    assert data.get("reason") in AUTH_REASONS and isinstance(data.get("message"), str), f"{what}: {data!r}"
    if reason is not None:
        assert data["reason"] == reason, f"{what}: {data!r}, expected reason {reason!r}"


async def test_garbage_tokens_and_auth_payloads_are_refused_with_a_code(env: Env) -> None:
    tokens = hostile_tokens(_rng(3), uuid4())
    url = env.server.url
    count = 0
    async with control_checked(env):
        # over python-socketio's client, as auth.token, an Authorization header, a query parameter
        attempts: list[tuple[Callable[[], Awaitable[Any]], str | None, str]] = []
        for token, reason in tokens[:80]:
            attempts.append(
                (lambda t=token: _client_connect(url, auth={"token": t}), reason, f"auth.token {token!r:.80}")
            )
        for token, reason in tokens[80:110]:
            if token.isascii() and token.isprintable():
                headers = {"Authorization": f"Bearer {token}"}
                attempts.append((lambda h=headers: _client_connect(url, headers=h), reason, f"header {token!r:.80}"))
        for token, reason in tokens[110:130]:
            query = httpx.QueryParams({"token": token})
            attempts.append((lambda q=query: _client_connect(f"{url}?{q}"), reason, f"query {token!r:.80}"))
        for auth in [{}, {"token": None}, {"token": ""}, {"tok": make_token()}, {"token": 0}, {"token": False}]:
            attempts.append((lambda a=auth: _client_connect(url, auth=a), "missing", f"auth {auth!r}"))
        for auth in [{"token": 12345}, {"token": ["x"]}, {"token": {"token": "x"}}, {"token": True}]:
            attempts.append((lambda a=auth: _client_connect(url, auth=a), "malformed", f"auth {auth!r}"))
        results = await bounded_gather([attempt for attempt, _, _ in attempts], limit=16)
        for data, (_, reason, what) in zip(results, attempts, strict=True):
            _check_refusal(data, reason, what)
        count += len(attempts)

        # CONNECT payloads that are not objects: the connection is closed (WEBSOCKET_API.md, Limits);
        # python-socketio's client notices only at its wait_timeout (some it sends as no auth at all)
        closing = ["just a string", make_token(), 5, [make_token()], True]
        for data in await asyncio.gather(*(_client_connect(url, auth=auth, wait_timeout=2) for auth in closing)):
            assert data is None or _check_refusal(data, "missing", "a non-object auth") is None, data
        count += len(closing)

        # raw CONNECT packets, many on each Engine.IO connection: each refused with 44/ws
        raw_tokens = hostile_tokens(_rng(4), uuid4()) + hostile_tokens(_rng(5), uuid4())
        async with RawSocket(env.server.port) as raw:
            for token, reason in raw_tokens:
                refusal = await raw.connect_refused({"token": token})
                _check_refusal(refusal, reason, f"raw CONNECT {token!r:.80}")
            for auth in [{}, {"token": None}, {"x": 1}, {"token": {"a": [1, 2]}}, {"token": 10**40}]:
                refusal = await raw.connect_refused(auth)
                _check_refusal(refusal, None, f"raw CONNECT {auth!r}")
            count += len(raw_tokens) + 5
            assert await raw.alive_after_connect(make_token(uuid4()))  # and a good token is still served
        for payload in ['"a string"', json.dumps(make_token()), "-5", "[]", "true", '"{}"', "[{}]"]:
            async with RawSocket(env.server.port) as raw:
                assert await raw.state_after("40/ws," + payload) == "closed", payload
            count += 1
    COUNTS["connect_auth"] += count


# --- 3. raw Engine.IO / Socket.IO frames ---------------------------------------------------------


class RawSocket:
    """A plain WebSocket speaking Engine.IO v4 by hand at /socket.io/."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        self.ws: Any = None
        self.acks = 0
        self.opened = 0

    async def __aenter__(self) -> RawSocket:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shut()

    async def open(self) -> None:
        await self.shut()
        self.ws = await websockets.connect(self.url, max_size=None, close_timeout=0.2, ping_interval=None)
        self.opened += 1
        handshake = await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT)
        assert handshake.startswith("0{") and '"sid"' in handshake, handshake

    async def shut(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def recv_until(self, match: Callable[[Any], bool]) -> Any:
        """Frames until one matches (answering pings); raises ConnectionClosed, or TimeoutError
        after ANSWER_TIMEOUT."""
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while True:
                frame = await self.ws.recv()
                if frame == "2":
                    await self.ws.send("3")
                elif match(frame):
                    return frame

    async def connect_refused(self, auth: Any) -> Any:
        """Send a CONNECT to /ws that must be refused; its connect_error data."""
        if self.ws is None:
            await self.open()
        await self.ws.send("40/ws," + json.dumps(auth))
        try:
            frame = await self.recv_until(lambda f: isinstance(f, str) and f.startswith(("40/ws,", "44/ws,")))
        except websockets.ConnectionClosed:
            self.ws = None
            raise AssertionError(f"CONNECT {auth!r:.100}: the connection was closed instead of refused") from None
        assert frame.startswith("44/ws,"), f"CONNECT {auth!r:.100} was accepted: {frame[:200]}"
        body = json.loads(frame[len("44/ws,") :])
        assert isinstance(body.get("message"), str), frame
        return body.get("data", {}).get("content")

    async def alive_after_connect(self, token: str) -> bool:
        """CONNECT to /ws with a good token (on a fresh connection when this one was closed), then
        ping: True when the ping is answered."""
        if self.ws is None:
            await self.open()
        await self.ws.send("40/ws," + json.dumps({"token": token}))
        frame = await self.recv_until(lambda f: isinstance(f, str) and f.startswith(("40/ws,", "44/ws,")))
        assert frame.startswith('40/ws,{"sid"'), frame
        return await self.alive()

    async def alive(self, timeout: float = ANSWER_TIMEOUT) -> bool:
        """Ping over /ws: True when answered, False when the connection is (or gets) closed.
        An open connection that does not answer within ``timeout`` raises TimeoutError."""
        if self.ws is None:
            return False
        self.acks += 1
        ack = 900_000 + self.acks
        try:
            await self.ws.send(f'42/ws,{ack}["ping",{{}}]')
            async with asyncio.timeout(timeout):
                await self.recv_until(lambda f: isinstance(f, str) and f.startswith(f"43/ws,{ack}["))
        except websockets.ConnectionClosed:
            self.ws = None
            return False
        return True

    async def state_after(self, frame: str | bytes) -> str:
        """Send ``frame``, then find out what became of the connection: ``kept`` (a ping is
        answered), ``closed``, or ``left`` (the frame took it out of /ws, as a DISCONNECT does:
        it is open, and a new CONNECT and ping are answered). Anything else fails: a hang."""
        try:
            await self.ws.send(frame)
        except websockets.ConnectionClosed:
            self.ws = None
            return "closed"
        try:
            return "kept" if await self.alive(timeout=2) else "closed"
        except TimeoutError:
            pass
        try:
            await self.ws.send("40/ws," + json.dumps({"token": make_token(uuid4())}))
            joined = await self.recv_until(lambda f: isinstance(f, str) and f.startswith(("40/ws,", "44/ws,")))
            if joined.startswith("40/ws,") and await self.alive():
                return "left"
        except websockets.ConnectionClosed:
            self.ws = None
            return "closed"
        except TimeoutError:
            pass
        raise AssertionError(f"after {frame!r:.200}: open, but unanswered ({ANSWER_TIMEOUT} s)")


def raw_frames(rng: random.Random) -> list[str | bytes]:
    """Frames for a connection that has joined /ws: Engine.IO and Socket.IO packets, broken."""
    fixed: list[str | bytes] = [
        "",
        " ",
        "0",
        "0{}",
        "1",
        "5",
        "6",
        "7",
        "8",
        "9",
        "a",
        "4",
        "40",
        "4/ws,",
        "42",
        "42/ws",
        "42/ws,",
        "42/ws,[",
        "42/ws,]",
        "42/ws,{}",
        "42/ws,[]",
        '42/ws,""',
        "42/ws,null",
        "42/ws,[1]",
        "42/ws,[null]",
        '42/ws,["ping"',
        '42/ws,["ping",}',
        '42/ws,["ping",NaN]',
        '42/ws,["ping",Infinity]',
        '42/ws,["ping",-Infinity]',
        '42/ws,[["ping"]]',
        '42/ws,[{"name":"ping"}]',
        '42/ws,["connect",{}]',
        '42/ws,["disconnect"]',
        '42/ws,["connect_error",{}]',
        '42/ws,["disconnecting"]',
        '42/ws,["newListener","x"]',
        '42/ws,["removeListener","x"]',
        '42/ws,abc["ping"]',
        '42/ws,-1["ping"]',
        '42/ws,99999999999999999999999999["ping"]',
        '42/ws,1.5["ping"]',
        '42/nope,["ping"]',
        '42/ws/,["ping"]',
        '42ws,["ping"]',
        '4"/ws,["ping"]',
        '43/ws,1["x"]',
        "43/ws,",
        '44/ws,{"message":"x"}',
        "41/ws,{}",
        '41/ws,"x"',
        '40/ws,"a string"',
        "40/ws,5",
        "40/ws,[1]",
        "40/ws,{",
        "40/ws,null",
        '40/other,{"token":"x"}',
        "40/,{}",
        '451-/ws,["subscribe",{"_placeholder":true,"num":0}]',
        '452-/ws,["subscribe",{"_placeholder":true,"num":5}]',
        '451-/ws,["subscribe",{"_placeholder":true,"num":"a"}]',
        '4599-/ws,["subscribe"]',
        '45-1-/ws,["subscribe"]',
        '46/ws,1["x"]',
        '47/ws,["x"]',
        '48/ws,["x"]',
        '4a/ws,["x"]',
        "42/ws," + "[" * 100_000 + "]" * 100_000,
        '42/ws,["ping",' + '{"a":' * 5_000 + "1" + "}" * 5_000 + "]",
        "42/ws," + json.dumps(["ping", "x" * 1_100_000]),  # over MAX_PAYLOAD_BYTES: 1009
        "4\x00/ws,[]",
        "4\ud83d\ude00",
        b"",
        b"\x00",
        b"\x04",
        b"\xff" * 10,
        b'42/ws,["ping"]',
        bytes(range(256)),
        b"\x00" * 1_100_000,
    ]
    frames: list[str | bytes] = list(fixed)
    while len(frames) < 900:
        kind = rng.randrange(7)
        if kind == 0:  # random text
            frames.append(random_text(rng, 60))
        elif kind == 1:  # random bytes
            frames.append(rng.randbytes(rng.randint(0, 100)))
        elif kind == 2:  # a Socket.IO packet type with random JSON
            frames.append("4" + rng.choice("0123456789x") + "/ws," + json.dumps(random_json(rng)))
        elif kind == 3:  # an event with a random name and arguments
            args = [random_text(rng, 20), *(random_json(rng, 2) for _ in range(rng.randint(0, 3)))]
            frames.append(f"42/ws,{rng.randint(0, 10**6)}" + json.dumps(args))
        elif kind == 4:  # a valid event, truncated or with a byte flipped
            packet = '42/ws,7["subscribe",{"room":"agent:' + str(uuid4()) + '"}]'
            cut = rng.randrange(len(packet))
            frames.append(
                packet[:cut] if rng.random() < 0.5 else packet[:cut] + rng.choice('{}[]",:\\x') + packet[cut:]
            )
        elif kind == 5:  # an Engine.IO type other than MESSAGE
            frames.append(rng.choice("012356789") + random_text(rng, 10))
        else:  # a non-event Socket.IO packet with junk
            frames.append(rng.choice(["40", "41", "43", "44", "45", "46"]) + random_text(rng, 30))
    return frames


async def _raw_worker(port: int, frames: list[str | bytes], outcomes: Counter[str]) -> int:
    async with RawSocket(port) as raw:
        assert await raw.alive_after_connect(make_token(uuid4()))
        for frame in frames:
            if raw.ws is None:  # closed by the frame before: a fresh connection is served
                await raw.open()
                assert await raw.alive_after_connect(make_token(uuid4()))
            outcomes[await raw.state_after(frame)] += 1
        return raw.opened


async def test_raw_frames_close_that_connection_or_are_refused_and_never_affect_others(env: Env) -> None:
    frames = raw_frames(_rng(6))
    outcomes: Counter[str] = Counter()
    workers = 6
    async with control_checked(env):
        # a bystander on its own raw connection, checked after the flood
        async with RawSocket(env.server.port) as bystander:
            assert await bystander.alive_after_connect(make_token(uuid4()))
            await asyncio.wait_for(
                asyncio.gather(*(_raw_worker(env.server.port, frames[i::workers], outcomes) for i in range(workers))),
                45,
            )
            assert await bystander.alive(), "an unrelated connection was affected"
    print(f"raw frames: {dict(outcomes)}")
    assert sum(outcomes.values()) == len(frames)
    assert outcomes["closed"] >= 50 and outcomes["kept"] >= 50, outcomes  # both kinds were exercised
    COUNTS["raw_frames"] += len(frames)


# --- 4. HTTP -----------------------------------------------------------------------------------


def _not_json(rng: random.Random) -> bytes:
    choices: list[bytes] = [
        b"",
        b"{",
        b"}",
        b"[",
        b'{"name":',
        b'{"name": "x",}',
        b"{'name': 'x'}",
        b"nul",
        b"NaN",
        b'{"name": NaN}',
        b'{"name": Infinity}',
        b"\xef\xbb\xbf[]",
        b"\xff\xfe\xfd",
        b"\x00" * 16,
        b"[" * 50_000,
        b"[" * 5_000 + b"]" * 5_000,
        b'{"a":' * 3_000 + b"1" + b"}" * 3_000,
        b"name=x&status=y",
        b"<xml/>",
    ]
    if rng.random() < 0.5:
        return rng.choice(choices)
    return rng.randbytes(rng.randint(1, 200))


def _bad_project_body(rng: random.Random, *, create: bool) -> Any:
    """A JSON body POST /api/v1/projects (create) or PUT /api/v1/projects/{id} must refuse."""
    kind = rng.randrange(6)
    if kind == 0:  # not an object
        return rng.choice([None, 1, "x", [], [{"name": "x"}], True, random_text(rng)])
    if kind == 1:  # an unknown field (both models forbid them)
        body = {"name": "x"} if rng.random() < 0.5 else {}
        key = random_text(rng, 12)
        while key in ("name", "description", "repository_url", "status"):
            key += "_"
        body[key] = random_json(rng, 2)
        return body
    if kind == 2:  # ill-typed name
        return {"name": rng.choice([None, 1, 1.5, True, [], {}, ["x"], "", "x" * 201])} if create else {"name": None}
    if kind == 3:  # ill-typed or too long fields
        field, value = rng.choice(
            [
                ("description", 5),
                ("description", "x" * 10_001),
                ("description", ["x"]),
                ("status", ""),
                ("status", "x" * 51),
                ("status", None),
                ("status", 5),
                ("repository_url", "ftp://example.com/x"),
                ("repository_url", "javascript:alert(1)"),
                ("repository_url", ""),
                ("repository_url", 5),
                ("repository_url", "https://" + "x" * 2050),
            ]
        )
        return {"name": "x", field: value} if create else {field: value}
    if kind == 4:  # random JSON that is not an object, or an object with junk
        value = random_json(rng)
        return value if not isinstance(value, dict) else {**value, "\x00unknown": 1}
    # a new repository_url from a user who is not an admin: 403
    return (
        {"name": "x", "repository_url": f"https://github.com/{uuid4().hex}/x"}
        if create
        else {"repository_url": f"https://github.com/{uuid4().hex}/x"}
    )


def _bad_publish_body(rng: random.Random) -> Any:
    types = ["workflow.started", "agent.connected", "ai.suggestion", "project.updated", "pr.created", "issue.created"]
    types += ["connection_established", "project.access_revoked", "", "x", "WORKFLOW.STARTED", "workflow.*"]
    kind = rng.randrange(5)
    if kind == 0:
        return random_json(rng)
    if kind == 1:  # a type with random data (an unknown field makes sure it is invalid)
        data = random_json(rng, 2)
        data = {**data, "\x00unknown": 1} if isinstance(data, dict) else data
        return {"type": rng.choice(types), "data": data}
    if kind == 2:  # an unknown type, or a wrong-typed one
        return {"type": rng.choice([random_text(rng, 20) + "?", 5, None, [], {}]), "data": {}}
    if kind == 3:  # a known type with fields of the wrong type
        return {
            "type": "workflow.progress",
            "data": {
                "workflow_id": rng.choice(["x", 5, None, str(uuid4())]),
                "status": rng.choice(["running", "exploded", 5]),
                "progress": rng.choice([-1, 101, 150, "50", None, 1e308]),
                "current_step": rng.choice(["", None, "x" * 10_000, 5]),
                "total_steps": rng.choice([0, -1, "x", None]),
            },
        }
    return {"type": "agent.connected", "data": {"agent_id": str(uuid4()), "agent_name": "x"}, "extra": 1}


BAD_IDS = [
    "not-a-uuid",
    "1",
    "-1",
    "0",
    "null",
    "undefined",
    "..",
    "%2e%2e",
    "%00",
    "%20",
    "x" * 5000,
    "日本語",
    "%F0%9F%98%80",
    "%ff",
    "{id}",
    str(uuid4()) + "0",
    str(uuid4())[:-1],
    "'%20OR%201=1",
]

BAD_QUERIES: list[dict[str, Any]] = [
    {"limit": "-1"},
    {"limit": "0"},
    {"limit": "201"},
    {"limit": "abc"},
    {"limit": "1e3"},
    {"limit": ""},
    {"limit": str(2**70)},
    {"limit": "NaN"},
    {"limit": "1.5"},
    {"limit": "0x10"},
    {"cursor": ""},
    {"cursor": "garbage"},
    {"cursor": "x" * 201},
    {"cursor": "%%%"},
    {"cursor": "\x00"},
    {"cursor": b64(b"[1,2]")},
    {"cursor": b64(b'{"a":1,"b":2}')},
    {"cursor": b64(b'["not a date","x"]')},
    {"cursor": b64(b'["2024-01-01T00:00:00", "not-a-uuid"]')},
    {"cursor": b64(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]")},
    {"cursor": b64(b"\xff\xfe")},
]


def http_inputs(env: Env) -> list[tuple[str, str, dict[str, Any], set[int]]]:
    """(method, url, httpx request keyword arguments, the statuses allowed)."""
    rng = _rng(7)
    user = env.auth
    as_json = {"Content-Type": "application/json"}
    inputs: list[tuple[str, str, dict[str, Any], set[int]]] = []
    for _ in range(500):
        inputs.append(
            ("POST", "/api/v1/projects", {"json": _bad_project_body(rng, create=True), "headers": user}, set())
        )
    for _ in range(200):
        body = _not_json(rng)
        inputs.append(("POST", "/api/v1/projects", {"content": body, "headers": {**user, **as_json}}, set()))
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json"]:
        headers = {**user, "Content-Type": content_type}
        inputs.append(("POST", "/api/v1/projects", {"content": b'{"name":"x"}', "headers": headers}, set()))
    for _ in range(400):
        body = _bad_project_body(rng, create=False)
        inputs.append(("PUT", f"/api/v1/projects/{env.project_id}", {"json": body, "headers": user}, set()))
    for _ in range(100):
        body = _not_json(rng)
        url = f"/api/v1/projects/{env.project_id}"
        inputs.append(("PUT", url, {"content": body, "headers": {**user, **as_json}}, set()))
    for _ in range(25):  # someone else's project, and projects that do not exist
        inputs.append(
            ("PUT", f"/api/v1/projects/{env.other_project_id}", {"json": {"name": "x"}, "headers": user}, set())
        )
        inputs.append(("PUT", f"/api/v1/projects/{uuid4()}", {"json": {"name": "x"}, "headers": user}, set()))
    for bad in BAD_IDS:
        for method in ("GET", "PUT", "DELETE"):
            kwargs: dict[str, Any] = {"headers": user}
            if method == "PUT":
                kwargs["json"] = {"name": "x"}
            inputs.append((method, f"/api/v1/projects/{bad}", kwargs, set()))
            inputs.append((method, f"/api/v1/projects/{bad}/members", {"headers": user}, set()))
        if bad not in ("..", "%2e%2e"):  # /members/.. would be the project itself
            inputs.append(("DELETE", f"/api/v1/projects/{env.project_id}/members/{bad}", {"headers": user}, set()))
        inputs.append(("POST", f"/api/v1/projects/{bad}/members", {"json": {"user_id": "x"}, "headers": user}, set()))
    for body in [{"user_id": "x"}, {"user_id": None}, {}, [], {"user_id": str(uuid4()), "role": "owner"}, "x"]:
        url = f"/api/v1/projects/{env.project_id}/members"
        inputs.append(("POST", url, {"json": body, "headers": user}, set()))
    for _ in range(500):
        inputs.append(
            ("POST", "/api/v1/events", {"json": _bad_publish_body(rng), "headers": env.service_headers}, set())
        )
    for _ in range(100):
        body = _not_json(rng)
        inputs.append(
            ("POST", "/api/v1/events", {"content": body, "headers": {**env.service_headers, **as_json}}, set())
        )
    valid_publish = {"type": "agent.connected", "data": {"agent_id": str(uuid4()), "agent_name": "x"}}
    for key in ["", "x" * 256, "x" * 10_000]:
        headers = {**env.service_headers, "Idempotency-Key": key}
        inputs.append(("POST", "/api/v1/events", {"json": valid_publish, "headers": headers}, set()))
    inputs.append(("POST", "/api/v1/events", {"json": valid_publish, "headers": user}, set()))  # not a service: 403
    for query in BAD_QUERIES:
        inputs.append(("GET", "/api/v1/projects", {"params": query, "headers": user}, set()))
    for _ in range(200):
        query = {rng.choice(["limit", "cursor"]): random_text(rng, 30)}
        if "limit" in query and query["limit"].strip().isdigit() and 1 <= int(query["limit"]) <= 200:
            continue
        inputs.append(("GET", "/api/v1/projects", {"params": query, "headers": user}, {200}))
    for _ in range(50):  # well-formed but forged cursors: a page (maybe empty), or a 4xx
        when = rng.choice(["2024-01-01T00:00:00", "2024-01-01T00:00:00+05:00", "0001-01-01", "9999-12-31T23:59:59Z"])
        cursor = b64(json.dumps([when, str(uuid4())]).encode())
        inputs.append(("GET", "/api/v1/projects", {"params": {"cursor": cursor}, "headers": user}, {200}))
    bad_auth = ["", "Bearer", "Bearer ", "Basic eDp4", "bearer x.y.z", "Bearer " + "x" * 9000, "Token abc"]
    bad_auth += [f"Bearer {token}" for token, _ in hostile_tokens(_rng(8), uuid4()) if token.isascii()]
    for value in bad_auth:
        if not value.isprintable() or value != value.strip():  # what HTTP clients cannot send
            continue
        inputs.append(("GET", "/api/v1/projects", {"headers": {"Authorization": value}}, set()))
        inputs.append(("POST", "/api/v1/projects", {"json": {"name": "x"}, "headers": {"Authorization": value}}, set()))
    for _ in range(100):  # paths that do not exist, and methods that are not served
        path = "/api/v1/" + "/".join(quote(random_text(rng, 8) or "x", safe="") for _ in range(rng.randint(1, 3)))
        inputs.append(("GET", path, {"headers": user}, set()))
    for method in ("PATCH", "OPTIONS", "TRACE"):
        inputs.append((method, "/api/v1/projects", {"headers": user}, set()))
        inputs.append((method, "/api/v1/events", {"headers": env.service_headers}, set()))
    big = b'{"name":"' + b"x" * 1_100_000 + b'"}'
    inputs.append(("POST", "/api/v1/projects", {"content": big, "headers": {**user, **as_json}}, set()))
    inputs.append(("POST", "/api/v1/events", {"content": big, "headers": {**env.service_headers, **as_json}}, set()))
    return inputs


async def test_http_bad_input_gets_a_4xx_in_the_json_error_shape_never_a_5xx(env: Env) -> None:
    inputs = http_inputs(env)
    surprises: list[str] = []
    statuses: Counter[int] = Counter()

    async def send(method: str, url: str, kwargs: dict[str, Any], also: set[int]) -> None:
        response = await env.http.request(method, url, **kwargs)
        statuses[response.status_code] += 1
        shown = f"{method} {url[:120]} {str(kwargs.get('json', kwargs.get('content', '')))[:120]!r}"
        if response.status_code in also:
            return
        if not 400 <= response.status_code < 500:
            surprises.append(f"{shown} -> {response.status_code} {response.text[:300]}")
            return
        try:
            error = response.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            surprises.append(f"{shown} -> {response.status_code}, not the error shape: {response.text[:300]}")

    async with control_checked(env):
        await bounded_gather([lambda i=i: send(*i) for i in inputs], limit=10)
        # nothing was changed by any of them
        project = await env.http.get(f"/api/v1/projects/{env.project_id}", headers=env.auth)
        assert project.status_code == 200 and project.json()["name"] == "mine", project.text
    COUNTS["http"] += len(inputs)
    assert not surprises, (
        f"{len(surprises)} of {len(inputs)} answers were wrong ({dict(statuses)}), e.g.:\n" + "\n".join(surprises[:20])
    )
    assert not any(status >= 500 for status in statuses), statuses


# --- 5. the total ------------------------------------------------------------------------------


async def test_the_control_client_was_never_disturbed_and_the_total_is_over_ten_thousand(env: Env) -> None:
    await check_control(env)
    if set(COUNTS) != set(CATEGORIES):
        pytest.skip(f"only {sorted(COUNTS)} ran: the total is checked when the whole module runs")
    print(f"bad inputs sent: {sum(COUNTS.values())} {dict(COUNTS)}")
    assert sum(COUNTS.values()) >= 10_000, COUNTS
