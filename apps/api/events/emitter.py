"""The one thing the broadcaster needs from a transport: send an event to some rooms."""

from __future__ import annotations

from typing import Any, Protocol


class Emitter(Protocol):
    async def emit(self, event: str, data: dict[str, Any], *, rooms: list[str]) -> None:
        """Send ``data`` as ``event`` to every connection in any of ``rooms``, once each."""
        ...
