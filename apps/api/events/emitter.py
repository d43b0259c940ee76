"""The one thing the broadcaster needs from a transport: send an event to some rooms."""

from __future__ import annotations

from typing import Any, Protocol


class DeliveryError(RuntimeError):
    """The event could not be handed to every instance (Redis is unreachable, for one). Clients
    of the publishing instance may still have received it; no other instance did."""


class Emitter(Protocol):
    async def emit(self, event: str, data: dict[str, Any], *, rooms: list[str]) -> None:
        """Send ``data`` as ``event`` to every connection in any of ``rooms``, once each.

        Raises :class:`DeliveryError` when it cannot."""
        ...
