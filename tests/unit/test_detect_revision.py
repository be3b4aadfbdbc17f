"""Detection carries each situation's revision through, so the store can tell a stale write."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from warnsvc.detect import DetectionPolicy, detect_changes
from warnsvc.model import GCR2P_SCALE, Observation, SituationState, Status

NK = "gcr2p:nagorno-karabakh"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def stored(revision: int) -> SituationState:
    return SituationState(
        situation=NK,
        source_id="gcr2p",
        name="Nagorno-Karabakh",
        level="serious-concern",
        status=Status.ASSESSED,
        date=date(2026, 11, 1),
        summary="Old analysis.",
        content_hash="old",
        revision=revision,
    )


def seen(
    level: str, *, day: date = date(2026, 11, 1), summary: str = "Old analysis."
) -> Observation:
    return Observation(
        situation=NK,
        name="Nagorno-Karabakh",
        level=level,
        status=Status.ASSESSED,
        date=day,
        summary=summary,
    )


@pytest.mark.parametrize(
    "observation",
    [
        seen("serious-concern"),  # nothing changed
        seen("serious-concern", day=date(2026, 11, 20), summary="New analysis."),  # updated
        seen("imminent-risk"),  # an escalation (confirmed at once below)
    ],
)
def test_every_new_state_keeps_the_stored_revision(observation: Observation) -> None:
    detection = detect_changes(
        {NK: stored(7)},
        [observation],
        scale=GCR2P_SCALE,
        source_id="gcr2p",
        authoritative=True,
        baseline=False,
        policy=DetectionPolicy(confirmations=1),
        now=NOW,
    )
    assert [s.revision for s in detection.states] == [7]


def test_a_new_situation_starts_at_revision_zero() -> None:
    detection = detect_changes(
        {},
        [seen("imminent-risk")],
        scale=GCR2P_SCALE,
        source_id="gcr2p",
        authoritative=True,
        baseline=False,
        policy=DetectionPolicy(confirmations=1),
        now=NOW,
    )
    assert [s.revision for s in detection.states] == [0]
