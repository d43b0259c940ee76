"""Operator and developer views of the Socket.IO endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from apps.api.cluster_stats import ClusterStats
from apps.api.deps import AdminUser
from apps.api.websocket.protocol import NAMESPACE, SOCKETIO_PATH

router = APIRouter(tags=["websocket"])


@router.get("/ws")
async def websocket_help() -> dict[str, object]:
    """What a plain HTTP request to ``/ws`` gets: how to connect."""
    return {
        "message": "This is a Socket.IO endpoint. Connect with socket.io-client: "
        "io('http://<host>:8000/ws', { auth: { token } })",
        "namespace": NAMESPACE,
        "path": f"/{SOCKETIO_PATH}/",
        "docs": "WEBSOCKET_API.md",
    }


@router.get("/api/v1/websocket/stats")
async def websocket_stats(request: Request, _: AdminUser) -> dict[str, Any]:
    """Connections, users and members per room across every instance, and what each instance holds
    (admins only). Without Redis (or while it is unreachable): this instance's, ``cluster: false``.
    See :mod:`apps.api.cluster_stats` for how fresh each instance's numbers are."""
    stats: ClusterStats = request.app.state.cluster_stats
    return await stats.collect()
