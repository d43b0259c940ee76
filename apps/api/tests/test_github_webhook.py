"""``POST /webhooks/github`` end to end: a real uvicorn serving the app with a webhook secret, real
HTTP deliveries signed as GitHub signs them, and real Socket.IO clients subscribed to the matched
projects' rooms. Covers the signature checks, every ``pull_request`` and ``issues`` example of
``@octokit/webhooks-examples`` (pinned in package.json; ``npm ci`` installs it), matching projects
by any form of their repository's address, what is ignored, and deduplication by
``X-GitHub-Delivery`` (also across a restart on the same database)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from apps.api.app import create_app
from apps.api.github.events import Ignored, map_delivery, normalize_repository
from apps.api.tests.support import (
    RunningServer,
    WsClient,
    create_project,
    link_repository,
    make_token,
    marker,
    serve_in_process,
    sqlite_url,
)
from apps.api.tests.support import test_settings as settings_for  # (not named test_*: not collected)

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES_FILE = REPO_ROOT / "node_modules" / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
MISSING = (
    f"{EXAMPLES_FILE} is missing: run `npm ci` in {REPO_ROOT} "
    "(package.json pins @octokit/webhooks-examples, GitHub's example webhook payloads)"
)
SECRET = "github-webhook-secret-" + "fedcba9876543210" * 2
#: What a GitHub event may become on the wire.
GITHUB_EVENT_TYPES = ("pr.created", "pr.updated", "pr.closed", "issue.created", "issue.updated", "issue.closed")


def _load() -> dict[str, list[dict[str, Any]]]:
    if not EXAMPLES_FILE.is_file():
        return {}
    entries = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))
    return {entry["name"]: entry["examples"] for entry in entries}


EXAMPLES = _load()


def examples(name: str) -> list[dict[str, Any]]:
    if not EXAMPLES:
        pytest.fail(MISSING)
    return copy.deepcopy(EXAMPLES[name])


def example(name: str, action: str | None = None) -> dict[str, Any]:
    """A fresh copy of the first example of ``name`` with ``action`` (None: pings and pushes have none)."""
    found = [p for p in examples(name) if p.get("action") == action]
    assert found, f"no {name} example with action {action!r}"
    return found[0]


def expected_type(name: str, action: str) -> str:
    if name == "pull_request":
        return {"opened": "pr.created", "closed": "pr.closed"}.get(action, "pr.updated")
    return {"opened": "issue.created", "closed": "issue.closed", "deleted": "issue.closed"}.get(action, "issue.updated")


def in_repository(payload: dict[str, Any], owner: str, name: str, *, host: str = "github.com") -> dict[str, Any]:
    """``payload`` moved to the repository ``owner/name``: every address of it names that one."""
    payload = copy.deepcopy(payload)
    full = f"{owner}/{name}"
    payload["repository"].update(
        name=name,
        full_name=full,
        html_url=f"https://{host}/{full}",
        clone_url=f"https://{host}/{full}.git",
        ssh_url=f"git@{host}:{full}.git",
        git_url=f"git://{host}/{full}.git",
        svn_url=f"https://{host}/{full}",
    )
    return payload


def fresh_owner() -> str:
    return f"Acme-{uuid4().hex[:10]}"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


async def deliver(
    http: httpx.AsyncClient,
    event: str | None,
    body: Any,
    *,
    delivery: str | None = "new",
    signature: str | bytes | None = "sign",
    headers: dict[str, Any] | None = None,
) -> httpx.Response:
    """POST a delivery as GitHub does: ``body`` (bytes, or JSON to encode), signed with SECRET
    unless ``signature`` says otherwise, with a new ``X-GitHub-Delivery`` unless given one."""
    raw = body if isinstance(body, bytes) else encode(body)
    sent: dict[str, Any] = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/test"}
    if event is not None:
        sent["X-GitHub-Event"] = event
    if delivery is not None:
        sent["X-GitHub-Delivery"] = str(uuid4()) if delivery == "new" else delivery
    if signature is not None:
        sent["X-Hub-Signature-256"] = sign(raw) if signature == "sign" else signature
    sent.update(headers or {})
    return await http.post("/webhooks/github", content=raw, headers=sent)


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_project(http: httpx.AsyncClient, token: str, repository_url: str, name: str = "GitHub project") -> str:
    """A project owned by ``token``'s user, linked to ``repository_url`` by an admin (the only role
    that may link one)."""
    return await create_project(http, token, name=name, repository_url=repository_url)


class OrderedClient(WsClient):
    """A :class:`WsClient` that also keeps every event it receives in arrival order."""

    def __init__(self, server_url: str) -> None:
        self.log: list[tuple[str, Any]] = []
        super().__init__(server_url)

    async def _record(self, event: str, *args: Any) -> None:
        self.log.append((event, args[0] if len(args) == 1 else args))
        await super()._record(event, *args)

    def github_events(self) -> list[dict[str, Any]]:
        return [data for event, data in self.log if event in GITHUB_EVENT_TYPES]


async def assert_nothing_more(*clients: OrderedClient) -> None:
    """Every event sent to the clients before now has arrived, and none of them is a GitHub one
    still unread."""
    await marker(*clients)
    for client in clients:
        for event_type in GITHUB_EVENT_TYPES:
            assert client.received(event_type) == [], event_type


async def started(server: RunningServer) -> None:
    """Return once ``server``'s app has started (uvicorn answers only after its start-up): two apps
    of one process must not start at once, their migrations would get in each other's way."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.get("/health")).status_code == 200


