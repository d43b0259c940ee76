"""Service settings, read from the environment and an optional ``.env`` file.

Variable names are the card's: ``JWT_SECRET_KEY``, ``JWT_ALGORITHM``, ``CORS_ORIGINS``,
``REDIS_URL``, ... (case-insensitive). Nothing here does I/O beyond reading ``.env``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The secret the card shows. Accepted in development only.
DEFAULT_JWT_SECRET = "your-secret-key"
#: Shortest HMAC secret accepted in production (RFC 7518 3.2: at least the hash size).
MIN_PRODUCTION_SECRET_BYTES = 32
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "valkey", "valkeys")


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

    # CORS: a comma-separated list (``https://a.example,https://b.example``), a JSON list, or ``*``.
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]

    # Redis: unset means a single instance with no Redis at all.
    redis_url: str | None = None
    redis_channel: str = Field(default="socketio", min_length=1)
    redis_key_prefix: str = "events:"
    redis_timeout_seconds: float = Field(default=2.0, gt=0, le=30)

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
    # permessage-deflate: off by default (5x the memory per idle connection; see bench/README.md)
    websocket_compression: bool = False
    # A WebSocket client that has this much sent to it and not yet read is dropped (it reconnects).
    websocket_max_buffer_bytes: int = Field(default=16 * 1024 * 1024, ge=65_536)

    # Logging: LOG_FILE="" turns the file off (containers log to stderr only).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_file: str | None = "logs/app.log"

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

    @field_validator("redis_url", "log_file", "jwt_issuer", "jwt_audience", "github_webhook_secret", mode="before")
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
        if secret == DEFAULT_JWT_SECRET:
            raise ValueError(
                "JWT_SECRET_KEY is the default 'your-secret-key'; refusing to start with "
                "ENVIRONMENT=production. Set JWT_SECRET_KEY to a random secret "
                f"of at least {MIN_PRODUCTION_SECRET_BYTES} bytes."
            )
        if len(secret.encode()) < MIN_PRODUCTION_SECRET_BYTES:
            raise ValueError(
                f"JWT_SECRET_KEY is shorter than {MIN_PRODUCTION_SECRET_BYTES} bytes; refusing to "
                "start with ENVIRONMENT=production."
            )
        if "*" in self.cors_origins:
            raise ValueError("CORS_ORIGINS='*' is refused with ENVIRONMENT=production; list the origins.")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
