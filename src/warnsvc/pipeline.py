"""The polling stage between a source and the outbox.

:class:`Poller` runs one source: fetch and parse, detect against stored state, then write the
new states, the confirmed events and their outbox rows in one transaction. A failure marks the
source unhealthy and writes nothing else. :mod:`warnsvc.dispatch` takes the rows from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from warnsvc import metrics
from warnsvc.channels.base import Channel
from warnsvc.detect import Detection, DetectionPolicy, build_event, detect_changes
from warnsvc.errors import SourceError, StoreConflictError
from warnsvc.model import Event, Observation, SituationState, new_event_id
from warnsvc.sources.base import Source
from warnsvc.store.db import HistoryEntry, Recipients, RouteContext, SourceHealth, Store

log = logging.getLogger(__name__)


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

    async def __call__(self, routes: RouteContext, event: Event) -> dict[str, list[str]]:
        return {
            name: list(await ch.recipients(routes, event)) for name, ch in self.channels.items()
        }


class SourceAlertsLike(Protocol):
    """What the poller tells about each poll (see :class:`warnsvc.operators.SourceAlerts`)."""

    async def failed(
        self,
        before: SourceHealth | None,
        after: SourceHealth,
        error: SourceError,
        *,
        now: datetime,
    ) -> None: ...

    async def succeeded(
        self,
        before: SourceHealth | None,
        source_id: str,
        warnings: Sequence[str],
        *,
        now: datetime,
    ) -> None: ...


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
        self.alerts: SourceAlertsLike | None = None
        """Told of each poll's outcome, to notify operators once per change of health."""
        self._locks: dict[str, asyncio.Lock] = {}

    async def poll(self, source_id: str, *, dry_run: bool = False) -> PollReport:
        source = self.sources[source_id]
        async with self._locks.setdefault(source_id, asyncio.Lock()):
            report = await self._poll(source, dry_run=dry_run)
        if not dry_run:
            metrics.POLLS.labels(source=source_id, result="ok" if report.ok else "failed").inc()
            metrics.SOURCE_HEALTHY.labels(source=source_id).set(1 if report.ok else 0)
            for event in report.events:
                metrics.EVENTS.labels(type=event.type.value).inc()
        return report

    async def _poll(self, source: Source, *, dry_run: bool) -> PollReport:
        sid = source.info.id
        report = PollReport(source_id=sid, ok=False, dry_run=dry_run)
        before = await self.store.source_health(sid)
        try:
            report.observations = await source.poll()
        except SourceError as exc:
            report.error = str(exc)
            log.warning(
                "source %s failed: %s", sid, exc, extra={"action": "source_failed", "source": sid}
            )
            if not dry_run:
                after = await self.store.record_failure(sid, report.error, now=_now())
                if self.alerts is not None:
                    await self.alerts.failed(before, after, exc, now=_now())
            return report
        now = _now()
        detection = await self._detect(
            source, report.observations, before, dry_run=dry_run, now=now
        )
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
            try:
                await self._record(source, detection, report, now=now)
            except StoreConflictError as exc:
                # another replica (a leader that has just lost the lead) wrote this change
                # first: nothing of this poll was written, the next one reads the new state
                log.warning("%s", exc, extra={"action": "poll_conflict", "source": sid})
                report.ok = False
                report.error = str(exc)
                report.events, report.pending = [], []
                return report
            if self.alerts is not None:
                await self.alerts.succeeded(before, sid, report.skipped, now=now)
        return report

    async def _detect(
        self,
        source: Source,
        observations: list[Observation],
        health: SourceHealth | None,
        *,
        dry_run: bool,
        now: datetime,
    ) -> Detection:
        info = source.info
        previous: dict[str, SituationState] = await self.store.situation_states(info.namespace)
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


def _now() -> datetime:
    return datetime.now(UTC)
