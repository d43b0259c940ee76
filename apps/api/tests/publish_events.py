"""Publishes one event of every type from a process that serves no clients (as a Temporal
activity or a webhook worker would), then a marker. Used by test_redis_fanout.py.

    REDIS_URL=... python apps/api/tests/publish_events.py PROJECT USER AGENT MARKER_AGENT
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from apps.api.events.broadcaster import get_broadcaster


async def main(project: UUID, user: UUID, agent: UUID, marker: UUID) -> None:
    b = get_broadcaster()
    pr = {
        "pr_id": 7,
        "project_id": project,
        "title": "t",
        "author": "octocat",
        "branch": "b",
        "github_url": "https://github.com/u/r/pull/7",
        "created_at": datetime.now(UTC),
    }
    issue = {"issue_id": "9", "project_id": project, "title": "t"}
    await b.broadcast_project_updated(
        project_id=project, project_name="P", status="active", updated_by=user, changes={"status": "x"}
    )
    await b.broadcast_agent_status_changed(agent_id=agent, agent_name="A", status="busy", availability=50)
    await b.broadcast_agent_connected(agent_id=agent, agent_name="A")
    await b.broadcast_agent_disconnected(agent_id=agent, agent_name="A")
    workflow = uuid4()
    await b.broadcast_workflow_started(workflow_id=workflow, project_id=project)
    await b.broadcast_workflow_progress(
        workflow_id=workflow, status="running", progress=50, current_step="s", total_steps=2
    )
    await b.broadcast_workflow_completed(workflow_id=workflow)
    await b.broadcast_workflow_failed(workflow_id=uuid4(), error="boom", user_id=user)
    await b.broadcast_pr_created(**pr)
    await b.broadcast_pr_updated(**pr)
    await b.broadcast_pr_closed(**pr)
    await b.broadcast_issue_created(**issue)
    await b.broadcast_issue_updated(**issue)
    await b.broadcast_issue_closed(**issue)
    await b.broadcast_ai_suggestion(
        suggestion_id=uuid4(), target_type="pr", target_id="7", category="refactor", title="t",
        description="d", severity="info", confidence=0.5, project_id=project,
    )  # fmt: skip
    await b.broadcast_ai_analysis_complete(
        analysis_id=uuid4(), target_type="code", target_id="x", summary="s", project_id=project
    )
    await b.broadcast_project_deleted(project_id=project, deleted_by=user)
    await b.broadcast_agent_connected(agent_id=marker, agent_name="marker")
    print("published")


if __name__ == "__main__":
    asyncio.run(main(*(UUID(arg) for arg in sys.argv[1:5])))
