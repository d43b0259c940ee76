"""The service as one ASGI app: builds the FastAPI app, the Socket.IO server and wires the
broadcaster to it. ``create_app(settings)`` is the factory; ``apps/api/main.py`` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from apps.api.config import Settings, get_settings
from apps.api.errors import install_error_handlers
from apps.api.events.broadcaster import get_broadcaster
from apps.api.logging_setup import configure_logging
from apps.api.routes import health, projects, websocket_info
from apps.api.stores.projects import InMemoryProjectStore
from apps.api.websocket.auth import TokenVerifier
from apps.api.websocket.connections import Connections
from apps.api.websocket.events import ClientEvents
from apps.api.websocket.server import SocketIOEmitter, create_asgi_app, create_server


def create_app(settings: Settings | None = None) -> Any:
    """The service as one ASGI app: Socket.IO at ``/socket.io/`` (namespace ``/ws``) + HTTP API."""
    settings = settings or get_settings()
    configure_logging(settings)
    verifier = TokenVerifier(
        secret=settings.jwt_secret_key.get_secret_value(),
        algorithm=settings.jwt_algorithm,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_seconds=settings.jwt_leeway_seconds,
        admin_role=settings.jwt_admin_role,
    )
    store = InMemoryProjectStore()
    connections = Connections()
    sio = create_server(settings)
    ClientEvents(
        sio,
        verifier=verifier,
        membership=store,
        connections=connections,
        max_rooms=settings.max_rooms_per_connection,
        disconnect_on_expiry=settings.disconnect_on_token_expiry,
    ).register()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        get_broadcaster().attach(SocketIOEmitter(sio))
        try:
            yield
        finally:
            get_broadcaster().attach(None)

    api = FastAPI(title="Real-time event service", version="1.0.0", lifespan=lifespan)
    api.state.settings = settings
    api.state.verifier = verifier
    api.state.projects = store
    api.state.connections = connections
    api.state.sio = sio
    api.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=settings.cors_origins != ["*"],
        allow_methods=["*"],
        allow_headers=["*"],
    )
    install_error_handlers(api)
    for module in (health, projects, websocket_info):
        api.include_router(module.router)
    return create_asgi_app(sio, api)
