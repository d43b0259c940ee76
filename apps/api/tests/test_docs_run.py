"""The docs' code blocks that are marked ``<!-- runs in: apps/api/tests/test_docs_run.py::<test> -->``
run here, as written, against a live service: the integration guide's recipes (a FastAPI route, a
Temporal activity, a GitHub delivery, a Python client) and WEBSOCKET_API.md's commands."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from apps.api.app import create_app
from apps.api.tests.postgres_support import fresh_database
from apps.api.tests.redis_support import isolation
from apps.api.tests.support import (
    REPO_ROOT,
    TEST_SECRET,
    WsClient,
    create_project,
    free_port,
    make_token,
    marker,
    serve_in_process,
    start_server_process,
)
from apps.api.tests.support import (
    test_settings as service_settings,
)

DOCS = ("README.md", "WEBSOCKET_API.md", "WEBSOCKET_INTEGRATION_GUIDE.md")
MARKER = re.compile(r"<!-- runs in: (?P<file>[\w/.]+)::(?P<test>\w+) -->\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)
MARKER_LINE = re.compile(r"<!-- runs in: [\w/.]+::\w+ -->")
OUTPUT_TIMEOUT = 60


def marked_blocks() -> list[re.Match[str]]:
    return [m for doc in DOCS for m in MARKER.finditer((REPO_ROOT / doc).read_text())]


def doc_block(test: str) -> str:
    """The code of the block marked as run by ``test`` (exactly one)."""
    found = [m["code"] for m in marked_blocks() if m["test"] == test]
    assert len(found) == 1, f"{len(found)} blocks are marked as run by {test}"
    return found[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def run(args: list[str], env: dict[str, str], *, stdin: bytes | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(stdin), OUTPUT_TIMEOUT)
    assert process.returncode == 0, output.decode()
    return output.decode()


def test_every_code_block_runs_or_says_it_is_a_fragment():
    """Every fenced block of the docs is run by a test (the marker line right before it) or says
    it is not (``fragment`` in its info string: ```` ```json fragment ````)."""
    offending = []
    for doc in DOCS:
        lines = (REPO_ROOT / doc).read_text().split("\n")
        opening = None
        for number, line in enumerate(lines, 1):
            if not line.startswith("```"):
                continue
            if opening is not None:  # the closing fence
                opening = None
                continue
            opening = number
            marked = number > 1 and MARKER_LINE.fullmatch(lines[number - 2]) is not None
            if not marked and "fragment" not in line[3:].split():
                offending.append(f"{doc}:{number}")
        assert opening is None, f"{doc}:{opening}: the block is never closed"
    assert not offending, (
        "each of these blocks needs a `<!-- runs in: <test file>::<test> -->` line right before it, "
        f"or `fragment` in its info string (```json fragment): {', '.join(offending)}"
    )


def test_every_marked_block_names_a_test_of_its_file():
    blocks = marked_blocks()
    assert len(blocks) >= 6
    for block in blocks:
        source = (REPO_ROOT / block["file"]).read_text()
        assert f"def {block['test']}(" in source, f"{block['test']} is not in {block['file']}"
        assert f'"{block["test"]}"' in source or block["file"] != "apps/api/tests/test_docs_run.py", block["test"]


async def test_the_fastapi_route_recipe(tmp_path: Path):
    """Mounted as the guide says: a member renames the project and its room hears it; a non-member
    is refused (403) and nothing changes; an unknown project is 404."""
    module_path = tmp_path / "my_routes.py"
    module_path.write_text(doc_block("test_the_fastapi_route_recipe"))
    spec = importlib.util.spec_from_file_location("my_routes", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = create_app(service_settings())
    app.include_router(module.router)
    owner = uuid4()
    async with serve_in_process(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        project = await create_project(http, make_token(owner))
        watcher = await WsClient(server.url).connect(make_token(owner))
        try:
            assert (await watcher.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
            outsider = await http.put(
                f"/my/projects/{project}/name", json={"name": "taken over"}, headers=bearer(make_token())
            )
            assert (outsider.status_code, outsider.json()["error"]["code"]) == (403, "PROJECT_ACCESS_DENIED")
            no_token = await http.put(f"/my/projects/{project}/name", content=b"x" * 10_000)
            assert no_token.status_code == 401
            renamed = await http.put(
                f"/my/projects/{project}/name", json={"name": "Renamed"}, headers=bearer(make_token(owner))
            )
            assert renamed.json() == {"success": True, "changed_fields": ["name"]}
            event = await watcher.expect("project.updated")
            assert (event["data"]["project_name"], event["data"]["changes"]["fields"]) == ("Renamed", ["name"])
            await marker(watcher)
            assert watcher.received("project.updated") == []  # the refused rename published nothing
            stored = await http.get(f"/api/v1/projects/{project}", headers=bearer(make_token(owner)))
            assert stored.json()["name"] == "Renamed"
            missing = await http.put(f"/my/projects/{uuid4()}/name", json={"name": "x"}, headers=bearer(make_token()))
            assert missing.status_code == 404
        finally:
            await watcher.close()


async def test_the_python_client_example(server, http, connect):
    owner = uuid4()
    token = make_token(owner)
    project = await create_project(http, token)
    env = {"EVENTS_URL": server.url, "EVENTS_TOKEN": token, "PROJECT_ID": project}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", doc_block("test_the_python_client_example"), cwd=REPO_ROOT,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), OUTPUT_TIMEOUT)
        assert line.decode().strip() == "subscribe: success", line
        changed = await http.put(f"/api/v1/projects/{project}", json={"status": "paused"}, headers=bearer(token))
        assert changed.status_code == 200
        rest, _ = await asyncio.wait_for(process.communicate(), OUTPUT_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, rest.decode()
    assert "project.updated: ['status']" in rest.decode()


async def test_the_temporal_activity_recipe(redis_url, tmp_path: Path):
    """The activity, in Temporal's ActivityEnvironment, in a worker process of its own that shares
    the service's Redis: the event reaches the service's clients (the workflow's owner is unknown
    here, so admins)."""
    (tmp_path / "activities.py").write_text(doc_block("test_the_temporal_activity_recipe"))
    tags = isolation()
    env = {
        "REDIS_URL": redis_url, "JWT_SECRET_KEY": TEST_SECRET, "LOG_FILE": "", "HOST": "127.0.0.1",
        "ENVIRONMENT": "development", **tags,
    }  # fmt: skip
    service = await start_server_process([sys.executable, "apps/api/main.py"], env={**env, "PORT": str(free_port())})
    admin = WsClient(service.url)
    workflow = uuid4()
    worker = (
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from temporalio.testing import ActivityEnvironment\n"
        "from activities import report_progress\n"
        "from apps.api.events.broadcaster import get_broadcaster\n"
        "async def main():\n"
        "    async with get_broadcaster():\n"
        f"        await ActivityEnvironment().run(report_progress, {str(workflow)!r}, 'build', 40)\n"
        "    print('activity done')\n"
        "asyncio.run(main())\n"
    )
    try:
        await admin.connect(make_token(roles=["admin"]))
        await admin.expect("connection_established")
        assert "activity done" in await run([sys.executable, "-c", worker], env)
        event = await admin.expect("workflow.progress")
        assert (event["data"]["workflow_id"], event["data"]["progress"], event["source"]) == (
            str(workflow),
            40,
            "workflow_service",
        )
    finally:
        await admin.close()
        await service.stop()


async def test_the_github_webhook_recipe():
    secret = "webhook-secret-" + uuid4().hex
    owner = uuid4()
    app = create_app(service_settings(github_webhook_secret=secret))
    async with serve_in_process(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        project = await create_project(
            http, make_token(owner), name="Hello", repository_url="https://github.com/Octo-Org/Hello-World.git"
        )
        watcher = await WsClient(server.url).connect(make_token(owner))
        try:
            assert (await watcher.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
            env = {"EVENTS_URL": server.url, "GITHUB_WEBHOOK_SECRET": secret}
            output = await run([sys.executable, "-c", doc_block("test_the_github_webhook_recipe")], env)
            assert output.startswith("200 {'status': 'published'"), output
            event = await watcher.expect("pr.created")
            assert (event["data"]["title"], event["data"]["author"], event["data"]["pr_number"]) == (
                "Add a README",
                "octocat",
                1,
            )
        finally:
            await watcher.close()


async def test_the_publish_api_curl_example(server, http, connect):
    member = uuid4()
    project = await create_project(http, make_token(member))
    watcher = await connect(make_token(member))
    assert (await watcher.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
    workflow = uuid4()
    env = {
        "EVENTS_URL": server.url,
        "SERVICE_TOKEN": make_token(roles=["service"]),
        "WORKFLOW_ID": str(workflow),
        "PROJECT_ID": project,
    }
    block = doc_block("test_the_publish_api_curl_example")
    first = await run(["bash", "-c", block], env)
    again = await run(["bash", "-c", block], env)  # a retry with the same Idempotency-Key
    assert '"replayed":false' in first and '"replayed":true' in again, (first, again)
    event = await watcher.expect("workflow.progress")
    assert event["data"]["workflow_id"] == str(workflow) and event["id"] in first
    await marker(watcher)
    assert watcher.received("workflow.progress") == []  # broadcast once


async def test_the_readmes_try_it_commands(server, connect):
    """README's "Try it" commands; the one change: the test server's URL for localhost:8000. The
    health check answers, and the token, exported for the client example, is one the service takes."""
    block = doc_block("test_the_readmes_try_it_commands").replace("http://localhost:8000", server.url)
    env = {"JWT_SECRET_KEY": TEST_SECRET, "ENVIRONMENT": "development"}
    process = await asyncio.create_subprocess_exec(
        "bash", "-e", "-c", f"{block}\nprintenv TOKEN", cwd=REPO_ROOT,  # printenv: exported variables only
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    raw, errors = await asyncio.wait_for(process.communicate(), OUTPUT_TIMEOUT)
    output = raw.decode()  # curl's progress meter is on stderr
    assert process.returncode == 0, (output, errors.decode())
    health, end = json.JSONDecoder().raw_decode(output)
    assert health["status"] == "ok", output
    token = output[end:].strip()
    client = await connect(token)
    assert (await client.expect("connection_established"))["data"]["user_id"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_the_migration_commands(kind, tmp_path: Path):
    block = doc_block("test_the_migration_commands")
    path = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    async def check(url: str) -> None:
        output = await run(["bash", "-e", "-c", block], {"DATABASE_URL": url, **path})
        from apps.api.db.migrate import head

        assert output.count(f"at revision {head()}") == 2, output

    if kind == "sqlite":
        await check(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    else:
        async with fresh_database() as url:
            await check(url)