@contextlib.asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[RunningServer]:
    """The app with the webhook secret, under a real uvicorn, started. The process has one
    broadcaster: each app takes it while it runs and gives it back to the one before (the
    session's server) when it stops."""
    settings = settings_for(**{"github_webhook_secret": SECRET, "max_rooms_per_connection": 50, **overrides})
    async with serve_in_process(create_app(settings)) as running:
        await started(running)
        yield running


@pytest.fixture(scope="module")
async def github_server(server: RunningServer) -> AsyncIterator[RunningServer]:
    """One server with a secret for the module. The session's server (without a secret) starts
    first: a server starting later would take the broadcaster from this one."""
    await started(server)
    async with serving() as running:
        yield running


@pytest.fixture(scope="module")
async def gh(github_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=github_server.url, timeout=10) as client:
        yield client


@contextlib.asynccontextmanager
async def clients_of(url: str) -> AsyncIterator[Any]:
    """``await subscribed(token, *project_ids)``: a connected :class:`OrderedClient` in those
    projects' rooms; all are closed at the end."""
    opened: list[OrderedClient] = []

    async def subscribed(token: str, *project_ids: str) -> OrderedClient:
        client = OrderedClient(url)
        opened.append(client)
        await client.connect(token)
        for project_id in project_ids:
            answer = await client.call("subscribe", {"room": f"project:{project_id}"})
            assert answer["status"] == "success", answer
        return client

    try:
        yield subscribed
    finally:
        for client in opened:
            await client.close()


@pytest.fixture
async def subscribe(github_server: RunningServer) -> AsyncIterator[Any]:
    async with clients_of(github_server.url) as subscribed:
        yield subscribed


# --- not configured ----------------------------------------------------------------------------


async def test_without_a_secret_every_delivery_is_refused_with_503(http):
    """The session's server has no GITHUB_WEBHOOK_SECRET."""
    ping = example("ping")
    for event, body, signature in (
        ("ping", encode(ping), sign(encode(ping))),
        ("pull_request", encode(example("pull_request", "opened")), None),
        ("issues", b"not json at all", "sha256=" + "0" * 64),
        (None, b"", None),
    ):
        response = await deliver(http, event, body, signature=signature)
        assert error_of(response) == (503, "WEBHOOK_NOT_CONFIGURED"), (event, response.text)
        assert "GITHUB_WEBHOOK_SECRET" in response.json()["error"]["message"]


