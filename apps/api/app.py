"""The service as one ASGI app: builds the FastAPI app, the Socket.IO server and wires the
broadcaster to it. ``create_app(settings)`` is the factory; ``apps/api/main.py`` runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from apps.api.config import Settings, get_settings
from apps.api.errors import install_error_handlers
from apps.api.events.broadcaster import get_broadcaster
from apps.api.events.workflow_routes import RedisWorkflowRoutes, WorkflowDirectory, WorkflowRoutes
from apps.api.logging_setup import configure_logging
from apps.api.routes import health, projects, websocket_info
from apps.api.serving import tune_garbage_collector
from apps.api.stores.projects import InMemoryProjectStore, ProjectStore
from apps.api.stores.redis_projects import RedisProjectStore
from apps.api.websocket.auth import TokenVerifier
from apps.api.websocket.connections import Connections
from apps.api.websocket.events import ClientEvents
from apps.api.websocket.redis_manager import ResilientRedisManager, redacted
from apps.api.websocket.server import SocketIOEmitter, create_asgi_app, create_server

logger = logging.getLogger(__name__)


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
    sio = create_server(settings)
    redis_manager: ResilientRedisManager | None = sio.manager if settings.redis_url else None
    store: ProjectStore
    workflow_routes: WorkflowDirectory
    if redis_manager is not None:
        store = RedisProjectStore(redis_manager.publisher, prefix=settings.redis_key_prefix)
        workflow_routes = RedisWorkflowRoutes(redis_manager.publisher, prefix=settings.redis_key_prefix)
    else:
        store = InMemoryProjectStore()
        workflow_routes = WorkflowRoutes()
    connections = Connections()
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
        if redis_manager is not None:
            # Subscribe now rather than at the first client, so readiness reflects Redis at once.
            sio.manager_initialized = True
            redis_manager.initialize()
            logger.info("websocket sharing events through Redis at %s", redacted(redis_manager.redis_url))
        elif settings.environment == "production":
            logger.warning(
                "websocket running as a single instance in production (REDIS_URL is not set): "
                "events reach only this process's clients"
            )
        else:
            logger.info("websocket running as a single instance (REDIS_URL is not set)")
        get_broadcaster().attach(SocketIOEmitter(sio), workflow_routes=workflow_routes)
        tune_garbage_collector()
        try:
            yield
        finally:
            get_broadcaster().attach(None)
            if redis_manager is not None:
                task = getattr(redis_manager, "thread", None)
                if task is not None:
                    task.cancel()
                await redis_manager.close()

    api = FastAPI(title="Real-time event service", version="1.0.0", lifespan=lifespan)
    api.state.settings = settings
    api.state.verifier = verifier
    api.state.projects = store
    api.state.connections = connections
    api.state.sio = sio
    api.state.redis = redis_manager
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
