"""Operator and developer views of the Socket.IO endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request

from apps.api.deps import AdminUser
from apps.api.websocket.protocol import NAMESPACE, SOCKETIO_PATH
from apps.api.websocket.server import room_sizes

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
async def websocket_stats(request: Request, _: AdminUser) -> dict[str, object]:
    """Connections and members per room on this instance (admins only)."""
    state = request.app.state
    return {"connections": len(state.connections), "users": state.connections.users(), "rooms": room_sizes(state.sio)}
