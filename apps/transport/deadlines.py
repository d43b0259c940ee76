"""Many deadlines, one event-loop timer.

A timer per connection (``loop.call_at``) costs four objects that the garbage collector tracks
for as long as it is pending: the handle, uvloop's timer, the copy of the context and the bound
method it calls. A connection had three (the heartbeat, the token's warning and its expiry): 12
of the 44 objects a full collection walked per idle connection, and such a collection stops the
event loop for all of them (bench/README.md, "Full collections").

:class:`Deadlines` keeps one deadline per key (a session id) as an entry ``(when, key)`` in a heap:
a tuple of a float and a string, which the collector stops tracking after its first pass. One
timer is armed for the earliest entry; when it fires, every key that is due is handed to the
callback, in order of its deadline. Setting a key again replaces its deadline and cancelling it
forgets it; the old entry stays in the heap, skipped when it comes up, until the heap holds more
than twice the live keys and is rebuilt from them.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Entries this close to the loop's time count as due when the timer fires (the event loop's
#: timers have millisecond steps, and asyncio's own loop runs what is due within its clock's resolution).
RESOLUTION = 0.001
#: The heap is rebuilt when it holds more than twice the live keys plus this many entries.
COMPACT_SLACK = 1024


class Deadlines:
    """One deadline per key, in event-loop time (``loop.time()``), on one timer of the running
    loop. ``fire(key)`` is called once a key's deadline has come, unless it was set again or
    cancelled meanwhile (by another key's callback too); an exception it raises is logged and does
    not stop the other keys."""

    __slots__ = ("_due", "_fire", "_heap", "_loop", "_timer", "_timer_at")

    def __init__(self, fire: Callable[[str], object]) -> None:
        self._fire = fire
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def set(self, key: str, when: float) -> None:
        """``key``'s deadline is ``when`` (loop time), in place of any it had."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (an app started again)
            self._new_loop(loop)
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        if len(self._heap) > 2 * len(self._due) + COMPACT_SLACK:
            self._heap = [(at, name) for name, at in self._due.items()]
            heapq.heapify(self._heap)
        if when < self._timer_at:
            self._arm(loop, when)

    def set_in(self, key: str, delay: float) -> None:
        """``key``'s deadline is ``delay`` seconds from now."""
        self.set(key, asyncio.get_running_loop().time() + delay)

    def cancel(self, key: str) -> None:
        """Forget ``key``'s deadline, if it has one."""
        self._due.pop(key, None)

    def when(self, key: str) -> float | None:
        """``key``'s deadline (loop time), or None."""
        return self._due.get(key)

    def __len__(self) -> int:
        return len(self._due)

    def _new_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """What the old loop's deadlines were for (its connections) ended with it, and its timer
        never fires: start empty in ``loop``."""
        self._loop, self._timer, self._timer_at = loop, None, math.inf
        self._due.clear()
        self._heap.clear()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._run)
        self._timer_at = when

    def _run(self) -> None:
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time() + RESOLUTION
        heap, due = self._heap, self._due
        # what was due when the timer fired: a callback that sets its key due again at once runs
        # again at the next timer, not in a loop that would never end
        budget = len(heap)
        try:
            while budget and heap and heap[0][0] <= now:
                budget -= 1
                when, key = heapq.heappop(heap)
                if due.get(key) != when:  # set again, or cancelled (by an earlier callback too)
                    continue
                del due[key]
                try:
                    self._fire(key)
                except Exception:
                    logger.exception("deadline of %s: its callback failed", key)
        finally:  # even when a callback raised past us: the keys not yet run keep their deadlines
            while heap and due.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            if heap and heap[0][0] < self._timer_at:
                self._arm(loop, heap[0][0])
