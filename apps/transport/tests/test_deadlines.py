"""Deadlines: each key's callback once its deadline has come, in order; a deadline set again or
cancelled does not fire; one timer for every key, and no object per key for the collector."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from apps.transport.deadlines import COMPACT_SLACK, RESOLUTION, Deadlines

TIMEOUT = 5.0


class Recorder:
    """Calls in order, with the loop time of each; ``wait(n)`` until there are ``n``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self._changed: asyncio.Event | None = None  # made in the loop that waits

    def __call__(self, key: str) -> None:
        self.calls.append((key, asyncio.get_running_loop().time()))
        if self._changed is not None:
            self._changed.set()

    async def wait(self, count: int) -> list[str]:
        self._changed = changed = asyncio.Event()

        async def enough() -> None:
            while len(self.calls) < count:
                changed.clear()
                await changed.wait()

        await asyncio.wait_for(enough(), TIMEOUT)
        return [key for key, _ in self.calls]


async def test_each_key_fires_once_in_deadline_order_and_not_before_its_time():
    fired = Recorder()
    deadlines = Deadlines(fired)
    now = asyncio.get_running_loop().time()
    wanted = {"c": now + 0.06, "a": now + 0.02, "b": now + 0.04}
    for key, when in wanted.items():
        deadlines.set(key, when)
    assert len(deadlines) == 3
    assert await fired.wait(3) == ["a", "b", "c"]
    for key, at in fired.calls:
        assert at >= wanted[key] - RESOLUTION
    assert len(deadlines) == 0 and deadlines.when("a") is None
    deadlines.set_in("marker", 0.01)  # nothing fired twice before it
    assert await fired.wait(4) == ["a", "b", "c", "marker"]


async def test_a_deadline_set_again_replaces_the_old_one_earlier_or_later():
    fired = Recorder()
    deadlines = Deadlines(fired)
    deadlines.set_in("later", 0.01)
    deadlines.set_in("later", 0.08)  # moved back: not at 0.01
    deadlines.set_in("sooner", 0.5)
    deadlines.set_in("sooner", 0.03)  # moved forward: the timer is re-armed for it
    start = asyncio.get_running_loop().time()
    assert await fired.wait(2) == ["sooner", "later"]
    times = dict(fired.calls)
    assert times["sooner"] - start < 0.4
    assert times["later"] >= start + 0.08 - 0.01 - RESOLUTION  # not at its first deadline


async def test_a_cancelled_deadline_never_fires():
    fired = Recorder()
    deadlines = Deadlines(fired)
    deadlines.set_in("gone", 0.01)
    deadlines.set_in("kept", 0.02)
    deadlines.cancel("gone")
    deadlines.cancel("never-set")
    deadlines.set_in("marker", 0.05)  # after both: had "gone" fired, it would be listed first
    assert await fired.wait(2) == ["kept", "marker"]


async def test_a_failing_callback_is_logged_and_the_other_keys_still_fire(caplog):
    seen: list[str] = []
    done = asyncio.get_running_loop().create_future()

    def fire(key: str) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("injected")
        if key == "last":
            done.set_result(None)

    deadlines = Deadlines(fire)
    for key in ("first", "bad", "last"):
        deadlines.set_in(key, 0.01)  # all due in the same firing
    with caplog.at_level(logging.ERROR, logger="apps.transport.deadlines"):
        await asyncio.wait_for(done, TIMEOUT)
    assert sorted(seen) == ["bad", "first", "last"]
    assert [r for r in caplog.records if "deadline of bad" in r.getMessage()]


async def test_a_callback_may_set_its_own_next_deadline():
    """The heartbeat's pattern: each step schedules the next one."""
    fired = Recorder()
    deadlines: Deadlines

    def step(key: str) -> None:
        fired(key)
        if len(fired.calls) < 5:
            deadlines.set_in(key, 0.005)

    deadlines = Deadlines(step)
    deadlines.set_in("beat", 0.005)
    assert await fired.wait(5) == ["beat"] * 5


async def test_the_heap_is_rebuilt_when_replaced_entries_pile_up():
    deadlines = Deadlines(lambda key: None)
    for round_ in range(20):
        for i in range(200):
            deadlines.set_in(f"k{i}", 100 + round_)  # each set again, the old entry left behind
    assert len(deadlines) == 200
    assert len(deadlines._heap) <= 2 * 200 + COMPACT_SLACK + 1
    deadlines.close()
    assert len(deadlines) == 0


async def test_the_entries_are_no_work_for_the_garbage_collector():
    deadlines = Deadlines(lambda key: None)
    for i in range(100):
        deadlines.set_in(f"session-{i}", 100 + i)
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in deadlines._heap)
    assert deadlines._timer is not None and deadlines._timer.when() == pytest.approx(deadlines._heap[0][0])
    deadlines.close()


def test_a_new_event_loop_gets_its_own_timer():
    """An app started again in another loop (tests, a reload): the old loop's timer never fires,
    so the first deadline in the new one arms a timer there."""
    fired = Recorder()
    deadlines = Deadlines(fired)

    async def first() -> None:
        deadlines.set_in("stranded", 60)  # left armed in a loop that ends

    async def second() -> list[str]:
        deadlines.set_in("later", 61)
        deadlines.set_in("now", 0.01)
        deadlines.set_in("marker", 0.02)
        return await fired.wait(2)

    asyncio.run(first())
    assert asyncio.run(second()) == ["now", "marker"]
