"""Remembers which rooms a workflow's events go to, so a later call that names only the
``workflow_id`` (the card's Temporal example) reaches the same people.

In-memory and bounded: the oldest workflows are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID


class WorkflowRoutes:
    def __init__(self, max_workflows: int = 10_000) -> None:
        self._rooms: OrderedDict[UUID, tuple[str, ...]] = OrderedDict()
        self._max = max_workflows

    async def remember(self, workflow_id: UUID, rooms: list[str]) -> None:
        self._rooms[workflow_id] = tuple(rooms)
        self._rooms.move_to_end(workflow_id)
        while len(self._rooms) > self._max:
            self._rooms.popitem(last=False)

    async def lookup(self, workflow_id: UUID) -> list[str]:
        return list(self._rooms.get(workflow_id, ()))
