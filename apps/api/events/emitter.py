"""The one thing the broadcaster needs from a transport: send an event to some rooms."""

from __future__ import annotations

from typing import Protocol

from apps.api.websocket.models import Event


class DeliveryError(RuntimeError):
    """The event could not be handed to every instance (Redis is unreachable, for one). Clients
    of the publishing instance may still have received it; no other instance did."""


class Emitter(Protocol):
    async def emit(self, event: Event, *, rooms: list[str]) -> None:
        """Send ``event`` to every connection in any of ``rooms``, once each.

        Raises :class:`DeliveryError` when it cannot."""
        ...
