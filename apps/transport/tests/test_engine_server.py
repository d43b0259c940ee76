"""The Engine.IO server and its sessions (engine_server.py, engine_socket.py) against real clients:
every request answered as engine.io answers it, long-polling that never hangs, the upgrade,
heartbeats closed at their deadline, messages in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import httpx
import pytest
import websockets

from apps.transport import EngineServer
from apps.transport.engine_socket import EngineSocket
from apps.transport.tests.conftest import serve
from apps.transport.tests.support import server_errors

TIMEOUT = 5.0


def echo_server(**options: Any) -> EngineServer:
    """An Engine.IO server that sends every message back; ``received`` records them in order."""
    eio = EngineServer(**{"ping_interval": 0.3, "ping_timeout": 0.2, "cors_allowed_origins": "*", **options})
    eio.received = []  # type: ignore[attr-defined]

    def message(sid: str, data: Any) -> None:
        eio.received.append(data)  # type: ignore[attr-defined]
        eio.sockets[sid].send_nowait(_message(data))

    eio.on("message", message)
    return eio


def _message(data: Any) -> Any:
    from engineio import packet

    return packet.Packet(packet.MESSAGE, data)


async def handshake(http: httpx.AsyncClient) -> str:
    response = await http.get("/engine.io/", params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 200 and response.text.startswith("0"), response.text
    return str(json.loads(response.text[1:])["sid"])


def polling(sid: str) -> dict[str, str]:
    return {"EIO": "4", "transport": "polling", "sid": sid}


def engine_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return server_errors(caplog.records)


@pytest.mark.parametrize(("interval", "timeout", "advertised"), [(0.3, 0.2, (300, 200)), (25, 20, (25000, 20000))])
async def test_the_handshake_advertises_the_heartbeat_in_milliseconds(interval, timeout, advertised):
    async with serve(echo_server(ping_interval=interval, ping_timeout=timeout), path="engine.io") as url:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            response = await http.get("/engine.io/", params={"EIO": "4", "transport": "polling"})
    opened = json.loads(response.text[1:])
    assert (opened["pingInterval"], opened["pingTimeout"]) == advertised


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("GET", {"EIO": "4"}, 0),  # no transport
        ("GET", {"EIO": "4", "transport": "carrier-pigeon"}, 0),
        ("GET", {"transport": "polling"}, 5),  # no EIO
        ("GET", {"EIO": "3", "transport": "polling"}, 5),
        ("PUT", {"EIO": "4", "transport": "polling"}, 2),
        ("POST", {"EIO": "4", "transport": "polling"}, 2),  # a handshake must be a GET
        ("DELETE", {"EIO": "4", "transport": "polling"}, 2),
        ("GET", {"EIO": "4", "transport": "polling", "sid": "nobody"}, 1),
        ("POST", {"EIO": "4", "transport": "polling", "sid": "nobody"}, 1),
    ],
)
async def test_requests_the_server_cannot_take_get_400_with_engineios_json(method, params, code, caplog):
    async with serve(echo_server(), path="engine.io") as url:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            response = await http.request(method, "/engine.io/", params=params, content=b"4x")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == code and response.json()["message"]
    assert not engine_errors(caplog)


async def test_a_post_is_answered_ok_and_may_carry_any_number_of_packets_in_order():
    eio = echo_server()
    async with serve(eio, path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        body = "\x1e".join(f"4m{i}" for i in range(50))  # python-engineio refused more than 16 and lost them
        response = await http.post("/engine.io/", params=polling(sid), content=body)
        assert (response.status_code, response.text) == (200, "ok")
        echoed: list[str] = []
        while len(echoed) < 50:
            poll = await http.get("/engine.io/", params=polling(sid))
            echoed += [p[1:] for p in poll.text.split("\x1e") if p.startswith("4")]
    assert eio.received == [f"m{i}" for i in range(50)]  # type: ignore[attr-defined]
    assert echoed == [f"m{i}" for i in range(50)]


@pytest.mark.parametrize("body", ["abc", "4ok\x1ezzz", "\x1e", "9nine"])
async def test_a_malformed_polling_payload_closes_the_session_with_one_warning(body, caplog):
    async with serve(echo_server(), path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        caplog.clear()
        response = await http.post("/engine.io/", params=polling(sid), content=body)
        assert response.status_code == 400
        assert (await http.get("/engine.io/", params=polling(sid))).status_code == 400  # the session is gone
    warnings = [r for r in caplog.records if r.name.startswith("apps.transport") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "closing the session" in warnings[0].getMessage()
    assert not engine_errors(caplog)


async def test_an_oversized_polling_body_gets_413_closes_the_session_and_is_not_read_whole(caplog):
    eio = echo_server(max_http_buffer_size=10_000)
    async with serve(eio, path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        response = await http.post("/engine.io/", params=polling(sid), content=b"4" + b"x" * 20_000)
        assert response.status_code == 413 and response.json()["message"]
        assert (await http.get("/engine.io/", params=polling(sid))).status_code == 400
        # chunked, without Content-Length: refused as soon as the cap is passed, not at the end
        sid = await handshake(http)
        reader, writer = await asyncio.open_connection("127.0.0.1", httpx.URL(url).port)
        chunk = b"4" + b"x" * 4_999
        writer.write(
            f"POST /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3  # 15 KB of a body that never ends
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 413")
        assert (await http.get("/engine.io/", params=polling(sid))).status_code == 400
    assert not eio.received  # type: ignore[attr-defined]
    assert not engine_errors(caplog)


async def test_a_post_abandoned_before_or_during_its_body_leaves_no_traceback(caplog):
    async with serve(echo_server(), path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        port = httpx.URL(url).port
        for sent in (b"", b"4hal"):
            sid = await handshake(http)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 100\r\n\r\n".encode()
                + sent
            )
            await writer.drain()
            writer.close()  # gone before the body is complete
            await writer.wait_closed()

            async def answered(s: str = sid) -> bool:
                return (await http.get("/engine.io/", params=polling(s))).status_code == 400

            if sent:  # a partial body: the session is closed (its packets are lost)
                await asyncio.wait_for(_until(answered), TIMEOUT)
        assert (await http.get("/engine.io/", params={"EIO": "4", "transport": "polling"})).status_code == 200
    assert not engine_errors(caplog)


async def test_closing_a_session_answers_its_pending_poll_with_a_noop():
    eio = echo_server(ping_interval=5, ping_timeout=5)
    async with serve(eio, path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        poll = asyncio.create_task(http.get("/engine.io/", params=polling(sid)))
        await _until(lambda: _true(eio.sockets[sid].polling))
        await eio.disconnect(sid)
        response = await asyncio.wait_for(poll, TIMEOUT)
    assert (response.status_code, response.text) == (200, "1")  # a server close sends CLOSE


async def test_a_second_websocket_for_a_session_is_refused_and_the_first_keeps_working(caplog):
    eio = echo_server(ping_interval=5, ping_timeout=5)
    async with serve(eio, path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        ws_url = url.replace("http", "ws") + f"/engine.io/?EIO=4&transport=websocket&sid={sid}"
        async with websockets.connect(ws_url) as first:
            for moment in ("upgrading", "upgraded"):
                if moment == "upgraded":
                    await first.send("2probe")
                    assert await asyncio.wait_for(first.recv(), TIMEOUT) == "3probe"
                    await first.send("5")
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(ws_url):
                        pass
                assert refused.value.response.status_code in (400, 403)
            await first.send("4still here")
            assert await asyncio.wait_for(first.recv(), TIMEOUT) == "4still here"
    assert not engine_errors(caplog)


async def test_an_upgrade_sends_the_polls_noop_only_to_the_poll():
    """The NOOP that ends the pending poll is never the WebSocket's first message."""
    eio = echo_server(ping_interval=5, ping_timeout=5)
    async with serve(eio, path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        poll = asyncio.create_task(http.get("/engine.io/", params=polling(sid)))
        await _until(lambda: _true(eio.sockets[sid].polling))
        ws_url = url.replace("http", "ws") + f"/engine.io/?EIO=4&transport=websocket&sid={sid}"
        async with websockets.connect(ws_url) as ws:
            await ws.send("2probe")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "3probe"
            assert (await asyncio.wait_for(poll, TIMEOUT)).text == "6"
            await ws.send("5")
            await ws.send("4first")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "4first"


async def test_a_silent_client_is_closed_at_its_ping_deadline_and_a_live_one_is_kept():
    eio = echo_server(ping_interval=0.5, ping_timeout=1.0)
    async with serve(eio, path="engine.io") as url:
        ws_url = url.replace("http", "ws") + "/engine.io/?EIO=4&transport=websocket"
        async with websockets.connect(ws_url) as live, websockets.connect(ws_url) as silent:
            loop = asyncio.get_running_loop()
            opened = loop.time()
            assert (await silent.recv()).startswith("0") and (await live.recv()).startswith("0")

            async def answer() -> None:
                while True:
                    if await live.recv() == "2":
                        await live.send("3")

            answering = asyncio.create_task(answer())
            frames = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frames.append(await asyncio.wait_for(silent.recv(), TIMEOUT))
            closed_after = loop.time() - opened
            await live.send("4alive")
            answering.cancel()
    assert frames == ["2"]  # pinged once, never answered, then closed (no CLOSE to a silent client)
    assert 1.4 <= closed_after < 2.5, closed_after  # deadline: 0.5 s to the PING + 1.0 s
    assert "alive" in eio.received  # type: ignore[attr-defined]


async def test_an_error_in_one_sessions_heartbeat_closes_that_session_only(caplog):
    eio = echo_server(ping_interval=0.2, ping_timeout=1.0)
    async with serve(eio, path="engine.io") as url:
        ws_url = url.replace("http", "ws") + "/engine.io/?EIO=4&transport=websocket"
        async with websockets.connect(ws_url) as victim, websockets.connect(ws_url) as bystander:
            victim_sid = json.loads((await victim.recv())[1:])["sid"]
            await bystander.recv()
            socket: EngineSocket = eio.sockets[victim_sid]
            original = socket.send_nowait

            def broken(pkt: Any) -> None:
                if pkt.packet_type == 2:
                    raise RuntimeError("injected heartbeat failure")
                original(pkt)

            socket.send_nowait = broken  # type: ignore[method-assign]
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(victim.recv(), TIMEOUT)
            for _ in range(3):  # the bystander's heartbeat goes on, and so does its traffic
                assert await asyncio.wait_for(bystander.recv(), TIMEOUT) == "2"
                await bystander.send("3")
            await bystander.send("4after")
            assert await asyncio.wait_for(bystander.recv(), TIMEOUT) == "4after"
    assert victim_sid not in eio.sockets
    assert [r for r in caplog.records if "heartbeat failed" in r.getMessage()]


async def test_messages_arrive_in_order_across_polling_the_upgrade_and_websocket():
    eio = echo_server(ping_interval=5, ping_timeout=5)
    async with serve(eio, path="engine.io") as url, httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        sid = await handshake(http)
        for i in range(5):
            await http.post("/engine.io/", params=polling(sid), content=f"4p{i}")
        ws_url = url.replace("http", "ws") + f"/engine.io/?EIO=4&transport=websocket&sid={sid}"
        async with websockets.connect(ws_url) as ws:
            await ws.send("2probe")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "3probe"
            await ws.send("5")
            for i in range(20):
                await ws.send(f"4w{i}")
            # the echoes of the polled messages were never polled: they come first, on the WebSocket
            echoes = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(25)]
    assert echoes == [f"4p{i}" for i in range(5)] + [f"4w{i}" for i in range(20)]
    assert eio.received == [f"p{i}" for i in range(5)] + [f"w{i}" for i in range(20)]  # type: ignore[attr-defined]


async def _true(value: object) -> bool:
    return bool(value)


async def _until(check: Any, timeout: float = TIMEOUT) -> None:
    async def wait() -> None:
        while not await check():  # noqa: ASYNC110 - state of the server, polled (bounded)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)
