"""GitHub webhook deliveries -> service events (apps.api.github.events), against GitHub's own
example payloads from ``@octokit/webhooks-examples`` (pinned in package.json; ``npm ci`` installs
it, and without it these tests fail rather than skip)."""

from __future__ import annotations

import copy
import inspect
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from apps.api.events.broadcaster import Broadcaster
from apps.api.github.events import Ignored, Mapped, map_delivery, normalize_repository, repository_keys
from apps.api.websocket.models import PAYLOADS, EventType

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES_FILE = REPO_ROOT / "node_modules" / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
MISSING = (
    f"{EXAMPLES_FILE} is missing: run `npm ci` in {REPO_ROOT} "
    "(package.json pins @octokit/webhooks-examples, GitHub's example webhook payloads)"
)


def _load() -> dict[str, list[dict[str, Any]]]:
    if not EXAMPLES_FILE.is_file():
        return {}
    entries = json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))
    return {entry["name"]: entry["examples"] for entry in entries}


EXAMPLES = _load()


def _params(*names: str) -> list[Any]:
    """One param per example of those events, with ids like ``pull_request-opened-0``."""
    if not EXAMPLES:
        return [pytest.param(None, None, id="examples-missing")]
    params, seen = [], Counter[str]()
    for name in names:
        for payload in EXAMPLES.get(name, []):
            label = f"{name}-{payload.get('action', 'none')}"
            params.append(pytest.param(name, payload, id=f"{label}-{seen[label]}"))
            seen[label] += 1
    return params


def example(name: str, action: str | None) -> dict[str, Any]:
    """A fresh copy of the first example of ``name`` with ``action`` (None: pings have none)."""
    if not EXAMPLES:
        pytest.fail(MISSING)
    return copy.deepcopy(next(p for p in EXAMPLES[name] if p.get("action") == action))


def expected_type(name: str, action: str) -> EventType:
    if name == "pull_request":
        return {"opened": EventType.PR_CREATED, "closed": EventType.PR_CLOSED}.get(action, EventType.PR_UPDATED)
    closing = {"opened": EventType.ISSUE_CREATED, "closed": EventType.ISSUE_CLOSED, "deleted": EventType.ISSUE_CLOSED}
    return closing.get(action, EventType.ISSUE_UPDATED)


def mapped(name: str, payload: dict[str, Any]) -> Mapped:
    result = map_delivery(name, payload)
    assert isinstance(result, Mapped), result
    return result


def check_publishable(result: Mapped) -> None:
    """The fields fit the event's model and the broadcaster method's keyword arguments."""
    project_id = uuid4()
    data = PAYLOADS[result.event_type].model_validate({**result.fields, "project_id": project_id})
    json.dumps(data.model_dump(mode="json"))
    method = getattr(Broadcaster(), result.method)
    inspect.signature(method).bind(**result.fields, project_id=project_id)
    assert result.method == "broadcast_" + result.event_type.value.replace(".", "_")


# --- every example -------------------------------------------------------------------------


def test_examples_are_installed():
    if not EXAMPLES:
        pytest.fail(MISSING)
    assert len(EXAMPLES["pull_request"]) >= 20 and len(EXAMPLES["issues"]) >= 20


@pytest.mark.parametrize(("name", "payload"), _params("pull_request", "issues"))
def test_every_example_maps_to_a_valid_event(name: str | None, payload: dict[str, Any] | None):
    if name is None or payload is None:
        pytest.fail(MISSING)
    result = map_delivery(name, payload)
    if isinstance(result, Ignored):
        # The only examples ignored: ``issues`` deliveries about a pull request (milestoned and
        # demilestoned), which GitHub now sends as pull_request deliveries.
        assert result.reason
        assert name == "issues" and payload["issue"].get("pull_request") is not None, result.reason
        assert "pull request" in result.reason
        return
    assert result.event_type is expected_type(name, payload["action"])
    check_publishable(result)
    assert result.repository == repository_keys(payload["repository"])
    assert len(result.repository) == 1
    if result.event_type in (EventType.PR_UPDATED, EventType.ISSUE_UPDATED):
        assert result.fields["changes"]["action"] == payload["action"]
        assert len(json.dumps(result.fields["changes"])) < 2_000