# --- signature and body ------------------------------------------------------------------------


async def test_signatures_are_checked_before_anything_else(gh, subscribe):
    owner = fresh_owner()
    token = make_token()
    project = await new_project(gh, token, f"https://github.com/{owner}/widget")
    watcher = await subscribe(token, project)
    payload = in_repository(example("pull_request", "opened"), owner, "widget")
    body = encode(payload)

    assert error_of(await deliver(gh, "pull_request", body, signature=None)) == (401, "SIGNATURE_MISSING")
    assert error_of(await deliver(gh, "pull_request", body, signature="")) == (401, "SIGNATURE_MISSING")
    old_style = {"X-Hub-Signature": "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()}
    assert error_of(await deliver(gh, "pull_request", body, signature=None, headers=old_style)) == (
        401,
        "SIGNATURE_MISSING",
    )
    wrong = [
        "sha256=" + "0" * 64,
        sign(body + b" "),  # another body's
        sign(encode({**payload, "action": "closed"})),
        sign(body, secret=SECRET + "x"),  # another secret's
        sign(body).removeprefix("sha256="),
        sign(body).upper(),
        "sha1=" + sign(body).removeprefix("sha256="),
        sign(body)[:-1],
        sign(body) + "0",
        "garbage",
        ("sha256=" + "é" * 64).encode(),  # not ASCII (UTF-8 bytes)
        b"sha256=\xff\xfe" + b"0" * 62,  # not ASCII, nor UTF-8
    ]
    for signature in wrong:
        response = await deliver(gh, "pull_request", body, signature=signature)
        assert error_of(response) == (401, "SIGNATURE_INVALID"), (signature, response.text)
    # a signature over the body as GitHub sent it: any other bytes are another body
    reformatted = json.dumps(payload, indent=2).encode()
    response = await deliver(gh, "pull_request", reformatted, signature=sign(body))
    assert error_of(response) == (401, "SIGNATURE_INVALID")
    await assert_nothing_more(watcher)

    published = await deliver(gh, "pull_request", body)  # the same body, rightly signed
    assert published.status_code == 200, published.text
    assert (await watcher.expect("pr.created"))["id"] == published.json()["events"][0]["event_id"]


async def test_a_signed_body_must_be_a_json_object(gh):
    for body in (b"not json", b"", b"{", b"\xff\xfe{}", b'{"action": "opened"'):
        response = await deliver(gh, "pull_request", body)
        assert error_of(response) == (400, "INVALID_JSON"), (body, response.text)
    for value in ([], [example("pull_request", "opened")], "text", 3, None, True):
        response = await deliver(gh, "pull_request", value)
        assert error_of(response) == (400, "INVALID_JSON"), (value, response.text)
        assert "object" in response.json()["error"]["message"]


async def test_ping_is_answered_ok(gh):
    pings = examples("ping")
    assert pings
    for ping in pings:
        response = await deliver(gh, "ping", ping)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "zen": ping.get("zen"), "hook_id": ping.get("hook_id")}
    bare = await deliver(gh, "ping", {}, delivery=None)
    assert bare.json() == {"status": "ok", "zen": None, "hook_id": None}


# --- every example -----------------------------------------------------------------------------

#: The project's repository_url for each example repository: other forms of the same address.
ADDRESS_FORMS = {
    "https://github.com/Codertocat/Hello-World": "https://GitHub.com/codertocat/HELLO-WORLD.git",
    "https://github.com/octo-org/octo-repo": "https://www.github.com/Octo-Org/Octo-Repo/",
}


