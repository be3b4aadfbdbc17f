"""The polling stage between a source and the outbox.

:class:`Poller` runs one source: fetch and parse, detect against stored state, then write the
new states, the confirmed events and their outbox rows in one transaction. A failure marks the
source unhealthy and writes nothing else. :mod:`warnsvc.dispatch` takes the rows from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from warnsvc import metrics
from warnsvc.channels.base import Channel
from warnsvc.detect import Detection, DetectionPolicy, build_event, detect_changes
from warnsvc.errors import SourceError, StoreConflictError
from warnsvc.model import Event, Observation, SituationState, cap_values, new_event_id
from warnsvc.sources.base import Source
from warnsvc.store.db import (
    HistoryEntry,
    PollWrite,
    Recipients,
    RouteContext,
    SourceHealth,
    Store,
)

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


CONCURRENCY = 16
"""Sources a poll cycle fetches and parses at once; the fetcher also holds each host to
:data:`warnsvc.sources.fetch.PER_HOST` requests at once, whatever the number of its sources."""


BATCH = 100
"""Polls a cycle records together at most (one read of their states, one transaction)."""
LINGER = 0.25
"""Seconds a poll may wait for others to be recorded with it: the longest a cycle delays an
event, and enough to make a batch of many sources fetched at once."""


@dataclass(slots=True, kw_only=True)
class _Fetched:
    """One source's fetch and parse in a cycle, waiting for its batch to be recorded."""

    source: Source
    report: PollReport
    error: SourceError | None
    now: datetime
    done: asyncio.Future[PollReport]


class Poller:
    """Poll sources, many at once, and record what they say, many polls at once.

    A *cycle* (:meth:`poll_cycle`) fetches and parses up to ``concurrency`` sources at once;
    as their polls come in, the writer takes those waiting as one batch: one read of their
    health and states, detection, then one transaction for all the polls of the batch (the
    failures in another). A poll that changes nothing writes only its source's health. Each
    source is polled by one cycle at a time (a lock per source, held until its poll is
    recorded).
    """

    def __init__(
        self,
        store: Store,
        sources: Mapping[str, Source],
        policy: DetectionPolicy,
        recipients: Recipients,
        *,
        concurrency: int = CONCURRENCY,
        batch: int = BATCH,
        linger: float = LINGER,
    ) -> None:
        self.store = store
        self.sources = sources
        self.policy = policy
        self.recipients = recipients
        self.concurrency = concurrency
        self.batch = batch
        self.linger = linger
        self.alerts: SourceAlertsLike | None = None
        """Told of each poll's outcome, to notify operators once per change of health."""
        self._locks: dict[str, asyncio.Lock] = {}

    async def poll(self, source_id: str, *, dry_run: bool = False) -> PollReport:
        """Poll one source (a cycle of one)."""
        [report] = await self.poll_cycle([source_id], dry_run=dry_run)
        return report

    async def poll_cycle(
        self, source_ids: Sequence[str], *, dry_run: bool = False
    ) -> list[PollReport]:
        """Poll these sources, many at once; their reports, in the order of ``source_ids``.

        A source that cannot be read fails alone: it is marked unhealthy and the others are
        recorded as usual. A store error is raised once every other poll is recorded.
        """
        ids = list(dict.fromkeys(source_ids))
        sources = [self.sources[sid] for sid in ids]
        urls = [url for s in sources if isinstance(url := getattr(s, "url", None), str)]
        self.store.expect_pages(urls)  # the fetch cache is read for many sources at once
        queue: asyncio.Queue[_Fetched | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.concurrency)
        writer = asyncio.create_task(self._write(queue, len(sources), dry_run=dry_run))
        tasks = [
            asyncio.create_task(self._poll_one(s, slots, queue, dry_run=dry_run)) for s in sources
        ]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.store.forget_pages(urls)
        reports: list[PollReport] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            reports.append(result)
        return reports

    async def _poll_one(
        self,
        source: Source,
        slots: asyncio.Semaphore,
        queue: asyncio.Queue[_Fetched | None],
        *,
        dry_run: bool,
    ) -> PollReport:
        sid = source.info.id
        queued = False
        try:
            async with self._locks.setdefault(sid, asyncio.Lock()):
                async with slots:
                    fetched = await self._fetch(source, dry_run=dry_run)
                queue.put_nowait(fetched)
                queued = True
                report = await fetched.done
        finally:
            if not queued:
                queue.put_nowait(None)  # the writer counts this source as done
        if not dry_run:
            metrics.POLLS.labels(source=sid, result="ok" if report.ok else "failed").inc()
            metrics.SOURCE_HEALTHY.labels(source=sid).set(1 if report.ok else 0)
            for event in report.events:
                metrics.EVENTS.labels(type=event.type.value).inc()
        return report

    async def _fetch(self, source: Source, *, dry_run: bool) -> _Fetched:
        sid = source.info.id
        report = PollReport(source_id=sid, ok=False, dry_run=dry_run)
        error: SourceError | None = None
        try:
            report.observations = await source.poll()
        except SourceError as exc:
            error = exc
            report.error = str(exc)
            log.warning(
                "source %s failed: %s", sid, exc, extra={"action": "source_failed", "source": sid}
            )
        done = asyncio.get_running_loop().create_future()
        return _Fetched(source=source, report=report, error=error, now=_now(), done=done)

    async def _write(
        self, queue: asyncio.Queue[_Fetched | None], total: int, *, dry_run: bool
    ) -> None:
        """Record the polls as they come in, until ``total`` came: together, once ``batch``
        wait, or the first of them waited ``linger`` seconds, or none is left to come."""
        loop = asyncio.get_running_loop()
        received = 0
        waiting: list[_Fetched] = []
        deadline = 0.0
        while received < total or waiting:
            if received < total and len(waiting) < self.batch:
                timeout = max(0.0, deadline - loop.time()) if waiting else None
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    pass
                else:
                    received += 1
                    if item is not None:
                        if not waiting:
                            deadline = loop.time() + self.linger
                        waiting.append(item)
                    continue
            batch, waiting = _one_per_namespace(waiting)
            if waiting:
                deadline = loop.time()  # what had to wait for a namespace goes next
            try:
                await self._record(batch, dry_run=dry_run)
            except Exception as exc:  # a store error: these polls fail with it, others go on
                for fetched in batch:
                    if not fetched.done.done():
                        fetched.done.set_exception(exc)

    async def _record(self, batch: Sequence[_Fetched], *, dry_run: bool) -> None:
        """Detect and record one batch: one read, then one write of its polls."""
        snapshot = await self.store.poll_snapshot(
            [f.source.info.id for f in batch],
            [f.source.info.namespace for f in batch if f.error is None],
        )
        failed: list[_Fetched] = []
        writes: list[tuple[_Fetched, PollWrite]] = []
        for fetched in batch:
            info = fetched.source.info
            if fetched.error is not None:
                failed.append(fetched)
                continue
            previous = snapshot.states.get(info.namespace, {})
            health = snapshot.health.get(info.id)
            detection = self._detect(fetched, previous, health, dry_run=dry_run)
            if not dry_run:
                write = _poll_write(fetched, detection, previous, snapshot.scales)
                writes.append((fetched, write))
        if not dry_run and failed:
            errors = {f.source.info.id: f.report.error or "" for f in failed}
            now = _now()
            after = await self.store.record_failures(errors, now=now)
            for fetched in failed:
                sid = fetched.source.info.id
                if self.alerts is not None and fetched.error is not None:
                    before = snapshot.health.get(sid)
                    await self.alerts.failed(before, after[sid], fetched.error, now=now)
        refused = await self.store.apply_polls([w for _, w in writes], self.recipients)
        for fetched, write in writes:
            sid = fetched.source.info.id
            problem = refused.get(sid)
            if isinstance(problem, StoreConflictError):
                # another replica (a leader that has just lost the lead) wrote this change
                # first: nothing of this poll was written, the next one reads the new state
                log.warning("%s", problem, extra={"action": "poll_conflict", "source": sid})
                report = fetched.report
                report.ok = False
                report.error = str(problem)
                report.events, report.pending = [], []
            elif problem is not None:
                fetched.done.set_exception(problem)
                continue
            else:
                _log_recorded(fetched.report)
                if self.alerts is not None:
                    before = snapshot.health.get(sid)
                    await self.alerts.succeeded(before, sid, fetched.report.skipped, now=write.now)
        for fetched in batch:
            if not fetched.done.done():
                fetched.done.set_result(fetched.report)

    def _detect(
        self,
        fetched: _Fetched,
        previous: Mapping[str, SituationState],
        health: SourceHealth | None,
        *,
        dry_run: bool,
    ) -> Detection:
        """Compare the poll with the stored states; fill its report (events, pending, ...)."""
        info = fetched.source.info
        report, now = fetched.report, fetched.now
        baseline = health is None or not health.baseline_done
        policy = self.policy
        if dry_run:  # show what confirmation would emit; nothing is written either way
            policy = DetectionPolicy(confirmations=1, announce_initial=policy.announce_initial)
        detection = detect_changes(
            previous,
            report.observations,
            scale=info.scale,
            source_id=info.id,
            authoritative=info.authoritative,
            baseline=baseline,
            policy=policy,
            now=now,
        )
        report.ok = True
        report.baseline = detection.baseline
        report.pending = detection.pending
        report.skipped = detection.skipped
        stated = {o.situation: o.extra for o in report.observations if o.extra}
        report.events = [
            build_event(
                c,
                event_id=new_event_id(now),
                source_id=info.id,
                source_name=info.name,
                scale=info.scale,
                now=now,
                cap=cap_values(stated.get(c.situation, {})),
            )
            for c in detection.changes
        ]
        return detection


