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

from apps.api import admin_ui, metrics
from apps.api.backends import backend_for
from apps.api.body_limit import BodyLimit
from apps.api.cluster_stats import ClusterStats
from apps.api.config import Settings, get_settings
from apps.api.db.engine import create_engine, database_url, reachable
from apps.api.db.migrate import upgrade
from apps.api.errors import install_error_handlers
from apps.api.events.broadcaster import get_broadcaster
from apps.api.http_limits import AddressLimit, HttpLimiter
from apps.api.logging_setup import configure_logging
from apps.api.routes import admin, events, github, health, projects, rooms, websocket_info
from apps.api.routes import metrics as metrics_route
from apps.api.serving import tune_garbage_collector
from apps.api.stores.handled import HandledRequests
from apps.api.stores.sql_projects import SqlProjectStore
from apps.api.token_keys import TokenKeys
from apps.api.websocket import server
from apps.api.websocket.auth import TokenVerifier
from apps.api.websocket.connections import Connections
from apps.api.websocket.events import ClientEvents, ConnectionLimits
from apps.api.websocket.keys import InvalidKey
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


async def _start_token_keys(token_keys: TokenKeys) -> None:
    """Read JWT_KEYS_FILE and fetch JWT_JWKS_URL; an unusable key file stops the start, saying why."""
    try:
        await token_keys.start()
    except InvalidKey as exc:
        logger.error("token keys: %s: not starting", exc)
        raise


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service: the HTTP API, and Socket.IO at ``/socket.io/`` (namespace ``/ws``)."""
    settings = settings or get_settings()
    configure_logging(settings)
    verifier = TokenVerifier(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_seconds=settings.jwt_leeway_seconds,
        admin_role=settings.jwt_admin_role,
    )
    token_keys = TokenKeys(settings, verifier)  # installs the verifier's keys, kept current
    backend = backend_for(settings)
    sio = server.create_server(settings, backend)
    engine = create_engine(settings.database_url)
    store = SqlProjectStore(engine)
    handled = HandledRequests(engine)
    workflow_routes = backend.workflow_routes()
    connections = Connections(
        events_per_second=settings.client_events_per_second,
        burst=settings.client_event_burst,
        overrun_burst=settings.client_event_overrun_burst,
    )
    ClientEvents(
        sio,
        verifier=verifier,
        membership=store,
        token_keys=token_keys,
        connections=connections,
        max_rooms=settings.max_rooms_per_connection,
        disconnect_on_expiry=settings.disconnect_on_token_expiry,
        limits=ConnectionLimits(
            per_address_rate=settings.connects_per_second_per_address,
            per_address_burst=settings.connect_burst_per_address,
            max_per_user=settings.max_connections_per_user,
            max_connections=settings.max_connections,
            expiry_warning_seconds=settings.token_expiry_warning_seconds,
        ),
    ).register()
    admin_ui.install(sio, settings)  # the Socket.IO Admin UI on /admin, when ADMIN_UI_ENABLED
    redis_client = backend.redis.client if backend.redis is not None else None
    http_limits = HttpLimiter(
        per_user=settings.http_rate_limit_per_user,
        per_service=settings.http_rate_limit_per_service,
        per_address=settings.http_rate_limit_per_address,
        service_role=settings.jwt_service_role,
        redis_client=redis_client,
        key_prefix=settings.redis_key_prefix,
    )
    cluster_stats = ClusterStats(
        lambda: server.instance_stats(sio, connections),
        client=redis_client,
        prefix=settings.redis_key_prefix,
        interval=settings.websocket_stats_interval_seconds,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await _prepare_database(settings, engine, handled)
        await _start_token_keys(token_keys)
        server.start(sio)
        cluster_stats.start()  # this instance's numbers in Redis, every WEBSOCKET_STATS_INTERVAL_SECONDS
        if backend.redis is not None:
            logger.info("websocket sharing events through Redis at %s", redacted(backend.redis.url))
        elif settings.environment == "production":
            logger.warning(
                "websocket running as a single instance in production (REDIS_URL is not set): "
                "events reach only this process's clients"
            )
        else:
            logger.info("websocket running as a single instance (REDIS_URL is not set)")
        redis_live = (lambda: server.subscription_live(sio)) if backend.redis is not None else None
        outbox = server.outbox_size(sio) if backend.redis is not None else None
        api.state.metrics = await metrics.start(settings, connections, redis_live, outbox)  # sampler, METRICS_PORT
        emitter = server.SocketIOEmitter(sio)
        previous = get_broadcaster().swap(emitter, workflow_routes)
        tune_garbage_collector()
        try:
            yield
        finally:
            await api.state.metrics.stop()
            get_broadcaster().restore(emitter, previous)
            await cluster_stats.stop()
            await http_limits.aclose()
            await server.stop(sio)
            await backend.aclose()
            await engine.dispose()
            await token_keys.stop()

    api = FastAPI(title="Real-time event service", version="1.0.0", lifespan=lifespan)
    api.state.settings = settings
    api.state.verifier = verifier
    api.state.token_keys = token_keys
    api.state.projects = store
    api.state.handled = handled
    api.state.database_reachable = lambda: reachable(engine)
    api.state.connections = connections
    api.state.sio = sio
    api.state.backend = backend
    api.state.http_limits = http_limits
    api.state.cluster_stats = cluster_stats
    api.state.connection_closer = server.ConnectionCloser(sio, connections)
    api.state.room_history = server.RoomHistory(sio)
    # inside CORS (a 429 carries its headers), outside everything else; Socket.IO never reaches it
    api.add_middleware(AddressLimit, limiter=lambda: http_limits)
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
    api.include_router(rooms.router)  # GET /api/v1/rooms/{room}/events?since=
    api.include_router(admin.router)  # DELETE /api/v1/websocket/users/{id}/connections, .../connections/{sid}
    api.include_router(metrics_route.router)  # GET /metrics (404 unless METRICS_TOKEN is set)
    server.mount(api, sio)  # outermost: Socket.IO requests never reach the HTTP middleware
    return api
