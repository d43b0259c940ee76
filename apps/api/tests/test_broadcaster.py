"""The broadcaster against a real server: the card's calls verbatim, routing of every event type,
validation, and one broadcaster per process however it is imported."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from apps.api.events.broadcaster import (
    Broadcaster,
    BroadcasterNotConfigured,
    EventValidationError,
    get_broadcaster,
)
from apps.api.tests.support import REPO_ROOT, WsClient, create_project, make_token, marker


async def joined(connect, http, *, admin: bool = False) -> tuple[WsClient, UUID, str]:
    """A connected user who owns a fresh project and is subscribed to its room."""
    user = uuid4()
    token = make_token(user, roles=["admin"] if admin else ())
    project_id = await create_project(http, token)
    client = await connect(token)
    assert (await client.call("subscribe", {"room": f"project:{project_id}"}))["status"] == "success"
    return client, user, project_id


async def test_the_cards_four_calls_run_verbatim_and_arrive(connect, http):
    client, user, project = await joined(connect, http)
    agent = str(uuid4())
    assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
    workflow = str(uuid4())
    broadcaster = get_broadcaster()
    await broadcaster.broadcast_workflow_started(workflow_id=UUID(workflow), project_id=UUID(project))
    await client.expect("workflow.started")

    # --- the card's "Broadcasting from Backend", ids filled in ---
    await broadcaster.broadcast_project_updated(
        project_id=UUID(project),
        project_name="My Project",
        repository_url="https://github.com/...",
        status="active",
        updated_by=UUID(str(user)),
        changes={"status": "updated"},
    )

    # Workflow progress
    await broadcaster.broadcast_workflow_progress(
        workflow_id=UUID(workflow), status="running", progress=50, current_step="Step 2", total_steps=5
    )

    # Agent status
    await broadcaster.broadcast_agent_status_changed(
        agent_id=UUID(agent), agent_name="GPT-4", status="online", availability=85
    )

    # AI suggestion
    await broadcaster.broadcast_ai_suggestion(
        suggestion_id=UUID(str(uuid4())),
        target_type="pr",
        target_id=UUID(str(uuid4())),
        category="optimization",
        title="Simplify function",
        description="...",
        severity="info",
        confidence=0.92,
        project_id=UUID(project),
    )
    # --- end of the card's calls ---

    updated = await client.expect("project.updated")
    assert updated["source"] == "project_service"
    assert updated["data"]["changes"] == {"status": "updated", "fields": ["status"]}
    assert updated["data"]["updated_by"] == str(user)
    progress = await client.expect("workflow.progress")
    assert (progress["data"]["workflow_id"], progress["data"]["progress"]) == (workflow, 50)
    assert (await client.expect("agent.status_changed"))["data"]["agent_name"] == "GPT-4"
    suggestion = await client.expect("ai.suggestion")
    assert suggestion["data"]["confidence"] == 0.92
    assert suggestion["data"]["project_id"] == project


def pr_fields(project: str) -> dict:
    return {
        "pr_id": 1347,
        "project_id": UUID(project),
        "title": "Add retries",
        "author": "octocat",
        "branch": "feature/retries",
        "github_url": "https://github.com/user/repo/pull/1347",
        "created_at": datetime(2024, 11, 8, 10, 30, tzinfo=UTC),
    }


def issue_fields(project: str) -> dict:
    return {"issue_id": "42", "project_id": UUID(project), "title": "Crash on start", "priority": "high"}


@pytest.mark.parametrize(
    ("method", "event", "fields"),
    [
        ("broadcast_pr_created", "pr.created", pr_fields),
        ("broadcast_pr_updated", "pr.updated", lambda p: {**pr_fields(p), "changes": {"title": "x"}}),
        ("broadcast_pr_closed", "pr.closed", lambda p: {**pr_fields(p), "status": "merged"}),
        ("broadcast_issue_created", "issue.created", issue_fields),
        ("broadcast_issue_updated", "issue.updated", lambda p: {**issue_fields(p), "status": "in_progress"}),
        ("broadcast_issue_closed", "issue.closed", issue_fields),
        (
            "broadcast_ai_analysis_complete",
            "ai.analysis_complete",
            lambda p: {
                "analysis_id": uuid4(),
                "target_type": "code",
                "target_id": "src/app.py",
                "summary": "3 findings",
                "suggestions_count": 3,
                "project_id": UUID(p),
            },
        ),
        (
            "broadcast_workflow_completed",
            "workflow.completed",
            lambda p: {"workflow_id": uuid4(), "duration_seconds": 12.5, "project_id": UUID(p)},
        ),
        (
            "broadcast_workflow_failed",
            "workflow.failed",
            lambda p: {"workflow_id": uuid4(), "error": "boom", "project_id": UUID(p)},
        ),
    ],
)
async def test_project_scoped_events_reach_members_only(connect, http, method, event, fields):
    member, _, project = await joined(connect, http)
    outsider = await connect(make_token())
    sent = await getattr(get_broadcaster(), method)(**fields(project))
    received = await member.expect(event)
    assert received["id"] == sent.id
    assert received["type"] == event
    assert received["data"]["project_id"] == project
    await marker(outsider)
    assert outsider.received(event) == []


@pytest.mark.parametrize(
    ("method", "event", "fields"),
    [
        ("broadcast_agent_connected", "agent.connected", {"agent_name": "A", "capabilities": ["code"]}),
        ("broadcast_agent_disconnected", "agent.disconnected", {"agent_name": "A", "reason": "shutdown"}),
        (
            "broadcast_agent_status_changed",
            "agent.status_changed",
            {"agent_name": "A", "status": "busy", "availability": 10},
        ),
    ],
)
async def test_agent_events_go_to_the_agent_room_only(connect, method, event, fields):
    watcher = await connect(make_token())
    other = await connect(make_token())
    agent = uuid4()
    await watcher.call("subscribe", {"room": f"agent:{agent}"})
    await getattr(get_broadcaster(), method)(agent_id=agent, **fields)
    assert (await watcher.expect(event))["data"]["agent_id"] == str(agent)
    await marker(other)
    assert other.received(event) == []


async def test_project_events_go_to_the_project_room_only(connect, http):
    """Not to the acting user's own room: a tab of theirs that is not subscribed gets nothing, and a
    client that unsubscribes stops receiving them."""
    client, user, project = await joined(connect, http)  # in both project:<id> and user:<user>
    second_tab = await connect(make_token(user))  # same user, not subscribed to the project
    broadcaster = get_broadcaster()
    await broadcaster.broadcast_project_updated(
        project_id=UUID(project), project_name="P", status="active", updated_by=user, changes={"status": "x"}
    )
    await client.expect("project.updated")
    assert (await client.call("unsubscribe", {"room": f"project:{project}"}))["status"] == "success"
    await broadcaster.broadcast_project_updated(
        project_id=UUID(project), project_name="P", status="paused", updated_by=user, changes={"status": "paused"}
    )
    await broadcaster.broadcast_project_deleted(project_id=UUID(project), deleted_by=user)
    await marker(client, second_tab)
    assert client.received("project.updated") == [] and client.received("project.deleted") == []
    assert second_tab.received("project.updated") == [] and second_tab.received("project.deleted") == []


async def test_project_deleted_reaches_the_projects_room(connect, http):
    client, user, project = await joined(connect, http)
    await get_broadcaster().broadcast_project_deleted(project_id=UUID(project), deleted_by=user)
    assert (await client.expect("project.deleted"))["data"]["deleted_by"] == str(user)


async def test_workflow_without_project_follows_its_recorded_rooms(connect):
    user = uuid4()
    owner = await connect(make_token(user))
    stranger = await connect(make_token())
    workflow = uuid4()
    await get_broadcaster().broadcast_workflow_started(workflow_id=workflow, user_id=user, workflow_name="build")
    await owner.expect("workflow.started")
    await get_broadcaster().broadcast_workflow_progress(
        workflow_id=workflow, status="running", progress=10, current_step="lint", total_steps=3
    )
    assert (await owner.expect("workflow.progress"))["data"]["progress"] == 10
    await marker(stranger)
    assert stranger.received("workflow.started") == stranger.received("workflow.progress") == []


async def test_unowned_workflow_and_ai_events_go_to_admins_not_global(connect):
    admin = await connect(make_token(roles=["admin"]))
    user = await connect(make_token())
    await get_broadcaster().broadcast_workflow_progress(
        workflow_id=uuid4(), status="running", progress=1, current_step="s", total_steps=2
    )
    await get_broadcaster().broadcast_ai_suggestion(
        suggestion_id=uuid4(),
        target_type="code",
        target_id="x",
        category="security",
        title="t",
        description="d",
        severity="critical",
        confidence=0.5,
    )
    assert (await admin.expect("workflow.progress"))["data"]["progress"] == 1
    assert (await admin.expect("ai.suggestion"))["data"]["severity"] == "critical"
    await marker(user)
    assert user.received("workflow.progress") == user.received("ai.suggestion") == []


@pytest.mark.parametrize(
    ("method", "fields", "where"),
    [
        (
            "broadcast_workflow_progress",
            {"status": "running", "progress": 150, "current_step": "s", "total_steps": 5},
            "progress",
        ),
        (
            "broadcast_ai_suggestion",
            {
                "suggestion_id": uuid4(),
                "target_type": "pr",
                "target_id": "1",
                "category": "optimization",
                "title": "t",
                "description": "d",
                "severity": "info",
                "confidence": 2,
            },
            "confidence",
        ),
        ("broadcast_agent_status_changed", {"agent_name": "A", "status": "sleeping", "availability": 5}, "status"),
    ],
)
async def test_invalid_calls_raise_and_send_nothing(connect, method, fields, where):
    admin = await connect(make_token(roles=["admin"]))
    agent = uuid4()
    await admin.call("subscribe", {"room": f"agent:{agent}"})
    extra = {"agent_id": agent} if "agent" in method else {}
    if method == "broadcast_workflow_progress":
        extra = {"workflow_id": uuid4()}
    with pytest.raises(EventValidationError) as info:
        await getattr(get_broadcaster(), method)(**extra, **fields)
    assert where in str(info.value)
    assert isinstance(info.value, ValueError)
    await marker(admin)
    for event in ("workflow.progress", "ai.suggestion", "agent.status_changed"):
        assert admin.received(event) == []


async def test_a_broadcaster_with_nowhere_to_send_says_what_to_set():
    with pytest.raises(BroadcasterNotConfigured, match="REDIS_URL"):
        await Broadcaster().broadcast_agent_connected(agent_id=uuid4(), agent_name="A")


async def test_card_import_path_gives_the_same_broadcaster():
    code = (
        "from events.broadcaster import get_broadcaster\n"
        "import events.broadcaster as short\n"
        "import apps.api.events.broadcaster as canonical\n"
        "assert get_broadcaster() is canonical.get_broadcaster()\n"
        "assert short is canonical and short.Broadcaster is canonical.Broadcaster\n"
        "print('one broadcaster')\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=REPO_ROOT / "apps" / "api",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()
    assert output.decode().strip() == "one broadcaster"
