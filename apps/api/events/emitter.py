"""What the broadcaster needs from a transport: send an event to some rooms, and take
connections out of a room (telling each with an event), on every instance."""

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

    async def evict(self, notice: Event, *, room: str, only_in: str | None = None) -> None:
        """Take every connection out of ``room`` (only those also in ``only_in``, when given) on
        every instance, sending each ``notice`` first.

        Raises :class:`DeliveryError` when other instances cannot be told."""
        ...
