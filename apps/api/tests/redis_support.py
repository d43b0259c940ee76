"""Redis for tests: the machine's server on 127.0.0.1:6379, or one started here; and servers of
our own on free ports for the tests that stop and restart Redis. Never skipped: without Redis,
the tests that need it fail and say how to provide it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis import asyncio as aioredis

from apps.api.tests.support import free_port, sqlite_url

DEFAULT_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HOW_TO_PROVIDE = (
    "Redis is needed: run one on 127.0.0.1:6379 (redis-server --daemonize yes --port 6379 --save ''), "
    "set TEST_REDIS_URL, or install redis-server so the tests can start their own "
    "(apt-get install redis-server)."
)


async def reachable(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@dataclass
class RedisProcess:
    """A redis-server of the test's own, which the test may stop and start again on its port.
    It keeps an append-only file in ``directory``, so data survives a restart, as in production.
    ``extra_args`` are given to redis-server after the others (``--requirepass``, TLS options;
    ``--port 0 --tls-port N`` for TLS only), and its output is kept in ``output``."""

    port: int
    directory: str
    process: asyncio.subprocess.Process | None = None
    _drainer: asyncio.Task[None] | None = None
    extra_args: tuple[str, ...] = ()
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable, HOW_TO_PROVIDE
        self.process = await asyncio.create_subprocess_exec(
            executable, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", self.directory, *self.extra_args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert self.process.stdout is not None

        async def ready() -> None:
            assert self.process is not None and self.process.stdout is not None
            while line := await self.process.stdout.readline():
                self.output.append(line.decode(errors="replace"))
                if b"Ready to accept connections" in line:
                    return
            raise AssertionError("redis-server exited before it was ready:\n" + "".join(self.output))

        await asyncio.wait_for(ready(), 10)
        # keep draining its output so it never blocks on a full pipe
        self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            while line := await self.process.stdout.readline():
                self.output.append(line.decode(errors="replace"))

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)
        self.process = None


@contextlib.asynccontextmanager
async def own_redis() -> AsyncIterator[RedisProcess]:
    with tempfile.TemporaryDirectory(prefix="redis-test-") as directory:
        server = RedisProcess(free_port(), directory)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def isolation() -> dict[str, str]:
    """A channel, key prefix and database of their own (a SQLite file, which the instances given
    these settings share), so tests never see each other's events or data."""
    tag = uuid.uuid4().hex[:10]
    return {"REDIS_CHANNEL": f"test-{tag}", "REDIS_KEY_PREFIX": f"test-{tag}:", "DATABASE_URL": sqlite_url()}


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
