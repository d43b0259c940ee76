"""A user's own module extending the service: the card's "In FastAPI Routes" snippet in a router
of theirs, added to the app ``create_app()`` returns. Served by apps/api/tests/test_app.py:

    cd apps/api && uvicorn --app-dir ../.. apps.api.tests.examples.user_routes:app

The lines between BEGIN and END are the card's, with its "..." filled in.
"""

from uuid import UUID

from fastapi import APIRouter

from apps.api.app import create_app

router = APIRouter()

# BEGIN CARD SNIPPET ("In FastAPI Routes")
from events.broadcaster import get_broadcaster  # noqa: E402


@router.put("/projects/{project_id}")
async def update_project(project_id: UUID):  # type: ignore[no-untyped-def]
    # ... update database ...

    broadcaster = get_broadcaster()
    await broadcaster.broadcast_project_updated(
        project_id=project_id,
        project_name="My Project",
        repository_url="https://github.com/user/my-project",
        status="active",
        updated_by=UUID("660e8400-e29b-41d4-a716-446655440001"),
        changes={"status": "updated"},
    )

    return {"success": True}


# END CARD SNIPPET


app = create_app()
app.include_router(router)
