"""Change detection: previous state + observations -> new state + confirmed changes. Pure.

For each situation a source reports, the observation's (level, status) is its *target*. When
the target differs from the confirmed state, the difference is a *candidate* change; it is kept
as ``pending`` on the state and only becomes a :class:`Change` once ``policy.confirmations``
consecutive observations agree (by default two: the poll that saw it and a re-fetch about a
minute later). An observation that returns to the confirmed state drops the candidate, so a
level that flips for one poll and flips back emits nothing.

Transitions and the events they give::

    not listed  -> assessed at L         situation.listed
    assessed L  -> assessed M, M > L     risk.escalated
    assessed L  -> assessed M, M < L     risk.deescalated
    assessed    -> previously studied    situation.delisted   (any source: the page says so)
    assessed    -> cancelled or expired  situation.delisted   (any source: the alert ends itself)
    assessed    -> missing from the list situation.delisted   (authoritative sources only)
    assessed L  -> assessed L, newer page date or new analysis   situation.updated (no confirmation)

What an observation says of its own situation counts whatever the source: its level, that it
is no longer assessed (GCR2P's "Previously Studied Situations": a delisting, and a return from
there a listing), or that it has ended (a cancelled or expired CAP alert: a delisting, whatever
severity the message still states). Only *absence* from a list needs an authoritative source.

A page at the confirmed level that is older than the stored one, or undated where the stored
one has a date (a stale cache, a parse that missed the date), or a page of unknown severity,
is no update: no event, and the stored analysis stays (only a pending candidate is dropped), so
the current page seen again afterwards is no update either.

An observation that carries a ``problem`` (an item the source could not read) is skipped and
reported in ``skipped``; its situation keeps its state and is not missing from the list.

The first successful poll of a source records a baseline silently unless the policy says to
announce it. Nothing here does I/O; callers pass ``now``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time

from warnsvc.model import (
    Event,
    EventType,
    Level,
    Observation,
    Scale,
    SituationState,
    Status,
)

Target = tuple[str | None, Status]
_StateFactory = Callable[[], "SituationState"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionPolicy:
    confirmations: int = 2
    announce_initial: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A confirmed change of one situation, ready to become an :class:`Event`."""

    type: EventType
    situation: str
    name: str
    url: str | None
    level: Level | None
    previous_level: Level | None
    status: Status
    previous_status: Status | None
    date: date | None
    summary: str
    risk_factors: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """The outcome of one poll: states to write, confirmed changes, what awaits confirmation."""

    states: list[SituationState] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    baseline: bool = False


def detect_changes(
    previous: Mapping[str, SituationState],
    observations: Sequence[Observation],
    *,
    scale: Scale,
    source_id: str,
    authoritative: bool,
    baseline: bool,
    policy: DetectionPolicy,
    now: datetime,
) -> Detection:
    """Compare a poll's observations with the stored states of the source's situations."""
    result = Detection(baseline=baseline and not policy.announce_initial)
    seen: set[str] = set()
    unreadable: set[str] = set()  # listed, but this poll could not read them: keep their state
    for obs in observations:
        if obs.problem is not None:
            result.skipped.append(obs.problem)
            if obs.situation is not None:
                unreadable.add(obs.situation)
            continue
        if obs.situation is None or obs.name is None:
            result.skipped.append(f"an observation names no situation (url {obs.url})")
            continue
        if obs.situation in seen:
            continue
        seen.add(obs.situation)
        prior = previous.get(obs.situation)
        if result.baseline:
            result.states.append(_refresh(prior, obs, source_id, _target_of(obs, prior)))
            continue
        _observe(result, prior, obs, scale=scale, source_id=source_id, policy=policy, now=now)
    if authoritative and not result.baseline:
        for sid, prior in previous.items():
            if sid not in seen and sid not in unreadable:
                _missing(result, prior, scale=scale, policy=policy, now=now)
    return result


def _target_of(obs: Observation, prior: SituationState | None) -> Target:
    """Where an observation moves its situation, from any source: to its level when assessed,
    else out of the list (previously studied, cancelled, expired: the level a message may still
    state is not an assessment). A level that is unknown (``severity-unknown``) never moves a
    situation that has a state."""
    if obs.status is Status.ASSESSED:
        return (obs.level, Status.ASSESSED)
    if prior is not None and obs.status is Status.SEVERITY_UNKNOWN:
        return (prior.level, prior.status)
    return (None, obs.status)