def _one_per_namespace(waiting: Sequence[_Fetched]) -> tuple[list[_Fetched], list[_Fetched]]:
    """The polls to record together, and those to keep for the next batch: two sources that
    share a namespace are recorded one after the other, the second reading what the first
    wrote (as when they are polled one by one)."""
    batch: list[_Fetched] = []
    later: list[_Fetched] = []
    seen: set[str] = set()
    for fetched in waiting:
        namespace = fetched.source.info.namespace
        if fetched.error is None and namespace in seen:
            later.append(fetched)
            continue
        if fetched.error is None:
            seen.add(namespace)
        batch.append(fetched)
    return batch, later


def _poll_write(
    fetched: _Fetched,
    detection: Detection,
    previous: Mapping[str, SituationState],
    scales: Mapping[str, str],
) -> PollWrite:
    """What the poll writes: the states it changed (a state it left as stored is not written
    again), its events and history, its source's health."""
    info, report = fetched.source.info, fetched.report
    with_events = {event.situation for event in report.events}
    states = [
        state
        for state in detection.states
        if state.situation in with_events
        or previous.get(state.situation) != state
        or scales.get(state.situation) != info.scale.id
    ]
    return PollWrite(
        source_id=info.id,
        scale=info.scale.id,
        states=states,
        history=_history(info.id, detection, report.events),
        events=report.events,
        observations=sum(1 for o in report.observations if o.problem is None),
        warnings=report.skipped,
        now=fetched.now,
    )


def _log_recorded(report: PollReport) -> None:
    sid = report.source_id
    for reason in report.skipped:
        log.warning(
            "source %s skipped: %s",
            sid,
            reason,
            extra={"action": "item_skipped", "source": sid},
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
