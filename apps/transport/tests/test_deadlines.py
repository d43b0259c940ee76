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


async def test_the_heap_is_rebuilt_when_replaced_entries_pile_up_and_every_key_still_fires_once():
    fired = Recorder()
    deadlines = Deadlines(fired)
    for round_ in range(20):
        for i in range(200):
            deadlines.set_in(f"k{i}", 100 + round_)  # each set again, the old entry left behind
    assert len(deadlines) == 200
    assert len(deadlines._heap) <= 2 * 200 + COMPACT_SLACK + 1
    for i in reversed(range(200)):  # last, each one due soon, k0 first
        deadlines.set_in(f"k{i}", 0.01 + i * 0.0001)
    assert await fired.wait(200) == [f"k{i}" for i in range(200)]
    deadlines.set_in("marker", 0.01)  # none of the 4,000 entries left behind fires
    assert (await fired.wait(201))[-1] == "marker" and len(fired.calls) == 201


async def test_a_key_cancelled_or_set_again_by_an_earlier_callback_of_the_same_firing_does_not_run():
    fired = Recorder()
    deadlines: Deadlines

    def fire(key: str) -> None:
        fired(key)
        if key == "first":
            deadlines.cancel("second")
            deadlines.set_in("third", 0.03)

    deadlines = Deadlines(fire)
    when = asyncio.get_running_loop().time() + 0.01
    for key in ("first", "second", "third"):
        deadlines.set(key, when)  # all three due in one firing, in this order
    deadlines.set_in("marker", 0.02)
    assert await fired.wait(3) == ["first", "marker", "third"]


async def test_keys_left_when_a_callback_raises_past_the_timer_keep_their_deadlines():
    """An exception that is not an Exception (a cancellation, an exit) leaves the timer's
    callback: the keys of that firing not run yet still fire, at the next timer."""
    fired = Recorder()
    raised = False

    def fire(key: str) -> None:
        nonlocal raised
        if key == "b" and not raised:
            raised = True
            raise KeyboardInterrupt
        fired(key)

    deadlines = Deadlines(fire)
    past = asyncio.get_running_loop().time() - 1
    for key in ("a", "b", "c"):
        deadlines.set(key, past)  # due; the loop has not run the timer yet
    with pytest.raises(KeyboardInterrupt):
        deadlines._run()  # the timer's callback, called here so that what it raises reaches the test
    assert [key for key, _ in fired.calls] == ["a"]
    assert deadlines.when("c") == past
    assert await fired.wait(2) == ["a", "c"]


async def test_the_entries_are_no_work_for_the_garbage_collector():
    deadlines = Deadlines(lambda key: None)
    for i in range(100):
        deadlines.set_in(f"session-{i}", 100 + i)
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in deadlines._heap)
    assert deadlines._timer is not None and deadlines._timer.when() == pytest.approx(deadlines._heap[0][0])


def test_a_new_event_loop_starts_afresh_with_a_timer_of_its_own():
    """An app started again in another loop (tests, a reload): the old loop's timer never fires,
    and what its deadlines were for ended with it."""
    fired = Recorder()
    deadlines = Deadlines(fired)

    async def first() -> None:
        deadlines.set_in("old", 0.01)  # armed in a loop that ends before its timer fires

    async def second() -> list[str]:
        deadlines.set_in("new", 0.03)  # later than "old": the old loop's timer would be waited for
        deadlines.set_in("marker", 0.05)
        return await fired.wait(2)

    asyncio.run(first())
    assert asyncio.run(second()) == ["new", "marker"]
    assert deadlines.when("old") is None
