"""The pipeline stages between a source and a channel: polling and dispatching.

:class:`Poller` runs one source: fetch and parse, detect against stored state, then write the
new states, the confirmed events and their outbox rows in one transaction. A failure marks the
source unhealthy and writes nothing else.

:class:`Dispatcher` claims due outbox rows per channel and records each outcome: delivered,
rescheduled by the :class:`~warnsvc.outbox.RetryPolicy`, or dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from warnsvc.channels.base import Channel, Outcome
from warnsvc.detect import Detection, DetectionPolicy, build_event, detect_changes
from warnsvc.errors import SourceError, StoreError
from warnsvc.model import Event, Observation, SituationState
from warnsvc.outbox import Delivery, Outbox, RetryPolicy
from warnsvc.sources.base import Source
from warnsvc.store.db import HistoryEntry, Recipients, Store

log = logging.getLogger(__name__)


def new_event_id(now: datetime) -> str:
    """A unique, time-ordered event id: ``evt_`` + milliseconds (hex) + 64 random bits."""
    return f"evt_{int(now.timestamp() * 1000):012x}{secrets.token_hex(8)}"


@dataclass(slots=True, kw_only=True)
class PollReport:
    """What one poll of one source found and did."""

    source_id: str
    ok: bool
    error: str | None = None
    observations: list[Observation] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    baseline: bool = False
    dry_run: bool = False


class Routing:
    """Route each event to the recipients every channel names for it."""

    def __init__(self, channels: Mapping[str, Channel]) -> None:
        self.channels = channels

    async def __call__(self, conn: AsyncConnection, event: Event) -> dict[str, list[str]]:
        return {name: list(await ch.recipients(conn, event)) for name, ch in self.channels.items()}


class Poller:
    """Poll sources one at a time each (a lock per source), and record what they say."""

    def __init__(
        self,
        store: Store,
        sources: Mapping[str, Source],
        policy: DetectionPolicy,
        recipients: Recipients,
    ) -> None:
        self.store = store
        self.sources = sources
        self.policy = policy
        self.recipients = recipients
        self._locks: dict[str, asyncio.Lock] = {}

    async def poll(self, source_id: str, *, dry_run: bool = False) -> PollReport:
        source = self.sources[source_id]
        async with self._locks.setdefault(source_id, asyncio.Lock()):
            return await self._poll(source, dry_run=dry_run)

    async def _poll(self, source: Source, *, dry_run: bool) -> PollReport:
        sid = source.info.id
        report = PollReport(source_id=sid, ok=False, dry_run=dry_run)
        try:
            report.observations = await source.poll()
        except SourceError as exc:
            report.error = str(exc)
            log.warning(
                "source %s failed: %s", sid, exc, extra={"action": "source_failed", "source": sid}
            )
            if not dry_run:
                await self.store.record_failure(sid, report.error, now=_now())
            return report
        now = _now()
        detection = await self._detect(source, report.observations, dry_run=dry_run, now=now)
        report.ok = True
        report.baseline = detection.baseline
        report.pending = detection.pending
        report.skipped = detection.skipped
        report.events = [
            build_event(
                c,
                event_id=new_event_id(now),
                source_id=sid,
                source_name=source.info.name,
                scale=source.info.scale,
                now=now,
            )
            for c in detection.changes
        ]
        if not dry_run:
            await self._record(source, detection, report, now=now)
        return report

    async def _detect(
        self, source: Source, observations: list[Observation], *, dry_run: bool, now: datetime
    ) -> Detection:
        info = source.info
        previous: dict[str, SituationState] = await self.store.situation_states(info.namespace)
        health = await self.store.source_health(info.id)
        baseline = health is None or not health.baseline_done
        policy = self.policy
        if dry_run:  # show what confirmation would emit; nothing is written either way
            policy = DetectionPolicy(confirmations=1, announce_initial=policy.announce_initial)
        return detect_changes(
            previous,
            observations,
            scale=info.scale,
            source_id=info.id,
            authoritative=info.authoritative,
            baseline=baseline,
            policy=policy,
            now=now,
        )

    async def _record(
        self, source: Source, detection: Detection, report: PollReport, *, now: datetime
    ) -> None:
        history = _history(source.info.id, detection, report.events)
        await self.store.apply_poll(
            source_id=source.info.id,
            scale=source.info.scale.id,
            states=detection.states,
            history=history,
            events=report.events,
            recipients=self.recipients,
            observations=sum(1 for o in report.observations if o.problem is None),
            now=now,
            warnings=report.skipped,
        )
        for reason in report.skipped:
            log.warning(
                "source %s skipped: %s",
                source.info.id,
                reason,
                extra={"action": "item_skipped", "source": source.info.id},
            )
        for event in report.events:
            log.info(
                "%s %s: %s -> %s",
                event.type.value,
                event.situation,
                event.previous_level.name if event.previous_level else "-",
                event.level.name if event.level else "-",
                extra={
                    "action": "event_emitted",
                    "source": event.source_id,
                    "situation": event.situation,
                    "event": event.id,
                },
            )


def _history(source_id: str, detection: Detection, events: Sequence[Event]) -> list[HistoryEntry]:
    """Level history rows: every state of a baseline, and every confirmed change."""
    if detection.baseline:
        return [
            HistoryEntry(
                situation=s.situation,
                source_id=source_id,
                level=s.level,
                status=s.status,
                page_date=s.date,
                event_id=None,
            )
            for s in detection.states
        ]
    return [
        HistoryEntry(
            situation=e.situation,
            source_id=source_id,
            level=e.level.id if e.level else None,
            status=e.status,
            page_date=c.date,
            event_id=e.id,
        )
        for e, c in zip(events, detection.changes, strict=True)
    ]


class Dispatcher:
    """Deliver due outbox rows through their channels until stopped."""

    def __init__(
        self,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        policy: RetryPolicy,
        *,
        batch: int = 100,
        idle: float = 5.0,
    ) -> None:
        self.outbox = outbox
        self.channels = channels
        self.policy = policy
        self.batch = batch
        self.idle = idle
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Look for work now (called after events are written)."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.drain()
            except StoreError as exc:
                log.error(
                    "dispatcher cannot reach the store: %s",
                    exc,
                    extra={"action": "dispatch_failed"},
                )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def drain(self) -> int:
        """Deliver every row that is due now, channel by channel. Returns how many were tried."""
        tried = 0
        for name, channel in self.channels.items():
            while not self._stopping:
                claimed = await self.outbox.claim(name, now=_now(), limit=self.batch)
                if not claimed:
                    break
                tried += len(claimed)
                await self._deliver(channel, claimed)
        return tried

    async def _deliver(self, channel: Channel, claimed: Sequence[Delivery]) -> None:
        try:
            outcomes = await channel.deliver(claimed)
        except Exception as exc:  # a channel bug must not lose rows: they are retried
            log.exception(
                "channel %s raised",
                channel.name,
                extra={"action": "channel_crashed", "channel": channel.name},
            )
            outcomes = [Outcome(delivery_id=d.id, ok=False, error=repr(exc)) for d in claimed]
        by_id = {d.id: d for d in claimed}
        now = _now()
        done = [o.delivery_id for o in outcomes if o.ok]
        if done:
            await self.outbox.complete(done, now=now)
        for outcome in outcomes:
            if not outcome.ok:
                await self._failed(by_id[outcome.delivery_id], outcome, now=now)

    async def _failed(self, delivery: Delivery, outcome: Outcome, *, now: datetime) -> None:
        attempts = delivery.attempts + 1
        decision = (
            self.policy.decide(self.policy.max_attempts, now=now)
            if outcome.permanent
            else self.policy.decide(attempts, now=now, retry_after=outcome.retry_after)
        )
        await self.outbox.fail(
            delivery,
            error=outcome.error or "failed",
            decision=decision,
            now=now,
            status=outcome.status,
        )
        log.warning(
            "delivery %d via %s failed (attempt %d): %s; %s",
            delivery.id,
            delivery.channel,
            attempts,
            outcome.error,
            "dead-lettered" if decision.dead else f"retry at {decision.retry_at:%H:%M:%S}",
            extra={
                "action": "delivery_failed",
                "channel": delivery.channel,
                "delivery": delivery.id,
                "event": delivery.event_id,
                "attempt": attempts,
            },
        )


def _now() -> datetime:
    return datetime.now(UTC)