async def test_every_pull_request_and_issues_example_reaches_its_projects_subscribers(gh, subscribe):
    deliveries = [(name, payload) for name in ("pull_request", "issues") for payload in examples(name)]
    assert len(deliveries) >= 40
    repositories = sorted({payload["repository"]["html_url"] for _, payload in deliveries})
    owner = make_token()
    projects = {}
    for url in repositories:
        form = ADDRESS_FORMS.get(url, url)
        assert normalize_repository(form) == normalize_repository(url)
        projects[url] = await new_project(gh, owner, form, name=url.rpartition("/")[2])
    assert set(projects) == set(ADDRESS_FORMS)  # both forms above were used
    watcher = await subscribe(owner, *projects.values())

    announced: list[tuple[str, str, dict[str, Any]]] = []  # (type, event id, the example)
    ignored = []
    for index, (name, payload) in enumerate(deliveries):
        label = f"#{index} {name}.{payload['action']}"
        delivery = f"example-{index}-{uuid4()}"
        response = await deliver(gh, name, payload, delivery=delivery)
        mapped = map_delivery(name, payload)
        if isinstance(mapped, Ignored):
            assert response.status_code == 202, (label, response.text)
            assert response.json() == {"status": "ignored", "reason": mapped.reason}, label
            ignored.append((name, payload["action"]))
            continue
        assert response.status_code == 200, (label, response.text)
        answer = response.json()
        event_type = expected_type(name, payload["action"])
        project = projects[payload["repository"]["html_url"]]
        assert answer["status"] == "published" and answer["delivery"] == delivery, (label, answer)
        assert [(e["type"], e["project_id"]) for e in answer["events"]] == [(event_type, project)], (label, answer)
        announced.append((event_type, answer["events"][0]["event_id"], payload))
    # the only examples ignored: issues deliveries about a pull request
    assert set(ignored) == {("issues", "milestoned"), ("issues", "demilestoned")}

    for event_type, event_id, payload in announced:
        event = await watcher.expect(event_type)
        label = f"{event_type} {payload['action']}"
        assert (event["id"], event["type"], event["source"]) == (event_id, event_type, "github_service"), label
        data = event["data"]
        assert data["project_id"] == projects[payload["repository"]["html_url"]], label
        if event_type.startswith("pr."):
            pr = payload["pull_request"]
            assert data["pr_id"] == str(pr["id"]) and data["pr_number"] == pr["number"], label
            assert (data["title"], data["github_url"], data["author"]) == (
                pr["title"],
                pr["html_url"],
                pr["user"]["login"],
            ), label
            assert data["branch"] == pr["head"]["ref"], label
            if event_type == "pr.closed":
                assert data["status"] == ("merged" if pr["merged"] else "closed"), label
        else:
            issue = payload["issue"]
            assert data["issue_id"] == str(issue["id"]) and data["issue_number"] == issue["number"], label
            assert (data["title"], data["github_url"], data.get("author")) == (
                issue["title"],
                issue["html_url"],
                (issue.get("user") or {}).get("login"),
            ), label
            closed = event_type == "issue.closed" or issue.get("state") == "closed"
            assert data["status"] == ("closed" if closed else "open"), label
        if event_type in ("pr.updated", "issue.updated"):
            assert data["changes"]["action"] == payload["action"], label
    await assert_nothing_more(watcher)
    # exactly the announced events, in the order they were announced
    assert [(e["type"], e["id"]) for e in watcher.github_events()] == [(t, i) for t, i, _ in announced]


