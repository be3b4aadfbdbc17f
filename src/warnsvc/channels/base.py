"""The Channel protocol: how claimed outbox rows are delivered.

A channel receives a batch of claimed :class:`~warnsvc.outbox.Delivery` rows and returns one
:class:`Outcome` per row; the dispatcher records each outcome in the outbox (delivered,
rescheduled, or dead). Channels never touch the outbox themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from warnsvc.model import Event
from warnsvc.outbox import Delivery

if TYPE_CHECKING:
    from warnsvc.store.db import RouteContext


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The result of one delivery attempt."""

    delivery_id: int
    ok: bool
    error: str | None = None
    status: int | None = None
    permanent: bool = False
    """True when retrying cannot help: the row goes straight to dead-letter."""
    retry_after: float | None = None
    deferred: bool = False
    """Not attempted (shutdown, or too late in the lease): the row is released untouched."""


class Channel(Protocol):
    name: str

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        """Who of this channel receives ``event`` (read on the event's own transaction)."""
        ...

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Attempt every delivery once; never raise for a single row's failure."""
        ...
