"""The Channel protocol: how events reach recipients, and how a channel plugs into the service.

Two contracts, both small:

- :class:`Channel` is what the pipeline and the dispatcher use. ``recipients`` names who of the
  channel receives an event (one outbox row each, written with the event); ``deliver`` attempts
  a batch of claimed :class:`~warnsvc.outbox.Delivery` rows and returns one :class:`Outcome`
  per row, which the dispatcher records (delivered, rescheduled, or dead): channels never touch
  the outbox themselves. ``options`` declares how the dispatcher claims the channel's rows
  (:class:`ChannelOptions`) and ``abort`` is called when a shutdown overruns its grace period.
- :class:`ChannelKind` is what :mod:`warnsvc.channels.registry` holds: a channel module's name
  and its ``build(settings, context)``, which returns a :class:`Plugged` (the channels it made
  and whatever the service must mount, start, reconfigure on a reload and close).

:class:`BaseChannel` and :class:`Plugged` give every optional part a no-op default, so a small
channel writes only ``recipients`` and ``deliver`` (see docs/channels.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from warnsvc.model import Event
from warnsvc.outbox import Delivery, RetryPolicy

if TYPE_CHECKING:
    from aiohttp import web

    from warnsvc.config import Settings
    from warnsvc.store.db import RouteContext, Store


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOptions:
    """How the dispatcher claims a channel's rows; None takes the dispatcher's own value."""

    batch_size: int | None = None
    """Rows per claim."""
    parallel_batches: int = 1
    """Claimed batches in flight at once."""
    lease: float | None = None
    """Seconds a claim holds its rows (a replica that dies gives them back after this)."""
    retry_policy: RetryPolicy | None = None
    """When a failed row is tried again, and when it is dead-lettered."""


class Channel(Protocol):
    """A way to reach recipients: routes events to them and delivers claimed rows."""

    name: str

    @property
    def options(self) -> ChannelOptions:
        """Read for every claim, so a reload can change them."""
        ...

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        """Who of this channel receives ``event`` (read on the event's own transaction)."""
        ...

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        """Attempt every delivery once; never raise for a single row's failure."""
        ...

    def abort(self) -> None:
        """Shutdown overran its grace period: stop sends in flight, answer them ``deferred``."""
        ...


class BaseChannel:
    """Defaults for a :class:`Channel`: the dispatcher's own options, nothing to abort."""

    name: str

    @property
    def options(self) -> ChannelOptions:
        return ChannelOptions()

    def abort(self) -> None:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelContext:
    """What a channel module may use to build its channels."""

    store: Store
    user_agent: str
    """The User-Agent naming the service, for channels that make HTTP requests."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Running:
    """What the running service offers a started channel module."""

    wake: Callable[[], None]
    """Look for due rows now (after a channel queued some of its own)."""
    leading: Callable[[], bool]
    """Whether this replica leads (only the leader builds digests and the like)."""


class Plugged:
    """What a channel module added to the service; every part but ``channels`` is optional.

    The service routes every event through every channel of ``channels`` (those that want no
    routed events answer ``[]``), dispatches their rows, calls :meth:`mount` on its web app
    before serving, :meth:`start` once the dispatcher runs, :meth:`reconfigure` on every config
    reload and :meth:`close` at the end.
    """

    def __init__(self, *channels: Channel) -> None:
        self.channels: tuple[Channel, ...] = channels

    def mount(self, app: web.Application, running: Running) -> None:
        """Add routes (or sub-apps) to the web app; called once, before it serves."""
        return None

    def start(self, running: Running) -> None:
        """Start background work (called once the dispatcher runs)."""
        return None

    async def reconfigure(self, old: Settings, new: Settings) -> list[str]:
        """Apply a reloaded config to later deliveries; return the keys whose change needs a
        restart (they are reported, and keep their old value until then)."""
        return []

    async def close(self) -> None:
        """Stop background work and close connections."""
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelKind:
    """A channel module's entry in the registry."""

    name: str
    """Its key in :data:`warnsvc.channels.registry.CHANNELS` (usually its config section)."""
    build: Callable[[Settings, ChannelContext], Awaitable[Plugged | None]]
    """Make the channels from the settings; None when the settings do not use it."""