async def test_a_project_matches_its_repository_by_any_address(gh, subscribe):
    """The project's https address in any case, with ``.git``, a trailing ``/``, ``www.`` or
    ``http``; the delivery's repository named by any of its addresses (an ssh one alone, too)."""
    token = make_token()
    opened = example("pull_request", "opened")
    cases: list[tuple[str, dict[str, Any]]] = []
    for project_form, repository in (
        ("https://github.com/{o}/{n}", None),
        ("https://GITHUB.COM/{O}/{N}", None),
        ("https://github.com/{o}/{n}.git", None),
        ("https://github.com/{O}/{n}/", None),
        ("http://www.github.com/{o}/{n}", None),
        ("https://github.com/{o}/{n}", {"ssh_url": "git@github.com:{O}/{N}.git"}),
        ("https://github.com/{o}/{n}", {"clone_url": "https://github.com/{o}/{n}.git"}),
        ("https://github.com/{o}/{n}", {"git_url": "git://github.com/{o}/{n}.git"}),
        ("https://github.com/{o}/{n}", {"full_name": "{O}/{N}"}),
        (
            "https://ghe.example.com/{o}/{n}.git",
            {"html_url": "https://GHE.example.com/{O}/{N}", "full_name": "{o}/{n}"},
        ),
    ):
        owner, name = fresh_owner(), f"Repo-{uuid4().hex[:6]}"

        def fill(text: str, owner: str = owner, name: str = name) -> str:
            return text.format(o=owner, n=name, O=owner.upper(), N=name.upper())

        payload = in_repository(opened, owner, name)
        if repository is not None:
            payload["repository"] = {
                "id": 1,
                "name": name,
                "private": False,
                **{key: fill(value) for key, value in repository.items()},
            }
        cases.append((await new_project(gh, token, fill(project_form)), payload))
    watcher = await subscribe(token, *(project for project, _ in cases))
    for project, payload in cases:
        response = await deliver(gh, "pull_request", payload)
        assert response.status_code == 200, (payload["repository"], response.text)
        [announced] = response.json()["events"]
        assert announced["project_id"] == project, payload["repository"]
        event = await watcher.expect("pr.created")
        assert (event["id"], event["data"]["project_id"]) == (announced["event_id"], project)
    await assert_nothing_more(watcher)


# --- ignored -----------------------------------------------------------------------------------


async def test_a_repository_no_project_has_is_ignored_with_its_name(gh, subscribe):
    token = make_token()
    owner = fresh_owner()
    project = await new_project(gh, token, f"https://github.com/{owner}/known")
    watcher = await subscribe(token, project)
    for payload, kind in (
        (in_repository(example("pull_request", "opened"), owner, "unknown"), "pull_request"),
        (in_repository(example("issues", "opened"), f"{owner}-other", "known"), "issues"),
        # the same owner/name on another host (GitHub Enterprise) is another repository
        (in_repository(example("issues", "deleted"), owner, "known", host="ghe.example.com"), "issues"),
    ):
        response = await deliver(gh, kind, payload)
        assert response.status_code == 202, response.text
        answer = response.json()
        key = normalize_repository(payload["repository"]["html_url"])
        assert answer["status"] == "ignored" and key in answer["reason"], answer
        assert "repository_url" in answer["reason"]
    await assert_nothing_more(watcher)


async def test_other_events_actions_and_bodies_are_ignored_with_a_reason(gh, subscribe):
    token = make_token()
    owner = fresh_owner()
    project = await new_project(gh, token, f"https://github.com/{owner}/repo")
    watcher = await subscribe(token, project)
    pushes = examples("push")
    assert pushes
    for push in pushes:
        if "repository" in push:
            push = in_repository(push, owner, "repo")  # a project's repository: ignored all the same
        response = await deliver(gh, "push", push)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "ignored" and "'push'" in response.json()["reason"]
    for kind in ("star", "issue_comment", "Pull_Request", ""):
        response = await deliver(gh, kind, in_repository(example("issues", "opened"), owner, "repo"))
        assert (response.status_code, response.json()["status"]) == (202, "ignored"), kind
        assert "not one this service publishes" in response.json()["reason"]
    missing_header = await deliver(gh, None, in_repository(example("issues", "opened"), owner, "repo"))
    assert (missing_header.status_code, missing_header.json()["status"]) == (202, "ignored")

    # an issues delivery about a pull request (GitHub sends its changes as pull_request ones)
    milestoned = in_repository(example("issues", "milestoned"), owner, "repo")
    response = await deliver(gh, "issues", milestoned, delivery=None)
    assert response.status_code == 202 and "pull request" in response.json()["reason"]

    broken = in_repository(example("pull_request", "opened"), owner, "repo")
    del broken["pull_request"]["user"]
    no_repository = example("issues", "opened")
    del no_repository["repository"]
    huge_id = in_repository(example("pull_request", "opened"), owner, "repo")
    huge_id["pull_request"]["id"] = 10**200  # a whole number, but longer than an id may be
    for kind, payload, says in (
        ("pull_request", broken, "pull_request.user"),
        ("issues", no_repository, "repository"),
        ("pull_request", {"action": "opened"}, "repository"),
        ("pull_request", huge_id, "pr.created"),
    ):
        response = await deliver(gh, kind, payload)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "ignored" and says in response.json()["reason"], response.json()
    # a delivery that does not fit its event is not recorded as handled: GitHub's redelivery of it
    # is answered as it was (not as a duplicate of a publication that never happened)
    delivery = str(uuid4())
    answers = [(await deliver(gh, "pull_request", huge_id, delivery=delivery)) for _ in range(2)]
    assert [(a.status_code, a.json()) for a in answers] == [(202, answers[0].json())] * 2
    assert "does not fit the pr.created event" in answers[0].json()["reason"]
    await assert_nothing_more(watcher)


