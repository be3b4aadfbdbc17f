"""A store with a few situations and their history, for the tests of the public pages.

:func:`fill` writes, through the store's own poll and manual writes, three GCR2P situations:
Sudan (listed at Imminent Risk, then escalated to Current Crisis), one whose name and summary
are hostile markup (the pages must show it as text) and one delisted.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from warnsvc.model import GCR2P_SCALE, Event, EventType, SituationState, Status, new_event_id
from warnsvc.store.db import HistoryEntry, Store

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _state(
    situation: str, name: str, level: str | None, status: Status, revision: int
) -> SituationState:
    return SituationState(
        situation=situation,
        source_id="gcr2p",
        name=name,
        level=level,
        status=status,
        url=f"https://example.org/countries/{situation.partition(':')[2]}/",
        summary=f"Summary of {name}. {HOSTILE}",
        risk_factors=("Armed groups target civilians.", HOSTILE),
        revision=revision,
    )


def _event(
    situation: str,
    name: str,
    kind: EventType,
    level: str | None,
    previous: str | None,
    when: datetime,
) -> Event:
    return Event(
        id=new_event_id(when),
        type=kind,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation=situation,
        situation_name=name,
        situation_url=f"https://example.org/countries/{situation.partition(':')[2]}/",
        scale="gcr2p",
        level=GCR2P_SCALE.get(level) if level else None,
        previous_level=GCR2P_SCALE.get(previous) if previous else None,
        occurred_at=when,
        detected_at=when,
        summary=f"What changed in {name}. {HOSTILE}",
        status=Status.ASSESSED if level else Status.DELISTED,
    )


async def _poll(store: Store, state: SituationState, event: Event | None, when: datetime) -> None:
    await store.apply_poll(
        source_id="gcr2p",
        scale="gcr2p",
        states=[state],
        history=[
            HistoryEntry(
                situation=state.situation,
                source_id="gcr2p",
                level=state.level,
                status=state.status,
                page_date=None,
                event_id=event.id if event else None,
            )
        ],
        events=[event] if event else [],
        recipients={},
        observations=1,
        now=when,
    )


async def fill(store: Store) -> None:
    """Write the situations (their states, history and events)."""
    sudan, hostile, gone = "gcr2p:sudan", "gcr2p:hostile", "gcr2p:gone"
    t = START
    await _poll(store, _state(sudan, "Sudan", "imminent-risk", Status.ASSESSED, 0), None, t)
    t += timedelta(days=20)
    escalated = _event(sudan, "Sudan", EventType.ESCALATED, "current-crisis", "imminent-risk", t)
    await _poll(store, _state(sudan, "Sudan", "current-crisis", Status.ASSESSED, 0), escalated, t)
    t += timedelta(days=1)
    listed = _event(hostile, HOSTILE, EventType.LISTED, "serious-concern", None, t)
    await _poll(store, _state(hostile, HOSTILE, "serious-concern", Status.ASSESSED, 0), listed, t)
    t += timedelta(days=1)
    first = _event(gone, "Gone Land", EventType.LISTED, "serious-concern", None, t)
    await _poll(store, _state(gone, "Gone Land", "serious-concern", Status.ASSESSED, 0), first, t)
    t += timedelta(days=2)
    delisted = _event(gone, "Gone Land", EventType.DELISTED, None, "serious-concern", t)
    await _poll(store, _state(gone, "Gone Land", None, Status.DELISTED, 1), delisted, t)


@contextlib.asynccontextmanager
async def filled_store(folder: Path) -> AsyncIterator[Store]:
    """A SQLite store in ``folder`` with what :func:`fill` writes; closed on leaving."""
    opened = await Store.open(f"sqlite+aiosqlite:///{folder / 'warnsvc.db'}")
    try:
        await fill(opened)
        yield opened
    finally:
        await opened.close()
