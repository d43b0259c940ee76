"""Logs: LOG_FORMAT=plain (the default, unchanged) or json (one object a line, the connection's
``sid`` and the rest of the context as fields); the session-wide check that no token or secret is
ever logged (apps/api/conftest.py) and what it looks at."""

from __future__ import annotations

import json
import logging
import re
import sys
from uuid import uuid4

import httpx

from apps.api.logging_setup import FORMAT, JsonFormatter, configure_logging
from apps.api.tests.support import (
    ISSUED_TOKENS,
    SERVER_OUTPUTS,
    TEST_SECRET,
    LogCapture,
    WsClient,
    free_port,
    leaked_secrets,
    make_token,
    start_server_process,
)
from apps.api.tests.support import test_settings as settings_for

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(message: str, *args: object, level: int = logging.INFO, **attributes: object) -> logging.LogRecord:
    """A record made by hand (never logged: the session's own check must not see these)."""
    made = logging.LogRecord("apps.api.websocket.events", level, __file__, 1, message, args or None, None)
    made.__dict__.update(attributes)
    return made


def as_json(made: logging.LogRecord) -> dict[str, object]:
    line = JsonFormatter().format(made)
    assert "\n" not in line  # one object a line, tracebacks included
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_json_lines_carry_the_context_of_the_message():
    line = as_json(
        record(
            "websocket disconnected sid=%s user=%s remote=%s reason=%s",
            "Xy_-1",
            "660e8400-e29b-41d4-a716-446655440000",
            "10.0.0.7",
            "client disconnect",
        )
    )
    assert TIME.fullmatch(str(line.pop("time")))
    assert line == {
        "level": "INFO",
        "logger": "apps.api.websocket.events",
        "message": "websocket disconnected sid=Xy_-1 user=660e8400-e29b-41d4-a716-446655440000 "
        "remote=10.0.0.7 reason=client disconnect",
        "sid": "Xy_-1",
        "user": "660e8400-e29b-41d4-a716-446655440000",
        "remote": "10.0.0.7",
        "reason": "client disconnect",
    }
    # the transport's lines: the sid, then what happened
    transport = as_json(record("websocket sid=%s: %s; closing the session", "Ab12", "undecodable long-polling payload"))
    assert transport["sid"] == "Ab12"
    refused = as_json(record("websocket token expired sid=%s: disconnecting", "Cd34"))
    assert refused["sid"] == "Cd34"
    assert as_json(record("websocket subscribe refused sid=Ef code=ROOM_LIMIT, trying again"))["code"] == "ROOM_LIMIT"


def test_json_lines_take_extra_fields_and_tracebacks_and_keep_their_own():
    line = as_json(record("websocket connected sid=parsed level=DEBUG", sid="given", rooms=3, _private=1))
    assert line["sid"] == "given"  # extra= wins over the text
    assert line["rooms"] == 3  # and keeps its type
    assert line["level"] == "INFO" and "_private" not in line
    assert "color_message" not in as_json(record("Uvicorn running", color_message="\x1b[1mUvicorn\x1b[0m"))
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("websocket handler failed sid=%s", "Gh", level=logging.ERROR, exc_info=sys.exc_info())
    line = as_json(failed)
    assert line["level"] == "ERROR" and line["sid"] == "Gh"
    assert "Traceback" in str(line["exception"]) and "ValueError: boom" in str(line["exception"])


def test_plain_is_the_default_and_unchanged():
    assert settings_for().log_format == "plain"
    assert settings_for(log_format="JSON").log_format == "json"
    root = logging.getLogger()
    try:
        for log_format, kind in (("plain", logging.Formatter), ("json", JsonFormatter)):
            configure_logging(settings_for(log_format=log_format))
            ours = [h for h in root.handlers if getattr(h, "_event_service_handler", False)]
            assert ours and all(type(h.formatter) is kind for h in ours)
        configure_logging(settings_for())
        (handler,) = [h for h in root.handlers if getattr(h, "_event_service_handler", False)]
        assert handler.formatter is not None and handler.formatter._fmt == FORMAT
        plain = handler.formatter.format(record("websocket connected sid=%s user=%s", "Xy", "660e"))
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO apps.api.websocket.events websocket connected sid=Xy user=660e",
            plain,
        )
    finally:
        configure_logging(settings_for())