# --- deduplication -----------------------------------------------------------------------------


async def test_a_redelivery_publishes_nothing(gh, subscribe):
    token = make_token()
    owner = fresh_owner()
    project = await new_project(gh, token, f"https://github.com/{owner}/repo")
    watcher = await subscribe(token, project)
    payload = in_repository(example("issues", "opened"), owner, "repo")
    delivery = str(uuid4())

    first = await deliver(gh, "issues", payload, delivery=delivery)
    assert first.status_code == 200 and first.json()["status"] == "published", first.text
    [announced] = first.json()["events"]
    assert (await watcher.expect("issue.created"))["id"] == announced["event_id"]
    for _ in range(2):
        again = await deliver(gh, "issues", payload, delivery=delivery)
        assert again.status_code == 200, again.text
        assert again.json() == {"status": "duplicate", "delivery": delivery, "events": [announced]}
    await assert_nothing_more(watcher)

    # the same body under another delivery id is another delivery
    other = await deliver(gh, "issues", payload)
    assert other.json()["status"] == "published"
    assert (await watcher.expect("issue.created"))["id"] == other.json()["events"][0]["event_id"]

    # a retry arriving while the first is being handled waits for it, and publishes nothing
    racing = str(uuid4())
    answers = await asyncio.gather(*(deliver(gh, "issues", payload, delivery=racing) for _ in range(4)))
    assert sorted(a.json()["status"] for a in answers) == ["duplicate"] * 3 + ["published"], [a.text for a in answers]
    [published] = [a.json() for a in answers if a.json()["status"] == "published"]
    assert all(a.json()["events"] == published["events"] for a in answers)
    assert (await watcher.expect("issue.created"))["id"] == published["events"][0]["event_id"]
    await assert_nothing_more(watcher)


async def test_a_delivery_for_a_project_needs_a_delivery_id(gh, subscribe):
    token = make_token()
    owner = fresh_owner()
    project = await new_project(gh, token, f"https://github.com/{owner}/repo")
    watcher = await subscribe(token, project)
    payload = in_repository(example("pull_request", "closed"), owner, "repo")
    for delivery in (None, "", "x" * 256):
        response = await deliver(gh, "pull_request", payload, delivery=delivery)
        assert error_of(response) == (400, "DELIVERY_ID_MISSING"), (delivery, response.text)
    await assert_nothing_more(watcher)
    longest = await deliver(gh, "pull_request", payload, delivery="x" * 255)
    assert longest.status_code == 200, longest.text
    assert (await watcher.expect("pr.closed"))["id"] == longest.json()["events"][0]["event_id"]


