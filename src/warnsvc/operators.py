"""Operator alerts: tell the people who run warnsvc when something breaks, once per change.

Notices are recorded where the trouble is seen, in the store's ``notices`` (a disabled webhook
endpoint's notice may name the partner's contact instead of the operators):

    source.unhealthy        a source failed ``detection.failure_threshold`` polls in a row
    source.recovered        ... and then succeeded again
    source.unknown_level    a level word outside the scale appeared (a new word, once)
    webhook.endpoint_disabled
    email.address_suppressed
    outbox.dead_letters     a channel's dead-lettered rows grew by ``operators.dead_letters``

Each notice is sent once: the :class:`NoticeForwarder` turns every new notice into an
``operator.notice`` event with its outbox rows in one transaction and marks the notice
forwarded. The rows go through the channels subscribers and partners use, with their retries,
dead letters and metrics:

- ``operators.webhooks``: channel ``webhooks``, to the static endpoint ``ops_<hash of URL>``
  made of each URL (signed like every webhook, through the SSRF guard);
- ``operators.emails`` and a partner's contact: channel ``email``, recipient
  ``mailto:<address>`` (the subscribers' mail builder and SMTP pool, templates
  ``email/notice*``);
- ``operators.notify``: channel ``notify``, recipient the Apprise target's id (see
  :func:`operator_targets`).

Those endpoints and addresses receive no routed event, and routing never reaches operators'
notices: subscribers and partners never see them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from warnsvc.channels.webhooks import WEBHOOKS_CHANNEL, operator_endpoint_id
from warnsvc.config import Settings
from warnsvc.errors import SourceError, UnknownLevelError
from warnsvc.model import new_event_id
from warnsvc.outbox import DEAD
from warnsvc.store.db import SourceHealth, Store
from warnsvc.store.notices import OPERATOR_NOTICE, Notice, NoticeStore

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

NOTICE_TYPE = OPERATOR_NOTICE
EMAIL_CHANNEL = "email"
"""The email channel's name (its module, with the SMTP client, loads only with ``email:``)."""
NOTIFY_CHANNEL = "notify"


class SourceAlerts:
    """Notices about sources, decided from their health before and after each poll."""

    def __init__(self, notices: NoticeStore, *, threshold: int) -> None:
        self.notices = notices
        self.threshold = threshold

    async def failed(
        self,
        before: SourceHealth | None,
        after: SourceHealth,
        error: SourceError,
        *,
        now: datetime,
    ) -> None:
        sid = after.source_id
        if after.consecutive_failures == self.threshold:
            await self.notices.record(
                kind="source.unhealthy",
                now=now,
                subject=f"source {sid} is failing: {after.consecutive_failures} polls in a row",
                detail={
                    "source": sid,
                    "failures": after.consecutive_failures,
                    "error": after.last_error,
                },
            )
        if isinstance(error, UnknownLevelError) and (
            before is None or before.last_error != after.last_error
        ):
            await self.notices.record(
                kind="source.unknown_level",
                now=now,
                subject=f"source {sid} printed {error.name!r}, a level outside scale {error.scale}",
                detail={
                    "source": sid,
                    "level": error.name,
                    "scale": error.scale,
                    "known": error.known,
                },
            )

    async def succeeded(
        self,
        before: SourceHealth | None,
        source_id: str,
        warnings: Sequence[str],
        *,
        now: datetime,
    ) -> None:
        if before is not None and before.consecutive_failures >= self.threshold:
            await self.notices.record(
                kind="source.recovered",
                now=now,
                subject=f"source {source_id} recovered after {before.consecutive_failures} "
                "failed polls",
                detail={"source": source_id, "failures": before.consecutive_failures},
            )
        unknown = [w for w in warnings if "not on scale" in w]
        previous = getattr(before, "last_warning", None) or ""
        fresh = [w for w in unknown if w not in previous]
        if fresh:
            await self.notices.record(
                kind="source.unknown_level",
                now=now,
                subject=f"source {source_id} skipped items with a level outside its scale",
                detail={"source": source_id, "items": fresh[:20]},
            )


class NoticeForwarder:
    """Queue every new notice for the operators (or a disabled endpoint's partner contact)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def routes(self, notice: Notice) -> dict[str, list[str]]:
        """The outbox rows of ``notice``: channel -> recipients."""
        email_ready = self.settings.email is not None and self.settings.email.enabled
        if notice.recipient is not None:
            contact = notice.recipient
            return {EMAIL_CHANNEL: [f"mailto:{contact}"]} if email_ready and "@" in contact else {}
        ops = self.settings.operators
        routes = {
            WEBHOOKS_CHANNEL: [operator_endpoint_id(str(w.url)) for w in ops.webhooks],
            EMAIL_CHANNEL: [f"mailto:{a}" for a in ops.emails] if email_ready else [],
            NOTIFY_CHANNEL: operator_targets(self.settings),
        }
        return {channel: recipients for channel, recipients in routes.items() if recipients}

    async def forward(self, *, now: datetime) -> int:
        """Turn new notices into operator events with their outbox rows. Returns how many."""
        return await self.store.notices.forward(
            self.routes, _payload, new_id=lambda: new_event_id(now), now=now
        )

    async def check_dead_letters(self, *, now: datetime) -> int:
        """A notice per channel whose dead letters grew by ``operators.dead_letters``."""
        threshold = self.settings.operators.dead_letters
        dead = {
            c: n for (c, state), n in (await self.store.outbox.counts()).items() if state == DEAD
        }
        told = await self.store.notices.recent(kind="outbox.dead_letters", limit=1000)
        last = {n.detail.get("channel"): int(n.detail.get("dead", 0)) for n in reversed(told)}
        raised = 0
        for channel, count in sorted(dead.items()):
            if count < last.get(channel, 0) + threshold:
                continue
            await self.store.notices.record(
                kind="outbox.dead_letters",
                now=now,
                subject=f"{count} {channel} deliveries are dead-lettered; see `warnsvc status`",
                detail={"channel": channel, "dead": int(count)},
            )
            raised += 1
        return raised


def _payload(notice: Notice) -> dict[str, Any]:
    moment = notice.created_at.isoformat().replace("+00:00", "Z")
    return {
        "id": f"ntc_{notice.id}",
        "type": NOTICE_TYPE,
        "kind": notice.kind,
        "subject": notice.subject,
        "detail": notice.detail,
        "occurred_at": moment,
        "detected_at": moment,
    }


def operator_targets(settings: Settings) -> list[str]:
    """The notify channel's target ids of the operators' Apprise URLs (``operators.notify``)."""
    if not settings.operators.notify:
        return []
    from warnsvc.channels.notify import operator_target_ids  # Apprise itself is not loaded

    return operator_target_ids(settings)
