"""``GET /health`` (liveness, and what this instance is) and ``GET /ready`` (readiness: Redis,
when configured, and the database)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from apps.api.websocket.protocol import INSTANCE_ID
from apps.api.websocket.server import subscription_live

router = APIRouter(tags=["health"])


async def _redis_state(request: Request) -> str:
    state = request.app.state
    if state.backend.redis is None:
        return "not_configured"
    if await state.backend.ping() and subscription_live(state.sio):
        return "ok"
    return "unreachable"


async def _database_state(request: Request) -> str:
    return "ok" if await request.app.state.database_reachable() else "unreachable"


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    """Always 200 while the process runs; ``status`` is ``degraded`` when Redis is configured
    but unreachable (events then reach only this instance's clients), or the database is."""
    state = request.app.state
    redis = await _redis_state(request)
    database = await _database_state(request)
    return {
        "status": "degraded" if "unreachable" in (redis, database) else "ok",
        "mode": "single" if state.backend.redis is None else "redis",
        "redis": redis,
        "database": database,
        "instance_id": INSTANCE_ID,
        "connections": len(state.connections),
    }


@router.get("/ready", responses={503: {"description": "Redis is configured but unreachable, or the database is"}})
async def ready(request: Request) -> JSONResponse:
    """200 when this instance can deliver events everywhere and reach its database; 503 while
    Redis (if configured) or the database is unreachable, so a load balancer stops sending it
    clients."""
    redis = await _redis_state(request)
    database = await _database_state(request)
    ok = "unreachable" not in (redis, database)
    return JSONResponse({"ready": ok, "redis": redis, "database": database}, status_code=200 if ok else 503)
