"""One ordered conversation per connection: each connection's jobs run one after another, in the
order they were added; different connections never wait for one another. Pure asyncio.

A connection holds a queue and a Task only while it has work: an idle connection costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

Job = Coroutine[Any, Any, Any]


class TooManyPending(Exception):
    """A connection has more jobs waiting than the limit allows."""


class Conversations:
    """Per-key FIFO execution of coroutines.

    ``add(key, job)`` runs ``job`` after every job added before it for the same key, and before
    any added after it. A job that raises is logged by ``on_error`` (with the key) and the next
    one runs: one failure never stops a conversation. ``max_pending`` bounds the jobs waiting
    per key: past it, :meth:`add` raises :class:`TooManyPending` (and closes ``job``).
    """

    def __init__(self, *, max_pending: int = 1000, on_error: Callable[[str], None] | None = None) -> None:
        self.max_pending = max_pending
        self._on_error = on_error or (lambda key: logger.exception("job of %s failed", key))
        self._queues: dict[str, deque[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, key: str, job: Job) -> None:
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque((job,))
            task = asyncio.ensure_future(self._run(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if len(queue) >= self.max_pending:
            job.close()
            raise TooManyPending(f"{len(queue)} jobs are waiting")
        queue.append(job)

    def busy(self, key: str) -> bool:
        """Whether ``key`` has a job running or waiting."""
        return key in self._queues

    def __len__(self) -> int:
        return len(self._queues)

    async def _run(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job
                except Exception:
                    self._on_error(key)
        finally:
            del self._queues[key]
            while queue:  # cancelled (shutdown): the rest will never run
                queue.popleft().close()