def _current_of(prior: SituationState | None) -> Target:
    return (prior.level, prior.status) if prior else (None, Status.DELISTED)


def _observe(
    result: Detection,
    prior: SituationState | None,
    obs: Observation,
    *,
    scale: Scale,
    source_id: str,
    policy: DetectionPolicy,
    now: datetime,
) -> None:
    target = _target_of(obs, prior)
    current = _current_of(prior)
    kind = _classify(current, target, scale)
    if target == current or kind is None:
        if prior is not None and target == current and _is_stale(prior, obs):
            # nothing newer than what is stored: keep the confirmed analysis (so a stale page
            # in between cannot make the current one look new again), drop any candidate
            result.states.append(_clear_pending(prior))
            return
        state = _refresh(prior, obs, source_id, target)
        result.states.append(state)
        updated = prior is not None and target == current and _is_update(prior, obs, source_id)
        if updated and prior is not None and target[1] is Status.ASSESSED:
            result.changes.append(_change(EventType.UPDATED, prior, state, scale))
        return
    _candidate(
        result,
        prior,
        kind,
        target,
        scale=scale,
        policy=policy,
        now=now,
        confirmed=lambda: _confirmed(prior, obs, source_id, target),
        waiting=lambda: _placeholder(prior, obs, source_id),
    )


def _missing(
    result: Detection,
    prior: SituationState,
    *,
    scale: Scale,
    policy: DetectionPolicy,
    now: datetime,
) -> None:
    if prior.status is not Status.ASSESSED:
        if prior.has_pending:  # a listing that never got confirmed: forget it quietly
            result.states.append(_clear_pending(prior))
        return
    target: Target = (None, Status.DELISTED)
    _candidate(
        result,
        prior,
        EventType.DELISTED,
        target,
        scale=scale,
        policy=policy,
        now=now,
        confirmed=lambda: replace(_clear_pending(prior), level=None, status=Status.DELISTED),
        waiting=lambda: prior,
    )


def _candidate(
    result: Detection,
    prior: SituationState | None,
    kind: EventType,
    target: Target,
    *,
    scale: Scale,
    policy: DetectionPolicy,
    now: datetime,
    confirmed: _StateFactory,
    waiting: _StateFactory,
) -> None:
    """Count one more sighting of a candidate change; emit it once confirmed."""
    same = prior is not None and (prior.pending_level, prior.pending_status) == target
    count = (prior.pending_count + 1) if (same and prior is not None) else 1
    if count >= policy.confirmations:
        state = confirmed()
        result.states.append(state)
        previous_state = prior or _placeholder(None, None, state.source_id, state)
        result.changes.append(_change(kind, previous_state, state, scale))
        return
    base = waiting()
    since = prior.pending_since if (same and prior is not None) else now
    result.states.append(
        replace(
            base,
            pending_level=target[0],
            pending_status=target[1],
            pending_count=count,
            pending_since=since,
        )
    )
    result.pending.append(base.situation)


def _classify(current: Target, target: Target, scale: Scale) -> EventType | None:
    """The event a move from ``current`` to ``target`` means, or None for a silent move."""
    cur_level, cur_status = current
    new_level, new_status = target
    if cur_status is not Status.ASSESSED:
        return EventType.LISTED if new_status is Status.ASSESSED else None
    if new_status is not Status.ASSESSED:
        return EventType.DELISTED
    if cur_level == new_level:
        return None
    old, new = _level(scale, cur_level), _level(scale, new_level)
    if old is None or new is None or new.rank > old.rank:
        return EventType.ESCALATED
    return EventType.DEESCALATED


def _is_stale(prior: SituationState, obs: Observation) -> bool:
    """The observation says nothing newer than the stored state about its level.

    That is a page that does not assess the situation although the state stands (an unknown
    severity), a page older than the stored one, or an undated page where the stored one has a
    date.
    """
    if obs.status is not prior.status:
        return True
    return prior.date is not None and (obs.date is None or obs.date < prior.date)


