"""Examples of publishing every kind of event through the broadcaster.

Run it against a running service (several instances or one) that shares its Redis:

    REDIS_URL=redis://localhost:6379 python apps/api/events/example_usage.py --project <uuid>

In a process that serves no clients, ``get_broadcaster()`` publishes through Redis (and
``async with get_broadcaster():``, or ``await get_broadcaster().close()``, releases the connection
at the end); without ``REDIS_URL`` every call raises ``BroadcasterNotConfigured`` saying so. Inside the service (API
routes, webhooks) the same calls go straight to the local Socket.IO server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

if __name__ == "__main__" and not __package__:  # run as a script: make `apps.api` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from apps.api.events.broadcaster import get_broadcaster


async def project_updated(project_id: UUID, user_id: UUID) -> None:
    await get_broadcaster().broadcast_project_updated(
        project_id=project_id,
        project_name="My Project",
        repository_url="https://github.com/user/my-project",
        status="active",
        updated_by=user_id,
        changes={"status": "updated"},
    )


async def workflow_step(workflow_id: UUID) -> None:
    """The card's "In Temporal Workflows" function: only the workflow id is known here."""
    broadcaster = get_broadcaster()

    await broadcaster.broadcast_workflow_progress(
        workflow_id=workflow_id, status="running", progress=50, current_step="Processing", total_steps=10
    )


async def workflow_lifecycle(project_id: UUID, user_id: UUID) -> None:
    broadcaster = get_broadcaster()
    workflow_id = uuid4()
    await broadcaster.broadcast_workflow_started(
        workflow_id=workflow_id, project_id=project_id, user_id=user_id, workflow_name="deploy", total_steps=10
    )
    await workflow_step(workflow_id)
    await broadcaster.broadcast_workflow_completed(workflow_id=workflow_id, duration_seconds=42.0)


async def agent_status(agent_id: UUID) -> None:
    await get_broadcaster().broadcast_agent_status_changed(
        agent_id=agent_id, agent_name="GPT-4", status="online", availability=85
    )


async def pull_request_opened(project_id: UUID) -> None:
    await get_broadcaster().broadcast_pr_created(
        pr_id=1347,
        pr_number=42,
        project_id=project_id,
        title="Add retries to the fetcher",
        author="octocat",
        branch="feature/retries",
        github_url="https://github.com/user/my-project/pull/42",
        created_at=datetime.now(UTC),
    )


async def ai_suggestion(project_id: UUID) -> None:
    await get_broadcaster().broadcast_ai_suggestion(
        suggestion_id=uuid4(),
        target_type="pr",
        target_id="1347",
        category="optimization",
        title="Simplify function",
        description="The loop in fetch() can be a comprehension.",
        severity="info",
        confidence=0.92,
        project_id=project_id,
    )


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Publish one event of each family.")
    parser.add_argument("--project", type=UUID, default=uuid4(), help="project whose room receives the events")
    parser.add_argument("--user", type=UUID, default=uuid4(), help="the acting user")
    parser.add_argument("--agent", type=UUID, default=uuid4())
    args = parser.parse_args(argv)
    # A process that serves no clients opens a Redis connection at its first call: close it at the end.
    async with get_broadcaster():
        await project_updated(args.project, args.user)
        await workflow_lifecycle(args.project, args.user)
        await agent_status(args.agent)
        await pull_request_opened(args.project)
        await ai_suggestion(args.project)
    print(f"published to project:{args.project}, user:{args.user}, agent:{args.agent}")


if __name__ == "__main__":
    asyncio.run(main())