def test_only_pull_requests_filed_as_issues_are_ignored():
    if not EXAMPLES:
        pytest.fail(MISSING)
    ignored = {
        (name, payload["action"])
        for name in ("pull_request", "issues")
        for payload in EXAMPLES[name]
        if isinstance(map_delivery(name, payload), Ignored)
    }
    assert ignored == {("issues", "milestoned"), ("issues", "demilestoned")}


# --- pull requests -------------------------------------------------------------------------


def test_opened_pull_request():
    payload = example("pull_request", "opened")
    pr = payload["pull_request"]
    result = mapped("pull_request", payload)
    assert result.event_type is EventType.PR_CREATED and result.method == "broadcast_pr_created"
    assert result.fields == {
        "pr_id": pr["id"],
        "pr_number": pr["number"],
        "title": pr["title"],
        "description": pr["body"],
        "author": pr["user"]["login"],
        "branch": pr["head"]["ref"],
        "github_url": pr["html_url"],
        "created_at": datetime(2019, 5, 15, 15, 20, 33, tzinfo=UTC),
        "status": "open",
    }
    assert result.repository == {"github.com/codertocat/hello-world"}


def test_closed_pull_request_unmerged_and_merged():
    payload = example("pull_request", "closed")
    assert payload["pull_request"]["merged"] is False
    closed = mapped("pull_request", payload)
    assert closed.event_type is EventType.PR_CLOSED
    assert closed.fields["status"] == "closed"
    assert closed.fields["closed_at"] == datetime(2019, 5, 15, 15, 21, 18, tzinfo=UTC)

    payload["pull_request"].update(merged=True, merged_at="2019-05-15T15:21:18Z")
    merged = mapped("pull_request", payload)
    assert merged.event_type is EventType.PR_CLOSED and merged.fields["status"] == "merged"
    check_publishable(merged)


@pytest.mark.parametrize(("merged", "status"), [(False, "closed"), (True, "merged")])
def test_update_of_a_closed_pull_request_keeps_its_status(merged: bool, status: str):
    payload = example("pull_request", "labeled")
    payload["pull_request"].update(state="closed", merged=merged)
    result = mapped("pull_request", payload)
    assert result.event_type is EventType.PR_UPDATED
    assert result.fields["status"] == status
    assert result.fields["changes"] == {"action": "labeled"}
    check_publishable(result)


def test_reopened_pull_request_is_open_again():
    result = mapped("pull_request", example("pull_request", "reopened"))
    assert result.event_type is EventType.PR_UPDATED and result.fields["status"] == "open"


def test_edited_pull_request_carries_githubs_changes():
    payload = example("pull_request", "opened")
    payload["action"] = "edited"
    payload["changes"] = {"title": {"from": "Old title"}, "base": {"ref": {"from": "main"}, "sha": {"from": "abc"}}}
    result = mapped("pull_request", payload)
    assert result.event_type is EventType.PR_UPDATED
    assert result.fields["changes"] == {"action": "edited", **payload["changes"]}
    check_publishable(result)


def test_long_title_and_body_are_cut_to_fit():
    payload = example("pull_request", "opened")
    payload["pull_request"].update(title="t" * 600, body="b" * 70_000)
    result = mapped("pull_request", payload)
    assert len(result.fields["title"]) == 512 and len(result.fields["description"]) == 65_536
    check_publishable(result)


# --- issues --------------------------------------------------------------------------------


def test_opened_issue():
    payload = example("issues", "opened")
    issue = payload["issue"]
    result = mapped("issues", payload)
    assert result.event_type is EventType.ISSUE_CREATED and result.method == "broadcast_issue_created"
    assert result.fields == {
        "issue_id": issue["id"],
        "issue_number": issue["number"],
        "title": issue["title"],
        "description": issue["body"],
        "status": "open",
        "author": issue["user"]["login"],
        "github_url": issue["html_url"],
    }
    assert "assigned_to" not in result.fields and "created_by" not in result.fields


