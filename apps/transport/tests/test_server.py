"""The Socket.IO server (server.py) against real clients: one ordered conversation per connection,
the connect timeout, and client input checked as socket.io-parser checks it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import pytest
import socketio
import websockets

from apps.transport import LocalManager, SocketServer
from apps.transport.tests.conftest import serve
from apps.transport.tests.support import frames_until_closed, server_errors

TIMEOUT = 5.0


def make_server(**options: Any) -> SocketServer:
    settings = {"ping_interval": 5, "ping_timeout": 5, "cors_allowed_origins": "*", **options}
    return SocketServer(client_manager=LocalManager(), **settings)


@contextlib.asynccontextmanager
async def client(url: str, transports: list[str], **kwargs: Any) -> Any:
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, transports=transports, wait_timeout=TIMEOUT, **kwargs)
    try:
        yield sio
    finally:
        await sio.disconnect()


@contextlib.asynccontextmanager
async def raw(url: str) -> Any:
    """A WebSocket speaking Engine.IO by hand, past the Engine.IO handshake."""
    async with websockets.connect(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket") as ws:
        assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("0{")
        yield ws


def warnings_and_errors(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[logging.LogRecord]]:
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return warnings, server_errors(caplog.records)


# --- one ordered conversation per connection -------------------------------------------------


@pytest.mark.parametrize("transports", [["websocket"], ["polling"], ["polling", "websocket"]])
async def test_a_clients_events_are_handled_in_order_and_their_acks_come_back_in_order(transports):
    sio = make_server()
    handled: list[int] = []

    @sio.on("work")
    async def work(sid: str, n: int) -> int:
        await asyncio.sleep(random.random() / 200)  # a handler that awaits (a database, Redis)
        handled.append(n)
        return n

    async with serve(sio) as url, client(url, transports) as c:
        acks: list[int] = []
        all_acked = asyncio.Event()

        def ack(n: int) -> None:
            acks.append(n)
            if len(acks) == 100:
                all_acked.set()

        for n in range(100):
            await c.emit("work", n, callback=ack)
        await asyncio.wait_for(all_acked.wait(), 10)
    assert handled == list(range(100))
    assert acks == list(range(100))


async def test_a_slow_handler_on_one_connection_delays_no_other():
    sio = make_server()
    release = asyncio.Event()

    @sio.on("slow")
    async def slow(sid: str) -> str:
        await release.wait()
        return "slow done"

    @sio.on("quick")
    async def quick(sid: str) -> str:
        return "quick done"

    async with serve(sio) as url, client(url, ["websocket"]) as a, client(url, ["websocket"]) as b:
        pending = asyncio.create_task(a.call("slow", timeout=TIMEOUT))
        assert await b.call("quick", timeout=TIMEOUT) == "quick done"
        assert not pending.done()
        release.set()
        assert await pending == "slow done"


async def test_a_handler_may_wait_for_its_own_clients_ack():
    """Acks from the client are handled at once, not behind the handler that waits for them."""
    sio = make_server()

    @sio.on("ask-me")
    async def ask_me(sid: str) -> Any:
        return await sio.call("question", to=sid, timeout=TIMEOUT)

    async with serve(sio) as url, client(url, ["websocket"]) as c:
        c.on("question", lambda: 42)
        assert await c.call("ask-me", timeout=TIMEOUT) == 42


async def test_an_exception_in_a_handler_is_logged_and_the_next_event_is_handled(caplog):
    sio = make_server()

    @sio.on("boom")
    async def boom(sid: str) -> None:
        raise RuntimeError("injected handler failure")

    @sio.on("fine")
    async def fine(sid: str) -> str:
        return "fine"

    async with serve(sio) as url, client(url, ["websocket"]) as c:
        await c.emit("boom")
        assert await c.call("fine", timeout=TIMEOUT) == "fine"
    assert [r for r in caplog.records if r.exc_info and "injected handler failure" in str(r.exc_info[1])]


# --- connect timeout ----------------------------------------------------------------------------


async def test_a_connection_that_joins_no_namespace_is_closed_after_the_connect_timeout():
    sio = make_server(connect_timeout=0.5)
    async with serve(sio) as url, raw(url) as ws:
        loop = asyncio.get_running_loop()
        start = loop.time()
        frames = await frames_until_closed(ws)
        waited = loop.time() - start
    assert frames == ["1"] and 0.4 <= waited < 3, (frames, waited)  # Engine.IO's CLOSE, then closed


async def test_a_connection_whose_connect_was_refused_is_closed_after_the_connect_timeout():
    sio = make_server(connect_timeout=0.5)

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        return bool(auth and auth.get("token") == "good")

    async with serve(sio) as url:
        async with raw(url) as ws:
            await ws.send('40{"token":"bad"}')
            assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("44")
            assert await frames_until_closed(ws) == ["1"]
        async with raw(url) as ws:  # a retry with a good token within the timeout is served
            await ws.send('40{"token":"bad"}')
            assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("44")
            await ws.send('40{"token":"good"}')
            assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("40{")
            await asyncio.sleep(1.0)  # twice the connect timeout: it must still be open
            await ws.send("41")
            await ws.send('40{"token":"good"}')
            assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("40{")


async def test_an_unknown_namespace_is_refused_with_a_message_object():
    sio = make_server(namespaces=["/"])
    async with serve(sio) as url, raw(url) as ws:
        await ws.send("40/nowhere,")
        refusal = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert refusal == '44/nowhere,{"message":"Invalid namespace"}'


# --- client input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        '42["disconnect"]',
        '42["connect",{"token":"forged"}]',
        '42["connect_error"]',
        '42["disconnecting"]',
        '42["newListener"]',
        '42["removeListener"]',
        "42[]",
        '42{"a":1}',
        "42[true]",
        '40"a bare string"',
        '41{"x":1}',
        "44{}",
        "49",
        '42abc["event"]',
        "43[",
    ],
)
async def test_packets_socketio_refuses_close_that_connection_with_one_warning(packet, caplog):
    sio = make_server()
    calls: list[str] = []

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        calls.append(f"connect {auth}")

    @sio.on("disconnect")
    async def disconnect(sid: str, reason: str) -> None:
        calls.append(f"disconnect {reason}")

    @sio.on("*")
    async def anything(event: str, sid: str, *args: Any) -> None:
        calls.append(f"event {event}")

    async with serve(sio) as url:
        async with client(url, ["websocket"]) as bystander:
            async with raw(url) as ws:
                await ws.send("40")
                assert (await asyncio.wait_for(ws.recv(), TIMEOUT)).startswith("40{")
                caplog.clear()
                await ws.send(packet)
                frames = await frames_until_closed(ws)
            assert frames[-1:] == ["1"]  # Engine.IO's CLOSE
            assert await bystander.call("ping", timeout=TIMEOUT) is None  # unharmed ("*" answers nothing)
    warnings, errors = warnings_and_errors(caplog)
    assert len([w for w in warnings if "malformed" in w]) == 1, warnings
    assert not errors
    # the server's own handlers ran only for the real connect and disconnect, never for the packet
    assert calls.count("connect None") == 2 and "connect {'token': 'forged'}" not in calls
    # the raw connection's, then the bystander's (python-socketio's client closes its transport)
    assert [c for c in calls if c.startswith("disconnect")] == [
        "disconnect transport error",
        "disconnect transport close",
    ]
    assert [c for c in calls if c.startswith("event")] == ["event ping"]


async def test_binary_attachments_are_capped_in_count_and_size(caplog):
    sio = make_server(max_http_buffer_size=10_000)
    received: list[Any] = []

    @sio.on("upload")
    async def upload(sid: str, *blobs: bytes) -> int:
        received.append(blobs)
        return len(blobs)

    async with serve(sio, ws_max_size=10_000) as url:
        async with client(url, ["websocket"]) as c:  # ten attachments of 900 bytes: served
            assert await c.call("upload", tuple(b"x" * 900 for _ in range(10)), timeout=TIMEOUT) == 10
        for head, blobs in [
            ('4511-["upload"' + ',{"_placeholder":true,"num":0}' * 11 + "]", [b"x"] * 11),  # 11 attachments
            ('452-["upload",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', [b"x" * 6000] * 2),
        ]:
            async with raw(url) as ws:
                await ws.send("40")
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                caplog.clear()
                await ws.send(head)
                with contextlib.suppress(websockets.ConnectionClosed):
                    for blob in blobs:
                        await ws.send(blob)
                assert (await frames_until_closed(ws))[-1:] == ["1"]
            warnings, errors = warnings_and_errors(caplog)
            assert len([w for w in warnings if "attachments" in w]) == 1 and not errors, warnings
    assert len(received) == 1


async def test_too_many_events_waiting_close_the_connection(caplog):
    sio = make_server(max_pending_events=5)
    release = asyncio.Event()

    @sio.on("wait")
    async def wait(sid: str) -> None:
        await release.wait()

    async with serve(sio) as url, raw(url) as ws:
        await ws.send("40")
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        for _ in range(10):
            await ws.send('42["wait"]')
        assert (await frames_until_closed(ws))[-1:] == ["1"]
        release.set()
    warnings, _ = warnings_and_errors(caplog)
    assert [w for w in warnings if "jobs are waiting" in w]


def test_check_packet_mirrors_socketio_parser():
    from socketio import packet

    from apps.transport.server import MalformedPacket, check_packet

    valid = ["0", '0{"a":1}', "0/ns,", "1", '2["e"]', '2[1,"x"]', "3[]", '31["x"]']
    invalid = ["0[1]", '0"s"', "1[]", "2", "2[]", '2{"e":1}', "2[null]", '2["connect"]', '3{"a":1}', "4{}"]
    for text in valid:
        check_packet(packet.Packet(encoded_packet=text))
    for text in invalid:
        with pytest.raises(MalformedPacket):
            check_packet(packet.Packet(encoded_packet=text))


def _garbage(rng: random.Random) -> str | bytes:
    """A message a broken or hostile client might send: a mangled Engine.IO/Socket.IO packet."""
    parts = [
        rng.choice(["4", "40", "41", "42", "43", "44", "45", "46", "47", "2", "3", "5", "6", "1", "x", ""]),
        rng.choice(["", "/", "/ws,", "/nowhere,", "/ws", "1-", "11-", "99999999999-", "-"]),
        rng.choice(["", "1", "12", "9" * 30, "-1", "abc"]),
        rng.choice(['["e"]', '["e",1,2]', "[]", "{}", '"s"', "[", '{"a":', "null", "[null]", '["disconnect"]',
                    '[{"_placeholder":true,"num":0}]', '["e",{"_placeholder":true,"num":5}]', "\ud7ff", "\x00"]),
    ]  # fmt: skip
    text = "".join(parts)
    if rng.random() < 0.15:
        return text.encode("utf-8", "surrogatepass")[: rng.randint(0, 20)]
    return text


async def test_no_client_input_makes_a_traceback_or_harms_another_connection(caplog):
    """1,000 mangled packets over 100 connections: each is refused (or handled) with at most a
    warning; a bystander is served throughout."""
    sio = make_server()

    @sio.on("*")
    async def anything(event: str, sid: str, *args: Any) -> str:
        return "handled"

    rng = random.Random(8)  # a fixed corpus: a failure reproduces
    async with serve(sio) as url, client(url, ["websocket"]) as bystander:
        for _ in range(100):
            async with raw(url) as ws:
                await ws.send(rng.choice(["40", "40/ws,", '40{"token":"x"}']))
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(10):
                        await ws.send(_garbage(rng))
                    await ws.send("41")
            assert await bystander.call("still-there", timeout=TIMEOUT) == "handled"
    _, errors = warnings_and_errors(caplog)
    assert not errors, [r.getMessage() for r in errors]


async def test_a_python_socketio_client_on_long_polling_gets_a_burst_of_events_whole():
    """python-engineio's client refuses a poll answer of more than 16 packets (and drops its
    connection): a burst waits in the queue and goes out 16 at a time."""
    sio = make_server()
    async with serve(sio) as url, client(url, ["polling"]) as c:
        received: asyncio.Queue[int] = asyncio.Queue()
        c.on("n", received.put_nowait)
        for n in range(100):
            await sio.emit("n", n, to=c.get_sid())
        got = [await asyncio.wait_for(received.get(), TIMEOUT) for _ in range(100)]
        assert c.connected
    assert got == list(range(100))
