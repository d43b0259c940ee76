"""The database as operators meet it: projects survive a restart on the SQLite default, several
instances starting at once on one database migrate it once and all serve, the documented
migration command works, and the migrations build exactly the schema the code queries."""

from __future__ import annotations

import asyncio
import sys
from uuid import uuid4

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from apps.api.db.engine import create_engine
from apps.api.db.migrate import current_revision, head, on_url
from apps.api.db.tables import metadata
from apps.api.tests.postgres_support import fresh_database
from apps.api.tests.support import (
    REPO_ROOT,
    TEST_SECRET,
    WsClient,
    free_port,
    make_token,
    sqlite_url,
    start_server_process,
)


def _env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "REDIS_URL": "",
        "HOST": "127.0.0.1",
        "ENVIRONMENT": "development",
        "DATABASE_URL": database_url,
        **extra,
    }


async def test_projects_survive_a_restart_on_the_sqlite_default():
    url, token = sqlite_url(), make_token()
    auth = {"Authorization": f"Bearer {token}"}
    env = _env(url, PORT=str(free_port()))
    server = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=auth) as http:
            project = (await http.post("/api/v1/projects", json={"name": "kept"})).json()["id"]
            assert (await http.get(f"/api/v1/projects/{project}")).status_code == 200
    finally:
        await server.stop()
    server = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=auth) as http:
            again = await http.get(f"/api/v1/projects/{project}")
    finally:
        await server.stop()
    assert (again.status_code, again.json()["name"]) == (200, "kept")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_instances_starting_at_once_migrate_once_and_all_serve(kind):
    async def run(url: str) -> None:
        envs = [_env(url, PORT=str(free_port())) for _ in range(3)]
        servers = await asyncio.gather(
            *(start_server_process([sys.executable, "apps/api/main.py"], env=env) for env in envs),
            return_exceptions=True,
        )
        try:
            failed = [s for s in servers if isinstance(s, BaseException)]
            assert not failed, failed
            token = make_token()
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
                created = [
                    (await http.post(f"{s.url}/api/v1/projects", json={"name": s.url})).json()["id"] for s in servers
                ]
                for server in servers:  # each instance sees what the others stored
                    listed = (await http.get(f"{server.url}/api/v1/projects")).json()
                    assert sorted(p["id"] for p in listed["items"]) == sorted(created)
            applied = sum("Running upgrade  -> 0001" in "".join(s.output) for s in servers)
            assert applied == 1, "the schema was created more than once"
        finally:
            for server in servers:
                if not isinstance(server, BaseException):
                    await server.stop()
        assert await on_url(url, current_revision) == head()

    if kind == "sqlite":
        await run(sqlite_url())
    else:
        async with fresh_database() as url:
            await run(url)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_the_migration_command_upgrades_and_reports_the_revision(kind):
    async def run(url: str) -> None:
        env = {"DATABASE_URL": url, "JWT_SECRET_KEY": TEST_SECRET}
        for action in ("current", "upgrade", "upgrade", "current"):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "apps.api.db", action, cwd=REPO_ROOT, env={**_path_env(), **env},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, output.decode()
            expected = "(none)" if action == "current" and not await on_url(url, current_revision) else head()
            assert f"at revision {expected}" in output.decode(), output.decode()
        # the schema the migrations built is the one the code queries (alembic's autogenerate sees no difference)
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                diff = await connection.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        finally:
            await engine.dispose()
        assert diff == []

    if kind == "sqlite":
        await run(sqlite_url())
    else:
        async with fresh_database() as url:
            await run(url)


def _path_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG")}


async def test_an_unreachable_database_makes_the_instance_unready_and_its_routes_answer_503():
    """A PostgreSQL that does not answer (nothing listens on the port; migrations off so that the
    instance starts): /ready 503, /health degraded, a project route a clear 503; sockets still work."""
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/events"
    env = _env(nowhere, PORT=str(free_port()), DATABASE_MIGRATE_ON_START="false")
    server = await start_server_process([sys.executable, "apps/api/main.py"], env=env)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ready = await http.get("/ready")
            health = (await http.get("/health")).json()
            listed = await http.get("/api/v1/projects", headers={"Authorization": f"Bearer {make_token()}"})
        client = await WsClient(server.url).connect(make_token())
        try:
            await client.expect("connection_established")
            refused = await client.call("subscribe", {"room": f"project:{uuid4()}"})
            own_room = await client.call("subscribe", {"room": "global"})
        finally:
            await client.close()
    finally:
        await server.stop()
    assert (refused["status"], refused["code"]) == ("error", "UNAVAILABLE")
    assert own_room["status"] == "success"
    assert (ready.status_code, ready.json()["database"]) == (503, "unreachable")
    assert (health["status"], health["database"]) == ("degraded", "unreachable")
    assert (listed.status_code, listed.json()["error"]["code"]) == (503, "UNAVAILABLE")
    assert listed.headers["retry-after"] == "2"
    assert "Traceback" not in "".join(server.output)


async def test_a_database_that_cannot_be_migrated_stops_the_start_saying_why_without_its_password():
    nowhere = f"postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:{free_port()}/events"
    with pytest.raises(AssertionError, match="server exited before it was ready") as info:
        await start_server_process([sys.executable, "apps/api/main.py"], env=_env(nowhere, PORT=str(free_port())))
    output = str(info.value)
    assert "could not be migrated" in output and "not starting" in output
    assert "s3cret-pw" not in output
