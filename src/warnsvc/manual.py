"""Operators' own events: announce a change before the source shows it, or retract an event.

``warnsvc publish --situation ID --level LEVEL --note TEXT`` writes a ``manual`` event (listed,
escalated or de-escalated, by comparison with the stored level) and sets the situation to that
level, so when the page catches up no second alert goes out. If the page still disagrees after
confirmation, the page wins and its change is announced as usual.

``warnsvc retract EVENT --note TEXT`` publishes an ``event.retracted`` correction that every
channel carries. Retracting an operator's own announcement also puts the situation back to the
level it had before.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from warnsvc.config import Settings
from warnsvc.errors import WarnsvcError
from warnsvc.model import Event, EventType, Level, Scale, SituationState, Status, new_event_id
from warnsvc.pipeline import Routing
from warnsvc.service import Components


class ManualEventError(WarnsvcError):
    """The operator's request names something that does not exist."""


async def publish(
    parts: Components, *, situation: str, level: str, note: str, now: datetime
) -> Event:
    """Announce ``situation`` at ``level`` now, as an operator."""
    state, scale = await _situation(parts, situation)
    new = scale.find(level)
    if new is None:
        choices = ", ".join(lv.id for lv in scale.levels)
        raise ManualEventError(
            f"level {level!r} is not on scale {scale.id!r}; choose one of: {choices}"
        )
    old = _level(scale, state.level) if state.status is Status.ASSESSED else None
    if old is not None and old.id == new.id:
        raise ManualEventError(f"{situation} is already at {new.name}")
    kind = (
        EventType.LISTED
        if old is None
        else EventType.ESCALATED
        if new.rank > old.rank
        else EventType.DEESCALATED
    )
    event = _event(
        parts.settings,
        state,
        scale,
        kind=kind,
        level=new,
        previous=old,
        note=note,
        now=now,
        status=Status.ASSESSED,
    )
    after = replace(
        state,
        level=new.id,
        status=Status.ASSESSED,
        pending_level=None,
        pending_status=None,
        pending_count=0,
        pending_since=None,
    )
    await parts.store.apply_manual(
        state=after,
        scale=scale.id,
        event=event,
        recipients=Routing(parts.dispatcher.channels),
        now=now,
    )
    return event


async def retract(parts: Components, *, event_id: str, note: str, now: datetime) -> Event:
    """Publish a correction of ``event_id``; undo the level it set if it was an operator's."""
    original = await parts.store.event_payload(event_id)
    if original is None:
        raise ManualEventError(f"no event {event_id!r} (see `warnsvc events`)")
    if original.get("type") == EventType.RETRACTED.value:
        raise ManualEventError(f"{event_id} is itself a retraction")
    state, scale = await _situation(parts, original["situation"]["id"])
    after = state
    if original.get("manual") and state.level == (original.get("level") or {}).get("id"):
        before = (original.get("previous_level") or {}).get("id")
        after = replace(state, level=before, status=Status.ASSESSED if before else Status.DELISTED)
    event = _event(
        parts.settings,
        after,
        scale,
        kind=EventType.RETRACTED,
        level=_level(scale, after.level),
        previous=_level(scale, state.level),
        note=note,
        now=now,
        status=after.status,
        retracts=event_id,
    )
    await parts.store.apply_manual(
        state=after,
        scale=scale.id,
        event=event,
        recipients=Routing(parts.dispatcher.channels),
        now=now,
    )
    return event


async def _situation(parts: Components, situation: str) -> tuple[SituationState, Scale]:
    found = await parts.store.situation(situation)
    if found is None:
        known = [s.situation for s in await parts.store.all_situations()]
        listing = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
        raise ManualEventError(
            f"unknown situation {situation!r}; known: {listing or 'none yet (no poll has run)'}"
        )
    state, scale_id = found
    scales = parts.settings.scale_map()
    if scale_id not in scales:
        raise ManualEventError(f"{situation} is on scale {scale_id!r}, which the config lacks")
    return state, scales[scale_id]


def _level(scale: Scale, level_id: str | None) -> Level | None:
    return next((lv for lv in scale.levels if lv.id == level_id), None)


def _event(
    settings: Settings,
    state: SituationState,
    scale: Scale,
    *,
    kind: EventType,
    level: Level | None,
    previous: Level | None,
    note: str,
    now: datetime,
    status: Status,
    retracts: str | None = None,
) -> Event:
    source = next((s for s in settings.sources if s.id == state.source_id), None)
    return Event(
        id=new_event_id(now),
        type=kind,
        source_id=state.source_id,
        source_name=source.name if source else state.source_id,
        situation=state.situation,
        situation_name=state.name,
        situation_url=state.url,
        scale=scale.id,
        level=level,
        previous_level=previous,
        occurred_at=now,
        detected_at=now,
        summary=note,
        risk_factors=(),
        status=status,
        manual=True,
        note=note,
        retracts=retracts,
    )
