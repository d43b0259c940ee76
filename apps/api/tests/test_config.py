"""Settings: environment variables as the card names them, or files in SECRETS_DIR; production
refuses weak secrets; a refusal names the setting and never its value."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError, field_validator

from apps.api import config
from apps.api.config import Settings
from apps.api.settings_errors import describe

NAMES = ("JWT_SECRET_KEY", "ENVIRONMENT", "CORS_ORIGINS", "REDIS_URL", "LOG_FILE", "WORKERS", "DATABASE_URL")


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in (*NAMES, "SECRETS_DIR", "PORT"):
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


# --- settings from files (SECRETS_DIR, /run/secrets) --------------------------------------------

SECRET = "s" * 40


def secrets_dir(tmp_path: Path, **files: str) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value + "\n")  # as `echo` or Kubernetes writes them
    return directory


def test_a_setting_comes_from_the_file_named_after_it(monkeypatch, tmp_path: Path):
    directory = secrets_dir(tmp_path, jwt_secret_key=SECRET, database_url="postgresql+asyncpg://u:pw@db/events")
    s = settings(monkeypatch, SECRETS_DIR=str(directory), ENVIRONMENT="production")
    assert s.jwt_secret_key.get_secret_value() == SECRET  # the trailing newline is not part of it
    assert s.database_url == "postgresql+asyncpg://u:pw@db/events"
    assert s.environment == "production"


def test_the_environment_and_dotenv_win_over_a_secret_file(monkeypatch, tmp_path: Path):
    directory = secrets_dir(tmp_path, jwt_secret_key=SECRET, cors_origins="https://file.example")
    from_env = "e" * 40
    s = settings(monkeypatch, SECRETS_DIR=str(directory), JWT_SECRET_KEY=from_env)
    assert s.jwt_secret_key.get_secret_value() == from_env
    assert s.cors_origins == ["https://file.example"]
    dotenv = tmp_path / ".env"
    dotenv.write_text("CORS_ORIGINS=https://dotenv.example\n")
    s = Settings(_env_file=dotenv)  # type: ignore[call-arg]
    assert s.cors_origins == ["https://dotenv.example"]


def test_the_default_secrets_dir_is_read_when_it_exists_and_skipped_silently_when_not(monkeypatch, tmp_path: Path):
    assert config.DEFAULT_SECRETS_DIR == "/run/secrets"  # where Docker and Compose mount secrets
    monkeypatch.setattr(config, "DEFAULT_SECRETS_DIR", str(secrets_dir(tmp_path, jwt_secret_key=SECRET)))
    assert settings(monkeypatch).jwt_secret_key.get_secret_value() == SECRET
    monkeypatch.setattr(config, "DEFAULT_SECRETS_DIR", str(tmp_path / "absent"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # outside a container: no "directory does not exist" each start
        assert settings(monkeypatch).jwt_secret_key.get_secret_value() == config.DEFAULT_JWT_SECRET


def test_an_empty_secrets_dir_turns_the_files_off_and_a_missing_one_named_is_reported(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(config, "DEFAULT_SECRETS_DIR", str(secrets_dir(tmp_path, jwt_secret_key=SECRET)))
    assert settings(monkeypatch, SECRETS_DIR="").jwt_secret_key.get_secret_value() == config.DEFAULT_JWT_SECRET
    with pytest.warns(UserWarning, match="does not exist"):
        settings(monkeypatch, SECRETS_DIR=str(tmp_path / "absent"))


def test_a_secret_file_is_checked_as_the_variable_would_be(monkeypatch, tmp_path: Path):
    directory = secrets_dir(tmp_path, jwt_secret_key="tiny-secret")
    with pytest.raises(ValidationError) as info:
        settings(monkeypatch, SECRETS_DIR=str(directory), ENVIRONMENT="production")
    assert describe(info.value) == [
        "invalid setting JWT_SECRET_KEY: shorter than 32 bytes; refusing to start with ENVIRONMENT=production"
    ]


# --- what a refusal says ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "line", "hidden"),
    [
        (
            {"ENVIRONMENT": "production", "JWT_SECRET_KEY": "tiny-secret"},
            "invalid setting JWT_SECRET_KEY: shorter than 32 bytes; refusing to start with ENVIRONMENT=production",
            "tiny-secret",
        ),
        (
            {"ENVIRONMENT": "production", "JWT_SECRET_KEY": SECRET, "CORS_ORIGINS": "*"},
            "invalid setting CORS_ORIGINS: CORS_ORIGINS='*' is refused with ENVIRONMENT=production; list the origins",
            SECRET,
        ),
        (
            {"REDIS_URL": "http://:hunter2-redis@cache:6379/0"},
            "invalid setting REDIS_URL: must start with one of redis://, rediss://, unix://",
            "hunter2-redis",
        ),
        (
            {"DATABASE_URL": "mysql://events:hunter2-db@db/events"},
            "invalid setting DATABASE_URL: must be a sqlite+aiosqlite:///<file> or postgresql+asyncpg://",
            "hunter2-db",
        ),
        ({"PORT": "abc"}, "invalid setting PORT: Input should be a valid integer", "abc"),
    ],
    ids=["short-secret", "cors-star", "redis-url", "database-url", "port"],
)
def test_a_refusal_is_one_line_naming_the_setting_without_its_value(monkeypatch, env, line, hidden):
    with pytest.raises(ValidationError) as info:
        settings(monkeypatch, **env)
    assert hidden in str(info.value.errors())  # what pydantic reports holds it (input_value=...)
    lines = describe(info.value)
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert hidden not in lines[0]


def test_every_refused_setting_gets_its_line(monkeypatch):
    with pytest.raises(ValidationError) as info:
        settings(monkeypatch, PORT="abc", WORKERS="zero", ENVIRONMENT="staging")
    lines = describe(info.value)
    assert [line.split(":")[0] for line in lines] == [
        "invalid setting ENVIRONMENT",
        "invalid setting PORT",
        "invalid setting WORKERS",
    ]


class Quoting(Settings):
    """A validator that (wrongly) quotes what it refuses: the line still never shows a secret."""

    @field_validator("jwt_secret_key", "redis_url")
    @classmethod
    def _quote(cls, value: object) -> object:
        shown = value.get_secret_value() if isinstance(value, SecretStr) else value
        raise ValueError(f"{shown!r} is refused")


def test_a_message_that_quotes_a_secret_or_a_password_is_redacted(monkeypatch):
    secret, password = "quoted-" + "q" * 30, "quoted-password"
    monkeypatch.setenv("JWT_SECRET_KEY", secret)
    monkeypatch.setenv("REDIS_URL", f"redis://:{password}@cache:6379/0")
    with pytest.raises(ValidationError) as info:
        Quoting(_env_file=None)  # type: ignore[call-arg]
    lines = describe(info.value)
    assert len(lines) == 2 and all("[redacted]" in line for line in lines), lines
    assert secret not in "".join(lines) and password not in "".join(lines)
