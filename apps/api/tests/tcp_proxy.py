"""A small TCP proxy on 127.0.0.1 for tests that take a client's network away: :meth:`TcpProxy.cut`
closes every connection through it and refuses new ones (each is closed as soon as it is
accepted, as a dead network or a restarting balancer would), :meth:`TcpProxy.restore` lets them
through again. With several targets it is a round-robin balancer that skips a target it cannot
reach (:meth:`TcpProxy.drop` takes one out); with ``failover=True`` every connection goes to the
first target that answers (a sticky balancer: one server while it lives, the next when it dies)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator


class TcpProxy:
    def __init__(self, *targets: int, failover: bool = False) -> None:
        self.targets = list(targets)
        self.failover = failover
        self._next = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.up = True
        self.port = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up or not self.targets:
            writer.transport.abort()
            return
        upstream = None
        first = 0 if self.failover else next(self._next)
        for i in range(len(self.targets)):
            port = self.targets[(first + i) % len(self.targets)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        for pipe in pipes:
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def cut(self) -> None:
        """Close every connection through the proxy (reset) and refuse new ones."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    def drop(self, port: int) -> None:
        """Send no new connection to ``port``."""
        self.targets = [target for target in self.targets if target != port]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@contextlib.asynccontextmanager
async def tcp_proxy(*targets: int, failover: bool = False) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(*targets, failover=failover).start()
    try:
        yield proxy
    finally:
        await proxy.close()