@pytest.mark.parametrize("action", ["closed", "deleted"])
def test_closed_and_deleted_issues_are_closed(action: str):
    payload = example("issues", "deleted")
    payload["action"] = action
    result = mapped("issues", payload)
    assert result.event_type is EventType.ISSUE_CLOSED
    data = PAYLOADS[result.event_type].model_validate({**result.fields, "project_id": uuid4()})
    assert data.model_dump()["status"] == "closed"


def test_reopened_issue_is_open():
    result = mapped("issues", example("issues", "reopened"))
    assert result.event_type is EventType.ISSUE_UPDATED and result.fields["status"] == "open"


def test_transferred_issue_names_where_it_went_briefly():
    result = mapped("issues", example("issues", "transferred"))
    changes = result.fields["changes"]
    assert changes["action"] == "transferred"
    assert changes["new_repository"]["full_name"] == "Codertocat/Hello-World"
    assert changes["new_issue"]["html_url"] == "https://github.com/Codertocat/Hello-World/issues/1"
    assert "labels_url" not in changes["new_issue"]


def test_issue_that_is_a_pull_request_is_ignored():
    result = map_delivery("issues", example("issues", "milestoned"))
    assert isinstance(result, Ignored) and "#2 is a pull request" in result.reason


# --- other events and malformed bodies -----------------------------------------------------


@pytest.mark.parametrize("event", ["push", "star", "issue_comment", ""])
def test_other_events_are_ignored(event: str):
    result = map_delivery(event, {"action": "created", "repository": {"full_name": "o/r"}})
    assert result == Ignored(f"GitHub event {event!r} is not one this service publishes (pull_request, issues)")


def test_ping_is_ignored_with_a_reason():
    result = map_delivery("ping", example("ping", None) if EXAMPLES else {})
    assert isinstance(result, Ignored) and "ping" in result.reason


MALFORMED: list[tuple[str, Any]] = [
    ("pull_request", {}),
    ("pull_request", {"action": "opened"}),
    ("pull_request", {"action": "opened", "pull_request": "x"}),
    ("pull_request", {"action": "opened", "pull_request": {}}),
    ("pull_request", {"action": 3, "pull_request": {}}),
    ("pull_request", None),
    ("pull_request", []),
    ("pull_request", "text"),
    ("issues", {}),
    ("issues", {"action": "opened"}),
    ("issues", {"action": "opened", "issue": "x"}),
    ("issues", {"action": "opened", "issue": {"number": "1"}, "repository": {"full_name": "o/r"}}),
    ("issues", {"action": "opened", "issue": {"number": True}, "repository": {"full_name": "o/r"}}),
]


@pytest.mark.parametrize(("event", "payload"), MALFORMED, ids=[f"{e}-{i}" for i, (e, _) in enumerate(MALFORMED)])
def test_malformed_payloads_are_ignored(event: str, payload: Any):
    result = map_delivery(event, payload)
    assert isinstance(result, Ignored) and result.reason


@pytest.mark.parametrize(
    ("name", "action", "path", "value"),
    [
        ("pull_request", "opened", ("repository",), None),
        ("pull_request", "opened", ("repository",), {"url": "https://api.github.com/repos/o/r"}),
        ("pull_request", "opened", ("pull_request", "title"), None),
        ("pull_request", "opened", ("pull_request", "title"), ""),
        ("pull_request", "opened", ("pull_request", "user"), None),
        ("pull_request", "opened", ("pull_request", "head", "ref"), 5),
        ("pull_request", "opened", ("pull_request", "created_at"), "yesterday"),
        ("pull_request", "closed", ("pull_request", "closed_at"), "soon"),
        ("pull_request", "opened", ("pull_request", "html_url"), "h" * 3000),
        ("pull_request", "opened", ("pull_request", "body"), ["not", "text"]),
        ("issues", "opened", ("issue", "id"), None),
        ("issues", "opened", ("issue", "title"), 1),
    ],
)
def test_missing_or_wrong_parts_are_named(name: str, action: str, path: tuple[str, ...], value: Any):
    payload = example(name, action)
    *parents, last = path
    target = payload
    for key in parents:
        target = target[key]
    target[last] = value
    result = map_delivery(name, payload)
    assert isinstance(result, Ignored)
    assert "cannot be published" in result.reason and path[-1] in result.reason


