"""``GET /health`` (liveness, and what this instance is) and ``GET /ready`` (readiness)."""

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


@router.get("/health")
async def health(request: Request) -> dict[str, object]:
    """Always 200 while the process runs; ``status`` is ``degraded`` when Redis is configured
    but unreachable (events then reach only this instance's clients)."""
    state = request.app.state
    redis = await _redis_state(request)
    return {
        "status": "degraded" if redis == "unreachable" else "ok",
        "mode": "single" if state.backend.redis is None else "redis",
        "redis": redis,
        "instance_id": INSTANCE_ID,
        "connections": len(state.connections),
    }


@router.get("/ready", responses={503: {"description": "Redis is configured but unreachable"}})
async def ready(request: Request) -> JSONResponse:
    """200 when this instance can deliver events everywhere; 503 while Redis (if configured) is
    unreachable, so a load balancer stops sending it clients."""
    redis = await _redis_state(request)
    ok = redis != "unreachable"
    return JSONResponse({"ready": ok, "redis": redis}, status_code=200 if ok else 503)
