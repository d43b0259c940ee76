"""``GET /health``: liveness and what this instance is."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    state = request.app.state
    return {
        "status": "ok",
        "mode": "redis" if state.settings.redis_url else "single",
        "connections": len(state.connections),
    }