@pytest.mark.parametrize(("name", "part"), [("pull_request", "pull_request"), ("issues", "issue")])
def test_any_part_of_any_type_never_raises(name: str, part: str):
    base = example(name, "opened")
    for key in list(base[part]):
        values: list[Any] = [None, "x", "", 0, -1, 1.5, True, [], {}, {"node_id": "x"}]
        for value in values:
            payload = copy.deepcopy(base)
            payload[part][key] = value
            result = map_delivery(name, payload)
            if isinstance(result, Mapped):
                check_publishable(result)
            else:
                assert result.reason


# --- repositories --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("https://github.com/Owner/Repo", "github.com/owner/repo"),
        ("https://github.com/Owner/Repo.git", "github.com/owner/repo"),
        ("git@github.com:Owner/Repo.git", "github.com/owner/repo"),
        ("ssh://git@github.com/Owner/Repo.git", "github.com/owner/repo"),
        ("git://github.com/Owner/Repo.git", "github.com/owner/repo"),
        ("http://github.com/owner/repo/", "github.com/owner/repo"),
        ("Owner/Repo", "github.com/owner/repo"),
        ("  https://github.com/Owner/Repo  ", "github.com/owner/repo"),
        ("https://www.github.com/Owner/Repo", "github.com/owner/repo"),
        ("ssh://git@github.com:22/Owner/Repo.git", "github.com/owner/repo"),
        ("org-6811672@github.com:octo-org/octo-repo.git", "github.com/octo-org/octo-repo"),
        ("https://GHE.example.com/Team/My_App.js", "ghe.example.com/team/my_app.js"),
    ],
)
def test_normalize_repository(text: str, key: str):
    assert normalize_repository(text) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "not a url",
        "https://github.com/onlyowner",
        "https://github.com/",
        "https://api.github.com/repos/owner/repo",
        "https://github.com/owner/repo/pull/2",
        "ftp://github.com/owner/repo",
        "http://[::1/owner/repo",
        "https:///owner/repo",
        "owner/",
        "/owner/repo",
        "owner/repo/extra",
        "owner/..",
        "https://github.com/owner/.git",
        "git@github.com:onlyowner.git",
        "https://github.com/" + "o" * 3000 + "/repo",
    ],
)
def test_normalize_repository_rejects(text: str):
    assert normalize_repository(text) is None


@pytest.mark.parametrize(("name", "payload"), _params("pull_request", "issues", "ping"))
def test_each_examples_repository_has_one_key(name: str | None, payload: dict[str, Any] | None):
    if name is None or payload is None:
        pytest.fail(MISSING)
    repository = payload.get("repository")
    if repository is None:  # an organization's ping
        assert name == "ping"
        return
    keys = repository_keys(repository)
    assert keys == {normalize_repository(repository["html_url"])}
    assert normalize_repository(repository["full_name"]) in keys


def test_repository_keys_skip_the_api_address_and_keep_the_enterprise_host():
    assert repository_keys({"url": "https://api.github.com/repos/o/r"}) == frozenset()
    assert repository_keys({"full_name": "O/R"}) == {"github.com/o/r"}
    enterprise = {
        "full_name": "Team/App",
        "html_url": "https://ghe.example.com/Team/App",
        "ssh_url": "git@ghe.example.com:Team/App.git",
        "url": "https://ghe.example.com/api/v3/repos/Team/App",
    }
    assert repository_keys(enterprise) == {"ghe.example.com/team/app"}
    assert repository_keys({"html_url": 5, "full_name": None}) == frozenset()
    assert repository_keys("o/r") == frozenset()  # type: ignore[arg-type]
