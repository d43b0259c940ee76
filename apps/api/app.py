"""The composition root: ``create_app(settings)`` builds the FastAPI app with the Socket.IO server
mounted in it, the backend (memory or Redis), the client event handlers, and wires the process's
broadcaster to the server. ``apps/api/main.py`` runs it; users extend the app it returns
(``app.include_router(...)``) as any FastAPI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from apps.api.backends import backend_for
from apps.api.body_limit import BodyLimit
from apps.api.config import Settings, get_settings
from apps.api.db.engine import create_engine, database_url, reachable
from apps.api.db.migrate import upgrade
from apps.api.errors import install_error_handlers
from apps.api.events.broadcaster import get_broadcaster
from apps.api.logging_setup import configure_logging
from apps.api.routes import events, github, health, projects, websocket_info
from apps.api.serving import tune_garbage_collector
from apps.api.stores.handled import HandledRequests
from apps.api.stores.sql_projects import SqlProjectStore
from apps.api.websocket import server
from apps.api.websocket.auth import TokenVerifier
from apps.api.websocket.connections import Connections
from apps.api.websocket.events import ClientEvents
from apps.transport import redacted

logger = logging.getLogger(__name__)


async def _prepare_database(settings: Settings, engine: AsyncEngine, handled: HandledRequests) -> None:
    """Migrate (unless DATABASE_MIGRATE_ON_START=false), then forget old handled requests. A
    database that cannot be migrated stops the start, saying why; without migrations the instance
    starts anyway and reports the database in /ready."""
    shown = database_url(settings.database_url).render_as_string(hide_password=True)
    if settings.database_migrate_on_start:
        try:
            await upgrade(engine)  # instances starting together take turns (apps/api/db/migrate.py)
        except (SQLAlchemyError, OSError) as exc:
            logger.error("database %s could not be migrated (%s: %s): not starting", shown, type(exc).__name__, exc)
            raise
        logger.info("database %s: schema up to date", shown)
    else:
        logger.info("database %s (DATABASE_MIGRATE_ON_START=false: not migrating)", shown)
    try:
        forgotten = await handled.forget_older_than()
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("database %s unreachable at start-up (%s): /ready says so", shown, type(exc).__name__)
        return
    if forgotten:
        logger.info("forgot %d handled webhook deliveries and publish keys older than 30 days", forgotten)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service: the HTTP API, and Socket.IO at ``/socket.io/`` (namespace ``/ws``)."""
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
    backend = backend_for(settings)
    sio = server.create_server(settings, backend)
    engine = create_engine(settings.database_url)
    store = SqlProjectStore(engine)
    handled = HandledRequests(engine)
    workflow_routes = backend.workflow_routes()
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
        await _prepare_database(settings, engine, handled)
        server.start(sio)
        if backend.redis is not None:
            logger.info("websocket sharing events through Redis at %s", redacted(backend.redis.url))
        elif settings.environment == "production":
            logger.warning(
                "websocket running as a single instance in production (REDIS_URL is not set): "
                "events reach only this process's clients"
            )
        else:
            logger.info("websocket running as a single instance (REDIS_URL is not set)")
        emitter = server.SocketIOEmitter(sio)
        previous = get_broadcaster().swap(emitter, workflow_routes)
        tune_garbage_collector()
        try:
            yield
        finally:
            get_broadcaster().restore(emitter, previous)
            await server.stop(sio)
            await backend.aclose()
            await engine.dispose()

    api = FastAPI(title="Real-time event service", version="1.0.0", lifespan=lifespan)
    api.state.settings = settings
    api.state.verifier = verifier
    api.state.projects = store
    api.state.handled = handled
    api.state.database_reachable = lambda: reachable(engine)
    api.state.connections = connections
    api.state.sio = sio
    api.state.backend = backend
    api.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=settings.cors_origins != ["*"],
        allow_methods=["*"],
        allow_headers=["*"],
    )
    api.add_middleware(BodyLimit, max_bytes=settings.max_http_body_bytes)
    install_error_handlers(api)
    for module in (health, projects, events, github, websocket_info):
        api.include_router(module.router)
    server.mount(api, sio)  # outermost: Socket.IO requests never reach the HTTP middleware
    return api
