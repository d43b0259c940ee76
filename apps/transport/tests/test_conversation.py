"""Conversations: per-connection order, no waiting across connections, failures isolated."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from apps.transport.conversation import Conversations, TooManyPending


async def test_jobs_of_one_key_run_one_at_a_time_in_the_order_added():
    conversations = Conversations()
    log: list[tuple[str, int]] = []
    running = 0

    async def job(i: int) -> None:
        nonlocal running
        running += 1
        assert running == 1, "two jobs of one key overlapped"
        await asyncio.sleep(random.random() / 1000)
        log.append(("end", i))
        running -= 1

    for i in range(50):
        conversations.add("a", job(i))
    await asyncio.wait_for(_idle(conversations), 5)
    assert log == [("end", i) for i in range(50)]


async def test_a_slow_key_never_delays_another():
    conversations = Conversations()
    slow_started, release = asyncio.Event(), asyncio.Event()
    fast_done = asyncio.Event()

    async def slow() -> None:
        slow_started.set()
        await release.wait()

    async def fast() -> None:
        fast_done.set()

    conversations.add("slow", slow())
    await asyncio.wait_for(slow_started.wait(), 5)
    conversations.add("fast", fast())
    await asyncio.wait_for(fast_done.wait(), 5)  # while "slow" still waits
    assert conversations.busy("slow") and not release.is_set()
    release.set()
    await asyncio.wait_for(_idle(conversations), 5)


async def test_a_failing_job_is_reported_and_the_next_one_runs(caplog):
    failures: list[str] = []
    conversations = Conversations(on_error=failures.append)
    done = asyncio.Event()

    async def boom() -> None:
        raise RuntimeError("injected")

    async def after() -> None:
        done.set()

    conversations.add("a", boom())
    conversations.add("a", after())
    await asyncio.wait_for(done.wait(), 5)
    assert failures == ["a"]


async def test_an_idle_key_holds_nothing():
    conversations = Conversations()

    async def job() -> None:
        await asyncio.sleep(0)

    conversations.add("a", job())
    assert conversations.busy("a") and len(conversations) == 1
    await asyncio.wait_for(_idle(conversations), 5)
    assert not conversations.busy("a") and len(conversations) == 0


async def test_too_many_waiting_jobs_are_refused_and_not_left_unawaited(recwarn):
    conversations = Conversations(max_pending=3)
    started, release = asyncio.Event(), asyncio.Event()

    async def job() -> None:
        started.set()
        await release.wait()

    conversations.add("a", job())
    await asyncio.wait_for(started.wait(), 5)  # running
    for _ in range(3):
        conversations.add("a", job())  # waiting
    with pytest.raises(TooManyPending):
        conversations.add("a", job())
    release.set()
    await asyncio.wait_for(_idle(conversations), 5)
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def _idle(conversations: Conversations) -> None:
    while len(conversations):  # noqa: ASYNC110 - the conversations offer no event to wait on
        await asyncio.sleep(0.001)


def test_the_default_error_report_logs_the_key(caplog):
    async def main() -> None:
        conversations = Conversations()

        async def boom() -> None:
            raise RuntimeError("injected")

        conversations.add("conn-1", boom())
        await asyncio.wait_for(_idle(conversations), 5)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert any("conn-1" in r.getMessage() for r in caplog.records)
