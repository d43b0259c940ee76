"""Redis with a password (``redis://:password@host:6379/0``) and over TLS (``rediss://``), with a
redis-server of the test's own: instances share events through it, a wrong password leaves them
up but not ready, and no password ever reaches their logs."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote
from uuid import uuid4

import httpx
import pytest

from apps.api.tests.redis_support import RedisProcess, isolation
from apps.api.tests.support import (
    REPO_ROOT,
    TEST_SECRET,
    ServerProcess,
    WsClient,
    eventually,
    free_port,
    make_token,
    start_server_process,
)

#: URL-safe, as the deployment files' `openssl rand -hex 32`; the quoted one is not.
PASSWORD = "redis-test-password-" + uuid4().hex
ODD_PASSWORD = "p@ss:w/rd %" + uuid4().hex[:8]


@contextlib.asynccontextmanager
async def redis_server(*extra_args: str, tls_only: bool = False) -> AsyncIterator[RedisProcess]:
    """A redis-server of our own with ``extra_args``; ``tls_only``: it listens with TLS on its
    port and nowhere in plain text."""
    with tempfile.TemporaryDirectory(prefix="redis-auth-test-") as directory:
        port = free_port()
        args = ("--port", "0", "--tls-port", str(port), *extra_args) if tls_only else extra_args
        server = RedisProcess(port, directory, extra_args=args)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def service_env(redis_url: str, tags: dict[str, str]) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "JWT_SECRET_KEY": TEST_SECRET,
        "LOG_FILE": "",
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "ENVIRONMENT": "development",
        **tags,
    }


async def start(redis_url: str, tags: dict[str, str]) -> ServerProcess:
    return await start_server_process([sys.executable, "apps/api/main.py"], env=service_env(redis_url, tags))


async def ready(server: ServerProcess) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        return await http.get("/ready")


async def ready_within(server: ServerProcess) -> None:
    """/ready is 200 (the subscription may take a moment after the start)."""

    async def check() -> bool:
        return (await ready(server)).status_code == 200

    await eventually(check, what=f"{server.url}/ready answering 200")


async def exchange_an_event(a: ServerProcess, b: ServerProcess) -> None:
    """A client on B receives what A publishes (a project's update, stored and published by A)."""
    owner = make_token(uuid4())
    async with httpx.AsyncClient(base_url=a.url, timeout=10, headers={"Authorization": f"Bearer {owner}"}) as http:
        created = await http.post("/api/v1/projects", json={"name": "through Redis"})
        assert created.status_code == 201, created.text
        project = created.json()["id"]
        client = await WsClient(b.url).connect(owner)
        try:
            await client.expect("connection_established")
            assert (await client.call("subscribe", {"room": f"project:{project}"}))["status"] == "success"
            updated = await http.put(f"/api/v1/projects/{project}", json={"status": "archived"})
            assert updated.status_code == 200 and updated.json()["event_delivered"] is True, updated.text
            event = await client.expect("project.updated", timeout=10)
            assert event["data"]["project_id"] == project and event["data"]["status"] == "archived"
        finally:
            await client.close()


async def stop_all(*servers: ServerProcess) -> str:
    for server in servers:
        await server.stop()
    return "".join(line for server in servers for line in server.output)


@pytest.mark.parametrize("password", [PASSWORD, ODD_PASSWORD], ids=["hex", "percent-encoded"])
async def test_two_instances_share_events_through_a_redis_with_a_password(password: str):
    async with redis_server("--requirepass", password) as redis:
        # characters that mean something in a URL are percent-encoded, as in any URL
        url = f"redis://:{quote(password, safe='')}@127.0.0.1:{redis.port}/0"
        tags = isolation()
        a = await start(url, tags)
        b = await start(url, tags)
        try:
            await ready_within(a)
            await ready_within(b)
            await exchange_an_event(a, b)
        finally:
            output = await stop_all(a, b)
    assert "sharing events through Redis at redis://:***@127.0.0.1" in output
    assert password not in output and quote(password, safe="") not in output
    assert "Traceback" not in output


async def test_a_wrong_password_leaves_the_instance_up_but_not_ready_and_out_of_the_logs():
    wrong = "wrong-password-" + uuid4().hex
    async with redis_server("--requirepass", PASSWORD) as redis:
        server = await start(f"redis://:{wrong}@127.0.0.1:{redis.port}/0", isolation())
        try:
            response = await ready(server)
            assert response.status_code == 503, response.text
            assert response.json()["ready"] is False
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                health = await http.get("/health")
            assert health.status_code == 200 and health.json()["redis"] == "unreachable"
        finally:
            output = await stop_all(server)
    assert wrong not in output and PASSWORD not in output
    assert "redis://:***@127.0.0.1" in output
    assert "subscription lost (AuthenticationError)" in output  # why, in one line
    assert "Traceback" not in output


async def test_without_the_password_redis_refuses_the_instance():
    """The server really asks for it: the same instance with no password in its URL is not ready."""
    async with redis_server("--requirepass", PASSWORD) as redis:
        server = await start(f"redis://127.0.0.1:{redis.port}/0", isolation())
        try:
            assert (await ready(server)).status_code == 503
        finally:
            output = await stop_all(server)
    assert PASSWORD not in output


# --- TLS ---------------------------------------------------------------------------------------


def redis_supports_tls() -> bool:
    """Debian's redis-server is built with TLS; a build without it refuses --tls-port."""
    executable = shutil.which("redis-server")
    assert executable, "redis-server is needed (apt-get install redis-server)"
    probe = subprocess.run(
        [executable, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=10, check=False
    )
    return "Bad directive" not in probe.stdout + probe.stderr


def openssl(*args: str, cwd: Path) -> None:
    executable = shutil.which("openssl")
    assert executable, "openssl is needed to make the test's certificates (apt-get install openssl)"
    subprocess.run([executable, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA, and a certificate it signed for 127.0.0.1 (what the instance connects to)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=event-service test CA", cwd=directory)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext", cwd=directory)  # fmt: skip
    return {name: directory / file for name, file in (("ca", "ca.crt"), ("cert", "server.crt"), ("key", "server.key"))}


async def test_instances_share_events_over_tls_with_the_ca_given_in_the_url(tmp_path: Path):
    if not redis_supports_tls():
        pytest.fail("this redis-server is built without TLS (--tls-port): install Debian's redis-server")
    files = certificates(tmp_path)
    tls = ("--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
           "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no")  # fmt: skip
    async with redis_server("--requirepass", PASSWORD, *tls, tls_only=True) as redis:
        base = f"rediss://:{PASSWORD}@127.0.0.1:{redis.port}/0"
        tags = isolation()
        # the CA as a URL option, which redis-py takes (ssl_ca_certs=...), through to every client
        a = await start(f"{base}?ssl_ca_certs={files['ca']}", tags)
        b = await start(f"{base}?ssl_ca_certs={files['ca']}", tags)
        # without the CA the server's certificate cannot be verified; plain text gets no answer
        unverified = await start(base, tags)
        plain = await start(f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0", tags)
        try:
            await ready_within(a)
            await ready_within(b)
            await exchange_an_event(a, b)
            assert (await ready(unverified)).status_code == 503
            assert (await ready(plain)).status_code == 503
        finally:
            output = await stop_all(a, b, unverified, plain)
    assert "sharing events through Redis at rediss://:***@127.0.0.1" in output
    assert PASSWORD not in output
    assert "Traceback" not in output


def test_the_tls_certificates_are_what_the_test_says(tmp_path: Path):
    """The server certificate is signed by the CA and names 127.0.0.1 (else the TLS test would
    prove nothing about verification)."""
    files = certificates(tmp_path)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files["ca"]), str(files["cert"])],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert verify.returncode == 0 and ": OK" in verify.stdout
