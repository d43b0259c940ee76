"""Settings: environment variables as the card names them; production refuses weak secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from apps.api.config import Settings


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("JWT_SECRET_KEY", "ENVIRONMENT", "CORS_ORIGINS", "REDIS_URL", "LOG_FILE", "WORKERS", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_card_defaults(monkeypatch):
    s = settings(monkeypatch)
    assert s.cors_origins == ["http://localhost:3000"]
    assert s.jwt_algorithm == "HS256"
    assert s.jwt_secret_key.get_secret_value() == "your-secret-key"
    assert s.redis_url is None
    assert s.port == 8000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://app.example.com", ["https://app.example.com"]),
        ("https://a.example, https://b.example", ["https://a.example", "https://b.example"]),
        ('["https://a.example","https://b.example"]', ["https://a.example", "https://b.example"]),
    ],
)
def test_cors_origins_forms(monkeypatch, value, expected):
    assert settings(monkeypatch, CORS_ORIGINS=value).cors_origins == expected


def test_empty_values_mean_unset(monkeypatch):
    s = settings(monkeypatch, REDIS_URL="", LOG_FILE="")
    assert s.redis_url is None and s.log_file is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "default"),
        ({"JWT_SECRET_KEY": "short"}, "shorter than 32 bytes"),
        ({"JWT_SECRET_KEY": "k" * 40, "CORS_ORIGINS": "*"}, "CORS_ORIGINS"),
    ],
)
def test_production_refuses_weak_settings(monkeypatch, env, message):
    with pytest.raises(ValidationError) as info:
        settings(monkeypatch, ENVIRONMENT="production", **env)
    assert message in str(info.value)
    assert "k" * 40 not in str(info.value)


def test_production_with_a_real_secret_is_accepted(monkeypatch):
    s = settings(monkeypatch, ENVIRONMENT="production", JWT_SECRET_KEY="k" * 40)
    assert s.environment == "production"
    assert "k" * 40 not in repr(s)


def test_several_workers_need_redis_and_a_database_server(monkeypatch):
    with pytest.raises(ValidationError, match="WORKERS=3 needs REDIS_URL"):
        settings(monkeypatch, WORKERS="3")
    with pytest.raises(ValidationError, match="WORKERS=3 needs a database server"):
        settings(monkeypatch, WORKERS="3", REDIS_URL="redis://127.0.0.1:6379")
    pg = "postgresql+asyncpg://app@db/events"
    assert settings(monkeypatch, WORKERS="3", REDIS_URL="redis://127.0.0.1:6379", DATABASE_URL=pg).workers == 3


def test_the_database_defaults_to_a_sqlite_file_and_takes_postgresql(monkeypatch):
    assert settings(monkeypatch).database_url == "sqlite+aiosqlite:///data/events.db"
    for url in ("postgresql+asyncpg://u:p@db:5432/events", "sqlite+aiosqlite:////var/lib/events/app.db"):
        assert settings(monkeypatch, DATABASE_URL=url).database_url == url


@pytest.mark.parametrize("url", ["mysql://db/x", "events.db", "redis://localhost"])
def test_database_url_must_be_sqlite_or_postgresql(monkeypatch, url):
    with pytest.raises(ValidationError, match="DATABASE_URL must be"):
        settings(monkeypatch, DATABASE_URL=url)


@pytest.mark.parametrize("url", ["localhost:6379", "http://redis:6379", "redis//x"])
def test_redis_url_must_be_a_redis_url(monkeypatch, url):
    with pytest.raises(ValidationError, match="REDIS_URL must start with"):
        settings(monkeypatch, REDIS_URL=url)


def test_redis_url_forms(monkeypatch):
    for url in ("redis://redis:6379/0", "rediss://:pw@redis.example:6380", "unix:///run/redis.sock"):
        assert settings(monkeypatch, REDIS_URL=url).redis_url == url


def test_an_empty_secret_is_refused_everywhere(monkeypatch):
    for environment in ("development", "production"):
        with pytest.raises(ValidationError, match="JWT_SECRET_KEY is empty"):
            settings(monkeypatch, ENVIRONMENT=environment, JWT_SECRET_KEY="")
