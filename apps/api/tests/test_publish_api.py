"""``POST /api/v1/events`` as a service in another language calls it: every request is made by
``curl`` (a child process, bounded), against the session's real server; real Socket.IO clients in
the target rooms check what is delivered (the 202's event id, the envelope, the family's default
``source``) and, with :func:`marker`, what is not. Covers who may publish (a ``service`` or admin
token; 401 before the body is read, 403 for a plain user whatever the body), the 422s (each a JSON
error naming the problem) and ``Idempotency-Key`` (a retry broadcasts once, per caller, kept in
the database)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import jwt
import pytest
from sqlalchemy import select

from apps.api.db.engine import create_engine
from apps.api.db.tables import handled_requests
from apps.api.tests.support import TEST_SECRET, RunningServer, WsClient, create_project, make_token, marker
from apps.api.websocket.models import EventType

CURL = "/usr/bin/curl"
PATH = "/api/v1/events"
CURL_TIMEOUT = 15.0
_META = b"\n@@curl-meta@@"

SERVER_ONLY = {"connection_established", "project.access_revoked", "token.expiring", "connection.closing"}
PUBLISHABLE = sorted(t.value for t in EventType if t.value not in SERVER_ONLY)
#: The envelope as clients get it; `offset`: where it stands in the history (recovery is on)
ENVELOPE = {"id", "type", "timestamp", "source", "data", "offset"}


def service_token(sub: str | None = None) -> str:
    return make_token(sub, roles=["service"])


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, list[str]]

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


async def curl(
    server: RunningServer,
    body: Any = None,
    *,
    token: str | None = None,
    key: str | None = None,
    content_type: str = "application/json",
    headers: tuple[str, ...] = (),
    data_file: Path | None = None,
) -> Answer:
    """``curl -X POST`` to the publish API. ``body``: a dict/list (sent as JSON), bytes or str
    (sent as they are, through stdin), or None with ``data_file`` (sent from that file)."""
    args = [CURL, "-s", "-S", "--max-time", "10", "-X", "POST", f"{server.url}{PATH}"]
    args += ["-H", f"Content-Type: {content_type}", "-w", f"{_META.decode()}%{{http_code}}@@%{{header_json}}"]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    if key is not None:
        args += ["-H", f"Idempotency-Key: {key}"]
    for header in headers:
        args += ["-H", header]
    if data_file is not None:
        args += ["--data-binary", f"@{data_file}"]
        payload = b""
    else:
        if isinstance(body, dict | list):
            payload = json.dumps(body).encode()
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = body or b""
        args += ["--data-binary", "@-"]
    process = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(payload), CURL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, (process.returncode, err.decode(errors="replace"))
    text, _, meta = out.rpartition(_META)
    status, _, header_json = meta.partition(b"@@")
    headers_seen = {name.lower(): values for name, values in json.loads(header_json).items()}
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = text.decode(errors="replace")
    return Answer(int(status), parsed, headers_seen)


def progress_data(**fields: Any) -> dict[str, Any]:
    data = {"workflow_id": str(uuid4()), "status": "running", "progress": 40, "current_step": "tests", "total_steps": 5}
    data.update(fields)
    return data


def status_data(agent: str, **fields: Any) -> dict[str, Any]:
    return {"agent_id": agent, "agent_name": "builder-7", "status": "busy", "availability": 25, **fields}


async def subscribe(client: WsClient, room: str) -> None:
    answer = await client.call("subscribe", {"room": room})
    assert answer["status"] == "success", answer


def assert_envelope(event: dict[str, Any], *, event_id: str, type: str, source: str) -> None:
    assert set(event) == ENVELOPE, event
    assert (event["id"], event["type"], event["source"]) == (event_id, type, source)
    assert event["timestamp"].endswith("Z")
    sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - sent) < timedelta(seconds=60)


def accepted(answer: Answer, type: str, *, replayed: bool = False) -> str:
    """The event id of a 202, after checking the whole answer."""
    assert answer.status == 202, (answer.status, answer.body)
    assert set(answer.body) == {"event_id", "type", "replayed"}, answer.body
    assert (answer.body["type"], answer.body["replayed"]) == (type, replayed), answer.body
    return str(answer.body["event_id"])


def nothing_else(client: WsClient) -> dict[str, list[Any]]:
    """Every event queued for ``client`` now, apart from the greeting and the markers."""
    queued = {name: client.received(name) for name in list(client.events)}
    return {name: items for name, items in queued.items() if items and name not in ("connection_established",)}


# --- 1, 2: delivery to the rooms of the routing table ---------------------------------------------


async def test_a_service_publishes_workflow_progress_with_curl_and_only_the_projects_members_get_it(
    server, http, connect
):
    member = uuid4()
    member_token = make_token(member)
    project = await create_project(http, member_token)
    watcher = await connect(member_token)
    await subscribe(watcher, f"project:{project}")
    outsider = await connect(make_token())
    refused = await outsider.call("subscribe", {"room": f"project:{project}"})
    assert (refused["status"], refused["code"]) == ("error", "ROOM_ACCESS_DENIED")

    data = progress_data(project_id=project, current_step_number=2, estimated_time_remaining=12.5, logs=["compiled"])
    answer = await curl(server, {"type": "workflow.progress", "data": data}, token=service_token())
    event_id = accepted(answer, "workflow.progress")
    event = await watcher.expect("workflow.progress")
    assert_envelope(event, event_id=event_id, type="workflow.progress", source="workflow_service")
    assert {k: event["data"][k] for k in data} == data
    assert (event["data"]["user_id"], event["data"]["errors"]) == (None, [])

    # a source of the publisher's own; a later event of the workflow without project_id or
    # user_id goes where its earlier events went
    named = await curl(
        server,
        {"type": "workflow.completed", "data": {"workflow_id": data["workflow_id"]}, "source": "ci-runner.go"},
        token=service_token(),
    )
    completed = await watcher.expect("workflow.completed")
    assert_envelope(
        completed, event_id=accepted(named, "workflow.completed"), type="workflow.completed", source="ci-runner.go"
    )
    assert completed["data"]["project_id"] is None and completed["data"]["status"] == "completed"  # as sent

    await marker(watcher, outsider)
    assert nothing_else(watcher) == {}  # each event once
    assert nothing_else(outsider) == {}  # not a member: nothing of the project


async def test_a_workflow_event_with_only_user_id_goes_to_that_users_connections(server, connect):
    user = uuid4()
    tabs = [await connect(make_token(user)), await connect(make_token(user))]  # in user:<id> from connect
    other = await connect(make_token())
    answer = await curl(
        server, {"type": "workflow.started", "data": progress_data(user_id=str(user))}, token=service_token()
    )
    assert answer.status == 422 and answer.code == "VALIDATION_ERROR"  # started takes no progress fields
    data = {"workflow_id": str(uuid4()), "user_id": str(user), "workflow_name": "nightly", "total_steps": 3}
    event_id = accepted(
        await curl(server, {"type": "workflow.started", "data": data}, token=service_token()), "workflow.started"
    )
    for tab in tabs:
        event = await tab.expect("workflow.started")
        assert_envelope(event, event_id=event_id, type="workflow.started", source="workflow_service")
        assert event["data"]["status"] == "running" and event["data"]["workflow_name"] == "nightly"
    await marker(*tabs, other)
    assert [nothing_else(client) for client in (*tabs, other)] == [{}, {}, {}]


async def test_agent_status_changed_goes_to_the_agents_room_which_any_user_may_join(server, connect):
    agent, elsewhere = str(uuid4()), str(uuid4())
    watcher = await connect(make_token())  # a plain user: agent rooms are open to every user
    await subscribe(watcher, f"agent:{agent}")
    other = await connect(make_token())
    await subscribe(other, f"agent:{elsewhere}")

    data = status_data(agent, previous_status="idle", current_task="build #12")
    event_id = accepted(
        await curl(server, {"type": "agent.status_changed", "data": data}, token=service_token()),
        "agent.status_changed",
    )
    event = await watcher.expect("agent.status_changed")
    assert_envelope(event, event_id=event_id, type="agent.status_changed", source="agent_service")
    assert event["data"] == data

    given = await curl(
        server,
        {
            "type": "agent.status_changed",
            "data": status_data(agent, status="idle", availability=100.0),
            "source": "rust-agent",
        },
        token=service_token(),
    )
    event = await watcher.expect("agent.status_changed")
    assert_envelope(
        event, event_id=accepted(given, "agent.status_changed"), type="agent.status_changed", source="rust-agent"
    )
    assert (event["data"]["status"], event["data"]["availability"]) == ("idle", 100.0)

    await marker(watcher, other)
    assert nothing_else(watcher) == {} and nothing_else(other) == {}


# --- 3: who may publish ---------------------------------------------------------------------------


async def test_no_token_is_401_before_the_body_is_read(server, tmp_path):
    body = {"type": "agent.status_changed", "data": status_data(str(uuid4()))}
    plain = await curl(server, body)
    assert plain.status == 401 and plain.code == "AUTH_FAILED" and plain.body["error"]["reason"] == "missing"
    assert plain.headers.get("www-authenticate") == ["Bearer"]

    # 5 MB offered (over the 1 MB cap): 401, not 413; curl's Expect: 100-continue is answered with
    # the 401, so the body is never sent
    big = tmp_path / "big.json"
    big.write_bytes(b'{"type":"workflow.progress","data":{"logs":["' + b"x" * (5 * 1024 * 1024) + b'"]}}')
    for headers in ((), ("Expect:",)):
        answer = await curl(server, data_file=big, headers=headers)
        assert (answer.status, answer.code) == (401, "AUTH_FAILED"), (headers, answer.body)
    # 300 MB declared, 2 bytes sent: answered at once, not after waiting for the rest
    started = asyncio.get_running_loop().time()
    declared = await curl(server, b"{}", headers=("Content-Length: 314572800",))
    assert (declared.status, declared.code) == (401, "AUTH_FAILED")
    assert asyncio.get_running_loop().time() - started < 5

    for token in (
        make_token(roles=["service"], secret="another-secret-" + "x" * 48),
        make_token(roles=["service"], ttl=-60),
        "not-a-jwt",
    ):
        refused = await curl(server, body, token=token)
        assert (refused.status, refused.code) == (401, "AUTH_FAILED"), refused.body
    # a plain user's body is not read either (403, not 413); a publisher's is capped
    not_a_service = await curl(server, data_file=big, token=make_token())
    assert (not_a_service.status, not_a_service.code) == (403, "SERVICE_ROLE_REQUIRED")
    too_big = await curl(server, data_file=big, token=service_token())
    assert (too_big.status, too_big.code) == (413, "PAYLOAD_TOO_LARGE")


async def test_a_plain_user_is_403_whatever_the_body_and_an_admin_may_publish(server, connect):
    agent = str(uuid4())
    watcher = await connect(make_token())
    await subscribe(watcher, f"agent:{agent}")
    good = {"type": "agent.status_changed", "data": status_data(agent)}
    for token in (make_token(), make_token(roles=["viewer", "services"])):
        for body in (good, {"type": "agent.status_changed"}, {"type": "nope", "data": {}}, "{not json"):
            answer = await curl(server, body, token=token)
            assert (answer.status, answer.code) == (403, "SERVICE_ROLE_REQUIRED"), (body, answer.body)
            assert "'service'" in answer.body["error"]["message"]
        refused = await curl(server, good, token=token, key=f"k-{uuid4()}")
        assert (refused.status, refused.code) == (403, "SERVICE_ROLE_REQUIRED")

    by_admin = await curl(server, good, token=make_token(roles=["admin"]))
    event = await watcher.expect("agent.status_changed")
    assert event["id"] == accepted(by_admin, "agent.status_changed")
    # roles must be a list of strings (RFC 7519 types): one string is refused, and says why
    claims = {"sub": str(uuid4()), "exp": int(time.time()) + 600, "roles": "service"}
    as_string = await curl(server, good, token=jwt.encode(claims, TEST_SECRET, algorithm="HS256"))
    assert (as_string.status, as_string.code) == (401, "AUTH_FAILED")
    assert as_string.body["error"]["reason"] == "invalid_claim" and "roles" in as_string.body["error"]["message"]
    await marker(watcher)
    assert nothing_else(watcher) == {}  # none of the refused requests was delivered


# --- 4: what is refused, and why ------------------------------------------------------------------


def _details(*expected: tuple[list[Any], str]) -> Any:
    def check(error: dict[str, Any]) -> None:
        found = [(d["loc"], d["type"]) for d in error["details"]]
        for loc, kind in expected:
            assert (loc, kind) in found, found
        assert all(d["message"] for d in error["details"])

    return check


def _details_at(first: str, kind: str) -> Any:
    """One detail, of ``kind``, located under ``first`` (its position in the text follows)."""

    def check(error: dict[str, Any]) -> None:
        assert [(d["loc"][0], d["type"]) for d in error["details"]] == [(first, kind)], error

    return check


def _unknown(name: str) -> Any:
    def check(error: dict[str, Any]) -> None:
        assert name in error["message"]
        assert error["allowed"] == PUBLISHABLE
        assert not SERVER_ONLY & set(error["allowed"])

    return check


def _mentions(*words: str) -> Any:
    def check(error: dict[str, Any]) -> None:
        for word in words:
            assert word in error["message"], error

    return check


_U = "00000000-0000-4000-8000-000000000000"  # replaced by the watcher's user id
REFUSED = {
    "unknown type": (
        {"type": "workflow.paused", "data": progress_data(user_id=_U)},
        "UNKNOWN_EVENT_TYPE",
        _unknown("workflow.paused"),
    ),
    "connection_established": (
        {
            "type": "connection_established",
            "data": {"connection_id": "x", "user_id": _U, "rooms": [], "instance_id": "i"},
        },
        "UNKNOWN_EVENT_TYPE",
        _unknown("connection_established"),
    ),
    "project.access_revoked": (
        {
            "type": "project.access_revoked",
            "data": {"project_id": _U, "room": f"project:{_U}", "reason": "project_deleted", "by": _U},
        },
        "UNKNOWN_EVENT_TYPE",
        _unknown("project.access_revoked"),
    ),
    "progress 150": (
        {"type": "workflow.progress", "data": progress_data(user_id=_U, progress=150)},
        "VALIDATION_ERROR",
        lambda e: (_details((["data", "progress"], "less_than_equal"))(e), _mentions("progress", "100")(e)),
    ),
    "missing field": (
        {
            "type": "workflow.progress",
            "data": {k: v for k, v in progress_data(user_id=_U).items() if k != "current_step"},
        },
        "VALIDATION_ERROR",
        lambda e: (_details((["data", "current_step"], "missing"))(e), _mentions("current_step")(e)),
    ),
    "bad enum and uuid": (
        {"type": "workflow.progress", "data": progress_data(user_id=_U, status="sleeping", workflow_id="wf-1")},
        "VALIDATION_ERROR",
        _details((["data", "status"], "literal_error"), (["data", "workflow_id"], "uuid_parsing")),
    ),
    "unknown data field": (
        {"type": "workflow.progress", "data": progress_data(user_id=_U, colour="red")},
        "VALIDATION_ERROR",
        _details((["data", "colour"], "extra_forbidden")),
    ),
    "extra top-level key": (
        {"type": "workflow.progress", "data": progress_data(user_id=_U), "room": "global"},
        "VALIDATION_ERROR",
        _details((["body", "room"], "extra_forbidden")),
    ),
    "no data": ({"type": "workflow.progress"}, "VALIDATION_ERROR", _details((["body", "data"], "missing"))),
    "data not an object": (
        {"type": "workflow.progress", "data": [1, 2]},
        "VALIDATION_ERROR",
        _details((["body", "data"], "dict_type")),
    ),
    "type not a string": ({"type": 7, "data": {}}, "VALIDATION_ERROR", _details((["body", "type"], "string_type"))),
    "empty source": (
        {"type": "workflow.progress", "data": progress_data(user_id=_U), "source": ""},
        "VALIDATION_ERROR",
        _details((["body", "source"], "string_too_short")),
    ),
    "non-JSON body": (
        '{"type": "workflow.progress", data: }',
        "VALIDATION_ERROR",
        _details_at("body", "json_invalid"),
    ),
    "empty body": ("", "VALIDATION_ERROR", _details((["body"], "missing"))),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_what_is_refused_is_a_422_naming_the_problem_and_nothing_is_sent(server, connect, case):
    user = str(uuid4())
    watcher = await connect(make_token(user))  # in user:<id>, where the workflow events would go
    body, code, check = REFUSED[case]
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace(_U, user))
    answer = await curl(server, body, token=service_token())
    assert (answer.status, answer.code) == (422, code), answer.body
    assert answer.body["error"]["message"]
    check(answer.body["error"])
    with_key = await curl(server, body, token=service_token(), key=f"refused-{uuid4()}")
    assert (with_key.status, with_key.code) == (422, code)
    await marker(watcher)
    assert nothing_else(watcher) == {}


async def test_a_non_json_content_type_is_refused(server):
    answer = await curl(
        server, "type=workflow.progress&data=x", token=service_token(), content_type="application/x-www-form-urlencoded"
    )
    assert (answer.status, answer.code) == (422, "VALIDATION_ERROR"), answer.body
    assert answer.body["error"]["details"][0]["loc"][0] == "body"


# --- 5: Idempotency-Key ---------------------------------------------------------------------------


async def _stored_keys(server: RunningServer, kind: str) -> dict[str, dict[str, Any]]:
    engine = create_engine(server.app.state.settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(select(handled_requests).where(handled_requests.c.kind == kind))).all()
    finally:
        await engine.dispose()
    return {row.key: json.loads(row.result) for row in rows}


async def test_a_retry_with_the_same_idempotency_key_is_answered_with_the_same_event_and_sent_once(server, connect):
    agent = str(uuid4())
    watcher = await connect(make_token())
    await subscribe(watcher, f"agent:{agent}")
    first_service, second_service = str(uuid4()), str(uuid4())
    key = f"deploy-{uuid4()}"
    body = {"type": "agent.status_changed", "data": status_data(agent)}

    first = await curl(server, body, token=service_token(first_service), key=key)
    event_id = accepted(first, "agent.status_changed")
    retry = await curl(server, body, token=service_token(first_service), key=key)  # a new token, same caller
    assert accepted(retry, "agent.status_changed", replayed=True) == event_id
    assert (await watcher.expect("agent.status_changed"))["id"] == event_id
    await marker(watcher)
    assert nothing_else(watcher) == {}  # once

    changed = {"type": "agent.status_changed", "data": status_data(agent, status="error")}
    reused = await curl(server, changed, token=service_token(first_service), key=key)
    assert (reused.status, reused.code) == (422, "IDEMPOTENCY_KEY_REUSED"), reused.body
    assert "Idempotency-Key" in reused.body["error"]["message"]
    other_type = {"type": "agent.disconnected", "data": {"agent_id": agent, "agent_name": "builder-7"}}
    assert (
        await curl(server, other_type, token=service_token(first_service), key=key)
    ).code == "IDEMPOTENCY_KEY_REUSED"

    # the same key from another service (another sub) is its own
    elsewhere = await curl(server, body, token=service_token(second_service), key=key)
    other_id = accepted(elsewhere, "agent.status_changed")
    assert other_id != event_id
    assert (await watcher.expect("agent.status_changed"))["id"] == other_id
    again = await curl(server, body, token=service_token(first_service), key=key)
    assert accepted(again, "agent.status_changed", replayed=True) == event_id
    # without a key, every post is a new event
    keyless = [
        accepted(await curl(server, body, token=service_token(first_service)), "agent.status_changed") for _ in "ab"
    ]
    assert len({event_id, other_id, *keyless}) == 4
    assert [(await watcher.expect("agent.status_changed"))["id"] for _ in keyless] == keyless
    await marker(watcher)
    assert nothing_else(watcher) == {}

    # kept in the database, per caller
    for service, expected in ((first_service, event_id), (second_service, other_id)):
        stored = await _stored_keys(server, f"publish:{service}")
        assert stored == {key: {"event_id": expected, "type": "agent.status_changed", "replayed": False}}


async def test_concurrent_retries_with_one_key_broadcast_once(server, connect):
    agent = str(uuid4())
    watcher = await connect(make_token())
    await subscribe(watcher, f"agent:{agent}")
    token, key = service_token(), f"burst-{uuid4()}"
    body = {"type": "agent.status_changed", "data": status_data(agent)}
    answers = await asyncio.gather(*(curl(server, body, token=token, key=key) for _ in range(5)))
    assert [a.status for a in answers] == [202] * 5, [a.body for a in answers]
    assert len({a.body["event_id"] for a in answers}) == 1
    assert sorted(a.body["replayed"] for a in answers) == [False, True, True, True, True]
    assert (await watcher.expect("agent.status_changed"))["id"] == answers[0].body["event_id"]
    await marker(watcher)
    assert nothing_else(watcher) == {}


async def test_a_refused_publish_does_not_use_up_its_key(server, connect):
    agent = str(uuid4())
    watcher = await connect(make_token())
    await subscribe(watcher, f"agent:{agent}")
    token, key = service_token(), f"fix-{uuid4()}"
    bad = await curl(
        server, {"type": "agent.status_changed", "data": status_data(agent, availability=101)}, token=token, key=key
    )
    assert (bad.status, bad.code) == (422, "VALIDATION_ERROR")
    assert [d["loc"] for d in bad.body["error"]["details"]] == [["data", "availability"]]
    fixed = {"type": "agent.status_changed", "data": status_data(agent)}
    event_id = accepted(await curl(server, fixed, token=token, key=key), "agent.status_changed")
    assert accepted(await curl(server, fixed, token=token, key=key), "agent.status_changed", replayed=True) == event_id
    assert (await watcher.expect("agent.status_changed"))["id"] == event_id
    empty_key = await curl(server, fixed, token=token, headers=("Idempotency-Key;",))  # curl's empty header
    assert (empty_key.status, empty_key.code) == (422, "VALIDATION_ERROR"), empty_key.body
    await marker(watcher)
    assert nothing_else(watcher) == {}