async def test_a_redelivery_after_a_restart_on_the_same_database_publishes_nothing(github_server):
    database_url = sqlite_url()
    token = make_token()
    owner = fresh_owner()
    payload = in_repository(example("pull_request", "reopened"), owner, "repo")
    delivery = str(uuid4())

    async with serving(database_url=database_url) as first_run, clients_of(first_run.url) as subscribe:
        async with httpx.AsyncClient(base_url=first_run.url, timeout=10) as http:
            project = await new_project(http, token, f"https://github.com/{owner}/repo")
            watcher = await subscribe(token, project)
            first = await deliver(http, "pull_request", payload, delivery=delivery)
            assert first.json()["status"] == "published", first.text
            assert (await watcher.expect("pr.updated"))["id"] == first.json()["events"][0]["event_id"]
            again = await deliver(http, "pull_request", payload, delivery=delivery)
            assert again.json() == {**first.json(), "status": "duplicate"}
            await assert_nothing_more(watcher)

    async with serving(database_url=database_url) as second_run, clients_of(second_run.url) as subscribe:
        async with httpx.AsyncClient(base_url=second_run.url, timeout=10) as http:
            watcher = await subscribe(token, project)  # the project is in the database still
            after_restart = await deliver(http, "pull_request", payload, delivery=delivery)
            assert after_restart.status_code == 200, after_restart.text
            assert after_restart.json() == {**first.json(), "status": "duplicate"}
            await assert_nothing_more(watcher)
            assert watcher.github_events() == []
            fresh = await deliver(http, "pull_request", payload)  # a new delivery is published
            assert fresh.json()["status"] == "published", fresh.text
            assert (await watcher.expect("pr.updated"))["id"] == fresh.json()["events"][0]["event_id"]

    # the module's server has the broadcaster again
    async with clients_of(github_server.url) as subscribe:
        watcher = await subscribe(make_token())
        await marker(watcher)


# --- several projects --------------------------------------------------------------------------


async def test_every_project_of_the_repository_gets_the_event(gh, subscribe):
    owner = fresh_owner()
    first_owner, second_owner, third_owner = make_token(), make_token(), make_token()
    first = await new_project(gh, first_owner, f"https://github.com/{owner}/shared")
    second = await new_project(gh, second_owner, f"https://GitHub.com/{owner.upper()}/Shared.git")
    elsewhere = await new_project(gh, third_owner, f"https://github.com/{owner}/other")
    first_client = await subscribe(first_owner, first)
    second_client = await subscribe(second_owner, second)
    third_client = await subscribe(third_owner, elsewhere)
    payload = in_repository(example("pull_request", "opened"), owner, "shared")

    response = await deliver(gh, "pull_request", payload)
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert sorted((e["type"], e["project_id"]) for e in events) == sorted(
        [("pr.created", first), ("pr.created", second)]
    )
    assert len({e["event_id"] for e in events}) == 2
    by_project = {e["project_id"]: e for e in events}
    for client, announced in ((first_client, by_project[first]), (second_client, by_project[second])):
        event = await client.expect("pr.created")
        assert (event["id"], event["data"]["project_id"]) == (announced["event_id"], announced["project_id"])
        assert event["data"]["title"] == payload["pull_request"]["title"]
    await assert_nothing_more(first_client, second_client, third_client)

    # the second project moves to another repository: the shared one's deliveries reach the first only
    await link_repository(gh, second, f"https://github.com/{owner}/other")
    await second_client.expect("project.updated")
    edited = in_repository(example("pull_request", "closed"), owner, "shared")
    response = await deliver(gh, "pull_request", edited)
    assert [e["project_id"] for e in response.json()["events"]] == [first]
    assert (await first_client.expect("pr.closed"))["id"] == response.json()["events"][0]["event_id"]
    other = await deliver(gh, "issues", in_repository(example("issues", "opened"), owner, "other"))
    assert sorted(e["project_id"] for e in other.json()["events"]) == sorted([second, elsewhere])
    assert (await second_client.expect("issue.created"))["data"]["project_id"] == second
    assert (await third_client.expect("issue.created"))["data"]["project_id"] == elsewhere
    await assert_nothing_more(first_client, second_client, third_client)