async def test_a_service_with_log_format_json_writes_one_object_a_line():
    port = free_port()
    env = {
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "LOG_FORMAT": "json",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ENVIRONMENT": "development",
    }
    service = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    user = uuid4()
    token = make_token(user)
    try:
        assert any(output is service.output for output in SERVER_OUTPUTS)  # the session checks it
        client = await WsClient(service.url).connect(token)
        await client.expect("connection_established")
        sid = client.sid
        # the token in the query string, over long-polling: uvicorn's request lines show the query
        polling = await WsClient(service.url).connect(None, query=f"token={token}", transports=["polling"])
        await polling.expect("connection_established")
        await polling.close()
        async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
            opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
            eio_sid = json.loads(opened.text[1:])["sid"]
            refused = await http.post(
                "/socket.io/", params={"EIO": "4", "transport": "polling", "sid": eio_sid}, content=b"\xff\xfe"
            )
            assert refused.status_code == 400
        await client.close()
    finally:
        await service.stop()
    lines = [json.loads(text) for text in service.output if text.strip()]  # every line is an object
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)

    def the(message: str, **fields: object) -> dict[str, object]:
        found = [line for line in lines if message in str(line["message"]) and fields.items() <= line.items()]
        assert len(found) == 1, (message, fields, [line["message"] for line in lines])
        return found[0]

    connected = the("websocket connected", sid=sid)
    assert connected["user"] == str(user) and connected["remote"] == "127.0.0.1"
    # the whole reason, spaces included (python-socketio's client closes the transport at once)
    assert the("websocket disconnected", sid=sid)["reason"] in ("client disconnect", "transport close")
    malformed = the("undecodable long-polling payload", sid=eio_sid)
    assert malformed["logger"] == "apps.transport.engine_socket" and malformed["level"] == "WARNING"
    assert str(malformed["message"]).startswith(f"websocket sid={eio_sid}:")  # grep websocket finds it
    requests = [line for line in lines if line["logger"] == "uvicorn.access" and "token=" in str(line["message"])]
    assert requests and all("token=[redacted]" in str(line["message"]) for line in requests)
    assert leaked_secrets(service.output) == []


def test_the_log_check_finds_tokens_and_secrets_wherever_they_are():
    """What apps/api/conftest.py runs at the end of the session, on records made by hand here
    (logging them would fail the session, rightly)."""
    token = make_token()
    assert token in ISSUED_TOKENS
    _, payload, signature = token.split(".")
    leaks = [
        f"websocket connected auth={token}",
        f"a token's signature alone: {signature}",
        f"its payload: {payload}.",
        f"JWT_SECRET_KEY={TEST_SECRET}",
        f'{{"message": "x", "header": "Bearer {token}"}}',
    ]
    clean = [
        "GET /socket.io/?EIO=4&transport=polling&token=[redacted] HTTP/1.1",
        "websocket connected sid=Xy user=660e8400-e29b-41d4-a716-446655440000",
        "x" * 64,  # a placeholder secret (make_token(secret="x" * 64)) protects nothing
    ]
    make_token(secret="x" * 64)
    assert leaked_secrets([*leaks, *clean]) == leaks
    capture = LogCapture()
    capture.handle(record("%s - GET /socket.io/?EIO=4&token=%s HTTP/1.1", "127.0.0.1:5000", token))
    capture.handle(record("websocket connected sid=Xy", auth=token))  # extra= is looked at too
    capture.handle(record("websocket connected sid=%s", "Zz", args_are=("fine",)))
    assert len(capture.lines) == 3
    assert "token=[redacted]" in capture.lines[0]  # the service's redaction, as its handlers apply it
    assert leaked_secrets(capture.lines) == [capture.lines[1]]
