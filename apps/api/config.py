"""Service settings, read from the environment and an optional ``.env`` file.

Variable names are the card's: ``JWT_SECRET_KEY``, ``JWT_ALGORITHM``, ``CORS_ORIGINS``,
``REDIS_URL``, ... (case-insensitive). A setting may also come from a file named after it in
``SECRETS_DIR`` (``/run/secrets``, where Docker and Compose mount secrets: ``jwt_secret_key``,
``database_url``); the environment and ``.env`` win over such a file. Nothing here does I/O
beyond reading ``.env`` and those files.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

#: The secret the card shows. Accepted in development only.
DEFAULT_JWT_SECRET = "your-secret-key"
#: Shortest HMAC secret accepted in production (RFC 7518 3.2: at least the hash size).
MIN_PRODUCTION_SECRET_BYTES = 32
#: Shortest METRICS_TOKEN accepted in production.
MIN_METRICS_TOKEN_CHARS = 16
#: Shortest ADMIN_UI_PASSWORD accepted in production.
MIN_ADMIN_UI_PASSWORD_CHARS = 16
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "valkey", "valkeys")
#: Where secret files are read from unless SECRETS_DIR says otherwise (Docker's and Compose's
#: secrets are mounted there). Absent, as outside a container, it means no secret files.
DEFAULT_SECRETS_DIR = "/run/secrets"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)

    # JWT
    jwt_secret_key: SecretStr = SecretStr(DEFAULT_JWT_SECRET)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300)
    jwt_admin_role: str = "admin"
    # More verification keys (WEBSOCKET_API.md, "Keys and rotation"). A token naming a kid is
    # checked with that key only, and every key verifies its one algorithm.
    jwt_secret_key_id: str | None = None  # the kid of JWT_SECRET_KEY, if tokens name it
    jwt_previous_secret_key: SecretStr | None = None  # still verifies, while its tokens run out
    jwt_keys_file: str | None = None  # a JWKS (JSON) or PEM public keys; reread when it changes
    jwt_jwks_url: str | None = None  # an identity provider's JWKS, fetched and kept fresh
    jwt_jwks_refresh_seconds: float = Field(default=300, ge=10)
    jwt_jwks_timeout_seconds: float = Field(default=5, gt=0, le=60)
    # an unknown kid fetches the JWKS again at most this often (tokens with made-up kids cost nothing)
    jwt_jwks_min_interval_seconds: float = Field(default=10, ge=0)

    # CORS: a comma-separated list (``https://a.example,https://b.example``), a JSON list, or ``*``.
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]

    # Redis: unset means a single instance with no Redis at all.
    redis_url: str | None = None
    redis_channel: str = Field(default="socketio", min_length=1)
    redis_key_prefix: str = "events:"
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    # With recovery on: events Redis cannot take wait in each publishing process's outbox, in
    # order, at most this many (then DeliveryError / 503)
    redis_outbox_max_events: int = Field(default=10_000, ge=1, le=1_000_000)

    # Database: projects and members. A SQLite file by default (nothing to install or start);
    # PostgreSQL in production, e.g. postgresql+asyncpg://user:password@host/db
    database_url: str = "sqlite+aiosqlite:///data/events.db"
    # Apply the migrations at start-up (instances take turns); off: run `python -m apps.api.db upgrade`
    database_migrate_on_start: bool = True

    # HTTP: the largest request body read (larger ones get 413 before more is read)
    max_http_body_bytes: int = Field(default=1_000_000, ge=1024)
    # GitHub webhooks (POST /webhooks/github): the secret set in GitHub; unset refuses every delivery
    github_webhook_secret: SecretStr | None = None
    # POST /api/v1/events: callers whose token has this role (or the admin role) may publish
    jwt_service_role: str = "service"

    # HTTP rate limits (WEBSOCKET_API.md, "HTTP rate limits"), in the limits library's notation,
    # several joined by ";" ("20/second;600/minute"); empty: no such limit. Moving windows, shared
    # by every instance through Redis when REDIS_URL is set, in this process's memory otherwise.
    # Per caller (the token's sub), after the token check; tokens with JWT_SERVICE_ROLE get their own.
    http_rate_limit_per_user: str = "20/second;600/minute"
    http_rate_limit_per_service: str = "200/second"
    # Per client address (the forwarded one behind a trusted proxy), on every HTTP route but
    # /health, /ready and /metrics; Socket.IO's paths have their own limits.
    http_rate_limit_per_address: str = "300/second"
    # GET /api/v1/websocket/stats: each instance writes its numbers to Redis this often (they are
    # kept 3 times as long, so a stopped instance drops out of the stats within that)
    websocket_stats_interval_seconds: float = Field(default=5, gt=0, le=300)

    @field_validator("http_rate_limit_per_user", "http_rate_limit_per_service", "http_rate_limit_per_address")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        from limits import parse_many

        text = value.strip()
        if text:
            try:
                parse_many(text)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a rate limit: write e.g. '20/second' or '20/second;600/minute' (empty: none)"
                ) from None
        return text

    # Uvicorn worker processes for `python apps/api/main.py` (more than one needs REDIS_URL).
    workers: int = Field(default=1, ge=1, le=64)
    shutdown_timeout_seconds: float = Field(default=10, ge=0)

    # Socket.IO
    # ``service``: the transport in apps/transport (the default); ``stock``: plain python-socketio
    # and python-engineio on uvicorn's own protocols, if an upgrade ever breaks the transport
    websocket_transport: Literal["service", "stock"] = "service"
    max_payload_bytes: int = Field(default=1_000_000, ge=1024)
    ping_interval_seconds: float = Field(default=25, gt=0)
    ping_timeout_seconds: float = Field(default=20, gt=0)
    # An Engine.IO connection that has joined no namespace this long after it opened is closed.
    connect_timeout_seconds: float = Field(default=45, gt=0)
    # An HTTP connection whose request head is not complete this long after it opened is closed.
    http_header_timeout_seconds: float = Field(default=30, gt=0)
    max_rooms_per_connection: int = Field(default=100, ge=2)
    disconnect_on_token_expiry: bool = True
    # Connection state recovery (WEBSOCKET_API.md, "Reconnecting without losing events"): a client
    # that reconnects within the window gets back its rooms and the events it missed
    # (socket.recovered). The history keeps at most RECOVERY_MAX_EVENTS events, none older than the window.
    recovery_enabled: bool = True
    recovery_window_seconds: float = Field(default=120, gt=0, le=86400)
    recovery_max_events: int = Field(default=10000, ge=1, le=10_000_000)
    # token.expiring is sent this long before a connection's token expires (0: not sent)
    token_expiry_warning_seconds: float = Field(default=60, ge=0)

    # Limits on connections and client events (WEBSOCKET_API.md, "Limits"); each refusal has its code
    client_events_per_second: float = Field(default=20, gt=0)
    client_event_burst: int = Field(default=50, ge=1)
    # refused events a connection may run up (a burst, then 5 a second) before it is closed
    client_event_overrun_burst: int = Field(default=100, ge=1)
    # new connections per remote address (the forwarded one behind a trusted proxy); 0: no limit
    connects_per_second_per_address: float = Field(default=20, ge=0)
    connect_burst_per_address: int = Field(default=100, ge=1)
    max_connections_per_user: int = Field(default=100, ge=1)
    max_connections: int = Field(default=10_000, ge=1)  # on this instance
    # permessage-deflate: off by default (5x the memory per idle connection; see bench/README.md)
    websocket_compression: bool = False
    # A WebSocket client that has this much sent to it and not yet read is dropped (it reconnects).
    websocket_max_buffer_bytes: int = Field(default=16 * 1024 * 1024, ge=65_536)

    # Logging: LOG_FILE="" turns the file off (containers log to stderr only).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: str | None = "logs/app.log"

    # Logs and metrics (WEBSOCKET_API.md, "Logs" and "Metrics"). LOG_FORMAT=json: one JSON object a line.
    log_format: Literal["plain", "json"] = "plain"
    # GET /metrics is off (404) unless METRICS_TOKEN is set (then it needs `Authorization: Bearer
    # <METRICS_TOKEN>`); METRICS_PORT also serves it, without a token, on a port of its own.
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_name(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("metrics_token", "metrics_port", mode="before")
    @classmethod
    def _metrics_unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _metrics_usable(self) -> Settings:
        token = self.metrics_token.get_secret_value() if self.metrics_token is not None else None
        if token is not None and self.environment == "production" and len(token) < MIN_METRICS_TOKEN_CHARS:
            raise ValueError(
                f"METRICS_TOKEN is shorter than {MIN_METRICS_TOKEN_CHARS} characters; refusing to start with "
                "ENVIRONMENT=production (openssl rand -hex 32 makes one)"
            )
        if self.metrics_port is not None and self.metrics_port != 0 and self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT")
        metrics_on = token is not None or self.metrics_port is not None
        if metrics_on and self.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            raise ValueError(
                f"WORKERS={self.workers} with metrics on (METRICS_TOKEN or METRICS_PORT) needs "
                "PROMETHEUS_MULTIPROC_DIR, an empty directory the workers share: each worker's metrics "
                "are kept there, and a scrape adds them up"
            )
        return self

    # The Socket.IO Admin UI (WEBSOCKET_API.md, "Admin UI"; apps/api/admin_ui.py): off unless
    # ADMIN_UI_ENABLED; namespace /admin, behind ADMIN_UI_USERNAME / ADMIN_UI_PASSWORD (required;
    # at least 16 characters with ENVIRONMENT=production). ADMIN_UI_MODE: development shows every
    # connection, room and event (one message to each admin per delivery); production the server's
    # stats only; unset: production with ENVIRONMENT=production, development otherwise.
    admin_ui_enabled: bool = False
    admin_ui_username: str = "admin"
    admin_ui_password: SecretStr | None = None
    admin_ui_read_only: bool = True
    admin_ui_mode: Literal["development", "production"] | None = None
    admin_ui_stats_interval_seconds: float = Field(default=2, ge=0.1, le=60)

    @field_validator("admin_ui_password", "admin_ui_mode", mode="before")
    @classmethod
    def _admin_ui_unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _admin_ui_usable(self) -> Settings:
        if not self.admin_ui_enabled:
            return self
        if not self.admin_ui_username.strip():
            raise ValueError("ADMIN_UI_USERNAME is empty: the Admin UI needs a username")
        if self.admin_ui_password is None:
            raise ValueError(
                "ADMIN_UI_PASSWORD is not set: ADMIN_UI_ENABLED=true needs it (openssl rand -hex 16 makes one)"
            )
        password = self.admin_ui_password.get_secret_value()
        if self.environment == "production" and (
            len(password) < MIN_ADMIN_UI_PASSWORD_CHARS or password == self.admin_ui_username
        ):
            raise ValueError(
                f"ADMIN_UI_PASSWORD is shorter than {MIN_ADMIN_UI_PASSWORD_CHARS} characters or the username; "
                "refusing to start with ENVIRONMENT=production (openssl rand -hex 16 makes one)"
            )
        return self

    @property
    def admin_ui_reporting(self) -> Literal["development", "production"]:
        """ADMIN_UI_MODE, or its default: ``production`` with ENVIRONMENT=production, else ``development``."""
        if self.admin_ui_mode is not None:
            return self.admin_ui_mode
        return "production" if self.environment == "production" else "development"

    # Secret files: <SECRETS_DIR>/<setting name, lower case> holds that setting's value (read from
    # the environment only, before the rest; see settings_customise_sources).
    secrets_dir: str = DEFAULT_SECRETS_DIR

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' order (arguments, environment, ``.env``, secret files), with the
        secrets directory taken from ``SECRETS_DIR`` (empty: none). The default one is skipped
        when it does not exist (no warning on every start outside a container); one named
        explicitly is not."""
        if isinstance(file_secret_settings, SecretsSettingsSource) and file_secret_settings.secrets_dir is None:
            directory = os.environ.get("SECRETS_DIR")
            if directory is None and Path(DEFAULT_SECRETS_DIR).is_dir():
                directory = DEFAULT_SECRETS_DIR
            if directory:
                file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=directory)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator(
        "redis_url",
        "log_file",
        "jwt_issuer",
        "jwt_audience",
        "github_webhook_secret",
        "jwt_secret_key_id",
        "jwt_previous_secret_key",
        "jwt_keys_file",
        "jwt_jwks_url",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            scheme = value.split("://", 1)[0].lower() if "://" in value else ""
            if scheme not in REDIS_SCHEMES:
                raise ValueError(f"REDIS_URL must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                "DATABASE_URL must be a sqlite+aiosqlite:///<file> or postgresql+asyncpg://<user>@<host>/<db> URL"
            )
        return value

    @model_validator(mode="after")
    def _workers_need_redis(self) -> Settings:
        if self.workers > 1 and not self.redis_url:
            raise ValueError(
                f"WORKERS={self.workers} needs REDIS_URL: without it, an event published in one worker "
                "would never reach clients of the others"
            )
        if self.workers > 1 and self.database_url.lower().startswith("sqlite"):
            raise ValueError(
                f"WORKERS={self.workers} needs a database server (DATABASE_URL=postgresql+asyncpg://...): "
                "the SQLite default serves one process"
            )
        return self

    @model_validator(mode="after")
    def _refuse_weak_secret_in_production(self) -> Settings:
        secret = self.jwt_secret_key.get_secret_value()
        if not secret.strip():
            raise ValueError("JWT_SECRET_KEY is empty: set it (or unset it for the development default)")
        if self.environment != "production":
            return self
        previous = self.jwt_previous_secret_key
        if previous is not None and len(previous.get_secret_value().encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise ValueError(
                f"JWT_PREVIOUS_SECRET_KEY is shorter than {MIN_PRODUCTION_SECRET_BYTES} bytes; refusing to "
                "start with ENVIRONMENT=production."
            )
        if secret == DEFAULT_JWT_SECRET and not self.hmac_secret_in_use:
            pass  # only JWT_KEYS_FILE / JWT_JWKS_URL verify tokens: the default secret verifies none
        elif secret == DEFAULT_JWT_SECRET:
            raise ValueError(
                "JWT_SECRET_KEY is the default 'your-secret-key'; refusing to start with "
                "ENVIRONMENT=production. Set JWT_SECRET_KEY to a random secret "
                f"of at least {MIN_PRODUCTION_SECRET_BYTES} bytes."
            )
        elif len(secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise ValueError(
                f"JWT_SECRET_KEY is shorter than {MIN_PRODUCTION_SECRET_BYTES} bytes; refusing to "
                "start with ENVIRONMENT=production."
            )
        if "*" in self.cors_origins:
            raise ValueError("CORS_ORIGINS='*' is refused with ENVIRONMENT=production; list the origins.")
        return self

    @property
    def hmac_secret_in_use(self) -> bool:
        """Whether JWT_SECRET_KEY verifies tokens: always, unless it was left at the default and
        other keys are configured (then only those do)."""
        default = self.jwt_secret_key.get_secret_value() == DEFAULT_JWT_SECRET
        return not default or not (self.jwt_keys_file or self.jwt_jwks_url)

    @field_validator("jwt_jwks_url")
    @classmethod
    def _jwks_over_https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1].rsplit(":", 1)[0].strip("[]").lower()
        if scheme.lower() == "https" or (scheme.lower() == "http" and host in ("localhost", "127.0.0.1", "::1")):
            return value
        raise ValueError("JWT_JWKS_URL must be an https:// URL (http:// only for localhost)")


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
