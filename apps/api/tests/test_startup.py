"""Starting the service the ways the card and README say, as separate processes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from apps.api.tests.support import (
    REPO_ROOT,
    TEST_SECRET,
    ConnectRefused,
    WsClient,
    free_port,
    make_token,
    start_server_process,
)

BASE_ENV = {"JWT_SECRET_KEY": TEST_SECRET, "LOG_FILE": "", "REDIS_URL": "", "ENVIRONMENT": "development"}


async def assert_serves(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        assert (await http.get("/health")).json()["status"] == "ok"
    user = uuid4()
    client = WsClient(url)
    await client.connect(None, query=f"token={make_token(user)}")
    try:
        assert (await client.expect("connection_established"))["data"]["user_id"] == str(user)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("cwd", "args"),
    [
        (REPO_ROOT, [sys.executable, "apps/api/main.py"]),
        (REPO_ROOT / "apps" / "api", [sys.executable, "main.py"]),
        (REPO_ROOT, [sys.executable, "-m", "uvicorn", "apps.api.main:app", "--host", "127.0.0.1"]),
    ],
    ids=["python-apps/api/main.py", "cd-apps/api-python-main.py", "uvicorn"],
)
async def test_starts_the_documented_ways(cwd: Path, args: list[str]):
    port = free_port()
    extra = ["--port", str(port)] if "uvicorn" in args else []
    server = await start_server_process(args + extra, env={**BASE_ENV, "HOST": "127.0.0.1", "PORT": str(port)}, cwd=cwd)
    try:
        assert f"http://127.0.0.1:{port}" in "".join(server.output)
        await assert_serves(server.url)
    finally:
        await server.stop()
    output = "".join(server.output)
    assert "websocket connected" in output
    assert "token=[redacted]" in output
    assert ".eyJ" not in output  # no JWT, whatever the logger


async def test_listens_on_all_interfaces_port_from_env_by_default():
    port = free_port()
    server = await start_server_process([sys.executable, "apps/api/main.py"], env={**BASE_ENV, "PORT": str(port)})
    try:
        assert f"Uvicorn running on http://0.0.0.0:{port}" in "".join(server.output)
        await assert_serves(server.url)
    finally:
        await server.stop()


async def test_dotenv_file_is_read(tmp_path: Path):
    port = free_port()
    (tmp_path / ".env").write_text(f"PORT={port}\nHOST=127.0.0.1\nJWT_SECRET_KEY={TEST_SECRET}\nLOG_FILE=\n")
    env = {k: v for k, v in BASE_ENV.items() if k not in ("JWT_SECRET_KEY", "LOG_FILE")}
    server = await start_server_process([sys.executable, str(REPO_ROOT / "apps/api/main.py")], env=env, cwd=tmp_path)
    try:
        await assert_serves(f"http://127.0.0.1:{port}")
    finally:
        await server.stop()


async def test_production_refuses_to_start_with_the_default_secret():
    env = {**BASE_ENV, "ENVIRONMENT": "production", "JWT_SECRET_KEY": "your-secret-key", "PORT": str(free_port())}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "apps/api/main.py",
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    text = output.decode()
    assert process.returncode != 0
    assert "JWT_SECRET_KEY" in text and "production" in text
    assert "Uvicorn running" not in text


async def test_connections_are_logged_to_log_file_without_tokens(tmp_path: Path):
    port = free_port()
    log_file = tmp_path / "logs" / "app.log"
    env = {**BASE_ENV, "HOST": "127.0.0.1", "PORT": str(port), "LOG_FILE": str(log_file)}
    server = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    url = f"http://127.0.0.1:{port}"
    user = uuid4()
    good = make_token(user)
    expired = make_token(user, ttl=-600)
    try:
        client = WsClient(url)
        await client.connect(good)
        await client.expect("connection_established")
        sid = client.sid
        await client.close()
        with pytest.raises(ConnectRefused):
            await WsClient(url).connect(expired)
        in_query = WsClient(url)
        await in_query.connect(None, query=f"token={good}")
        await in_query.expect("connection_established")
        await in_query.close()
    finally:
        await server.stop()
    lines = [line for line in log_file.read_text().splitlines() if "websocket" in line]  # the card's grep
    connected = [line for line in lines if "websocket connected" in line]
    disconnected = [line for line in lines if "websocket disconnected" in line]
    refused = [line for line in lines if "websocket connection refused" in line]
    assert connected and f"sid={sid}" in connected[0] and f"user={user}" in connected[0]
    assert "remote=127.0.0.1" in connected[0]
    assert disconnected and f"sid={sid}" in disconnected[0] and "reason=" in disconnected[0]
    assert refused and "reason=expired" in refused[0] and "remote=127.0.0.1" in refused[0]
    text = log_file.read_text()
    assert good not in text and expired not in text and TEST_SECRET not in text
    assert "token=[redacted]" in text  # the query-string token, blanked in uvicorn's request line


async def test_devtools_token_is_accepted_by_the_verifier():
    from apps.api.websocket.auth import TokenVerifier

    user = uuid4()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apps.api.devtools.token",
        "--user",
        str(user),
        "--role",
        "admin",
        "--ttl",
        "60",
        cwd=REPO_ROOT,
        env={**os.environ, **BASE_ENV},
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    principal = TokenVerifier(secret=TEST_SECRET, algorithm="HS256").verify(output.decode().strip())
    assert principal.user_id == user and principal.is_admin


# --- settings that cannot be used: one line each, no value, status 2 ----------------------------

LONG_SECRET = "0123456789abcdef" * 4


async def refused_start(
    env: dict[str, str], args: list[str] | None = None, cwd: Path = REPO_ROOT, unset: tuple[str, ...] = ()
) -> tuple[int, str]:
    """Start the service with ``env`` over the tests' environment (less ``unset``); its exit
    status and output."""
    full_env = {**os.environ, **BASE_ENV, "PORT": str(free_port()), **env}
    process = await asyncio.create_subprocess_exec(
        *(args or [sys.executable, "apps/api/main.py"]),
        cwd=cwd,
        env={name: value for name, value in full_env.items() if name not in unset},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode()


REFUSED = [
    pytest.param(
        {"ENVIRONMENT": "production", "JWT_SECRET_KEY": "tiny-secret-4711"},
        "invalid setting JWT_SECRET_KEY: shorter than 32 bytes; refusing to start with ENVIRONMENT=production",
        "tiny-secret-4711",
        id="short-secret",
    ),
    pytest.param(
        {"ENVIRONMENT": "production", "JWT_SECRET_KEY": "your-secret-key"},
        "invalid setting JWT_SECRET_KEY: the default 'your-secret-key'; refusing to start with ENVIRONMENT=production",
        None,
        id="default-secret",
    ),
    pytest.param(
        {"ENVIRONMENT": "production", "JWT_SECRET_KEY": LONG_SECRET, "CORS_ORIGINS": "*"},
        "invalid setting CORS_ORIGINS: CORS_ORIGINS='*' is refused with ENVIRONMENT=production",
        LONG_SECRET,
        id="cors-star",
    ),
    pytest.param(
        {"REDIS_URL": "http://:redis-password-4711@cache:6379/0"},
        "invalid setting REDIS_URL: must start with one of redis://, rediss://",
        "redis-password-4711",
        id="redis-url",
    ),
    pytest.param(
        {"DATABASE_URL": "mysql://events:db-password-4711@db:3306/events"},
        "invalid setting DATABASE_URL: must be a sqlite+aiosqlite:///<file> or postgresql+asyncpg://",
        "db-password-4711",
        id="database-url",
    ),
    pytest.param(
        {"PORT": "abc"},
        "invalid setting PORT: Input should be a valid integer, unable to parse string as an integer",
        None,
        id="port",
    ),
]


@pytest.mark.parametrize(("env", "line", "secret"), REFUSED)
async def test_a_refused_setting_is_named_in_one_line_without_its_value(env, line, secret):
    status, output = await refused_start(env)
    assert status == 2, output
    assert output.splitlines() == [output.splitlines()[0]] and output.startswith(line), output
    assert "Traceback" not in output and "input_value" not in output and "Uvicorn running" not in output
    if secret is not None:
        assert secret not in output


@pytest.mark.parametrize(
    ("cwd", "args"),
    [
        (REPO_ROOT / "apps" / "api", [sys.executable, "main.py"]),
        (REPO_ROOT, [sys.executable, "-m", "uvicorn", "apps.api.main:app"]),
    ],
    ids=["cd-apps/api-python-main.py", "uvicorn"],
)
async def test_every_documented_start_refuses_the_same_way(cwd: Path, args: list[str]):
    env = {"ENVIRONMENT": "production", "JWT_SECRET_KEY": "tiny-secret-4711"}
    status, output = await refused_start(env, args, cwd)
    assert status == 2, output
    assert output.strip() == (
        "invalid setting JWT_SECRET_KEY: shorter than 32 bytes; refusing to start with ENVIRONMENT=production"
    )


async def test_a_secret_file_is_refused_the_same_way_and_an_empty_variable_wins_over_it(tmp_path: Path):
    (tmp_path / "jwt_secret_key").write_text("tiny-secret-4711\n")
    env = {"ENVIRONMENT": "production", "SECRETS_DIR": str(tmp_path)}
    status, output = await refused_start(env, unset=("JWT_SECRET_KEY",))
    assert status == 2, output
    assert output.strip() == (
        "invalid setting JWT_SECRET_KEY: shorter than 32 bytes; refusing to start with ENVIRONMENT=production"
    )
    # A variable set, even to nothing, is a value given: it wins over the file, and empty is refused.
    status, output = await refused_start({**env, "JWT_SECRET_KEY": ""})
    assert status == 2 and output.startswith("invalid setting JWT_SECRET_KEY: empty"), output
    assert "tiny-secret-4711" not in output


async def test_production_serves_with_its_secret_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """As in the compose file: ENVIRONMENT=production, and the JWT secret only in /run/secrets
    (SECRETS_DIR here), never in the environment."""
    (tmp_path / "jwt_secret_key").write_text(LONG_SECRET + "\n")
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)  # the server inherits the tests' environment
    port = free_port()
    env = {
        **{k: v for k, v in BASE_ENV.items() if k != "JWT_SECRET_KEY"},
        "ENVIRONMENT": "production",
        "SECRETS_DIR": str(tmp_path),
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    server = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    try:
        client = WsClient(server.url)
        await client.connect(make_token(uuid4(), secret=LONG_SECRET))
        assert (await client.expect("connection_established"))["type"] == "connection_established"
        await client.close()
        with pytest.raises(ConnectRefused):  # the development secret of the tests is not it
            await WsClient(server.url).connect(make_token(uuid4()))
    finally:
        await server.stop()
    assert LONG_SECRET not in "".join(server.output)