def _is_update(prior: SituationState, obs: Observation, source_id: str) -> bool:
    """Same level, and either a newer page date or a new analysis from the same source."""
    if obs.date is not None and prior.date is not None:
        if obs.date != prior.date:
            return obs.date > prior.date
    elif obs.date is not None or prior.date is not None:
        return False
    return (
        prior.source_id == source_id
        and bool(prior.content_hash)
        and obs.content_hash != prior.content_hash
    )


def _refresh(
    prior: SituationState | None, obs: Observation, source_id: str, target: Target
) -> SituationState:
    """The confirmed state after ``obs``: its details, the target level, no pending change."""
    assert obs.situation is not None
    return SituationState(
        situation=obs.situation,
        source_id=source_id,
        name=obs.name or (prior.name if prior else obs.situation),
        level=target[0],
        status=target[1],
        date=obs.date or (prior.date if prior else None),
        url=obs.url or (prior.url if prior else None),
        summary=obs.summary or (prior.summary if prior else ""),
        risk_factors=obs.risk_factors or (prior.risk_factors if prior else ()),
        content_hash=obs.content_hash,
        revision=prior.revision if prior else 0,  # the store moves it on with each event
    )


def _confirmed(
    prior: SituationState | None, obs: Observation, source_id: str, target: Target
) -> SituationState:
    """The state after a confirmed change. An undated observation (an index entry whose page
    could not be read) changes the level but keeps the stored, dated analysis."""
    if prior is not None and prior.date is not None and obs.date is None:
        return replace(
            _clear_pending(prior),
            level=target[0],
            status=target[1],
            source_id=source_id,
            name=obs.name or prior.name,
            url=obs.url or prior.url,
        )
    return _refresh(prior, obs, source_id, target)


def _placeholder(
    prior: SituationState | None,
    obs: Observation | None,
    source_id: str,
    like: SituationState | None = None,
) -> SituationState:
    """The state to keep while a change awaits confirmation: the old one, or 'not listed'."""
    if prior is not None:
        return prior
    template = like or (_refresh(None, obs, source_id, (None, Status.DELISTED)) if obs else None)
    assert template is not None
    return replace(template, level=None, status=Status.DELISTED, content_hash="")


def _clear_pending(state: SituationState) -> SituationState:
    return replace(
        state, pending_level=None, pending_status=None, pending_count=0, pending_since=None
    )


def _level(scale: Scale, level_id: str | None) -> Level | None:
    if level_id is None:
        return None
    return next((lv for lv in scale.levels if lv.id == level_id), None)


def _change(kind: EventType, before: SituationState, after: SituationState, scale: Scale) -> Change:
    details = after if after.status is Status.ASSESSED or not before.summary else before
    return Change(
        type=kind,
        situation=after.situation,
        name=after.name,
        url=after.url or before.url,
        level=_level(scale, after.level),
        previous_level=_level(scale, before.level),
        status=after.status,
        previous_status=before.status,
        date=after.date,
        summary=details.summary,
        risk_factors=details.risk_factors,
    )


def build_event(
    change: Change,
    *,
    event_id: str,
    source_id: str,
    source_name: str,
    scale: Scale,
    now: datetime,
    cap: Mapping[str, str] | None = None,
) -> Event:
    """The immutable event for a confirmed change. ``occurred_at`` is the page's date if any;
    ``cap``: the source's own CAP urgency and certainty (:func:`~warnsvc.model.cap_values`)."""
    occurred = (
        datetime.combine(change.date, time(0, 0), tzinfo=UTC)
        if change.date is not None and change.type is not EventType.DELISTED
        else now
    )
    return Event(
        id=event_id,
        type=change.type,
        source_id=source_id,
        source_name=source_name,
        situation=change.situation,
        situation_name=change.name,
        situation_url=change.url,
        scale=scale.id,
        level=change.level,
        previous_level=change.previous_level,
        occurred_at=min(occurred, now),
        detected_at=now,
        summary=change.summary,
        risk_factors=change.risk_factors,
        status=change.status,
        previous_status=change.previous_status,
        cap=cap,
    )
