"""The change detector (:mod:`warnsvc.detect`): plain calls, no I/O.

A :class:`Feed` keeps the stored states between polls the way the store does, so a test reads
as a sequence of polls and the changes each one gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warnsvc.detect import Change, Detection, DetectionPolicy, build_event, detect_changes
from warnsvc.model import GCR2P_SCALE, EventType, Observation, SituationState, Status

SOURCE = "gcr2p"
SOURCE_NAME = "Global Centre for the Responsibility to Protect"
NOW = datetime(2023, 9, 1, 9, 15, 2, tzinfo=UTC)
NK = "gcr2p:nagorno-karabakh"
NK_NAME = "Nagorno-Karabakh (Armenia/Azerbaijan)"
NK_URL = "https://www.globalr2p.org/countries/nagorno-karabakh/"
SUDAN = "gcr2p:sudan"
D1 = date(2023, 8, 1)
D2 = date(2023, 8, 31)
D3 = date(2023, 9, 1)

SC = GCR2P_SCALE.get("serious-concern")
IR = GCR2P_SCALE.get("imminent-risk")
CC = GCR2P_SCALE.get("current-crisis")


def obs(
    situation: str | None = NK,
    level: str | None = "serious-concern",
    *,
    status: Status = Status.ASSESSED,
    name: str | None = None,
    day: date | None = D2,
    summary: str = "The blockade continues.",
    risk_factors: tuple[str, ...] = ("Blockade",),
    url: str | None = NK_URL,
) -> Observation:
    if name is None and situation is not None:
        name = NK_NAME if situation == NK else situation.split(":", 1)[1].title()
    return Observation(
        situation=situation,
        name=name,
        level=level if status is Status.ASSESSED else None,
        status=status,
        date=day,
        url=url,
        summary=summary,
        risk_factors=risk_factors,
    )


def ps(situation: str = NK, **kwargs: object) -> Observation:
    """A "previously studied" observation."""
    return obs(situation, None, status=Status.PREVIOUSLY_STUDIED, **kwargs)  # type: ignore[arg-type]


@dataclass
class Feed:
    """One source polled again and again; keeps the states like the store would."""

    authoritative: bool = True
    confirmations: int = 2
    announce_initial: bool = False
    states: dict[str, SituationState] = field(default_factory=dict)
    polls: int = 0
    now: datetime = NOW

    def poll(self, *observations: Observation, baseline: bool | None = None) -> Detection:
        detection = detect_changes(
            dict(self.states),
            list(observations),
            scale=GCR2P_SCALE,
            source_id=SOURCE,
            authoritative=self.authoritative,
            baseline=self.polls == 0 if baseline is None else baseline,
            policy=DetectionPolicy(
                confirmations=self.confirmations, announce_initial=self.announce_initial
            ),
            now=self.now,
        )
        for state in detection.states:
            self.states[state.situation] = state
        self.polls += 1
        self.now += timedelta(minutes=1)
        return detection


def kinds(detection: Detection) -> list[tuple[EventType, str]]:
    return [(c.type, c.situation) for c in detection.changes]


def listed(*situations_levels: tuple[str, str], **kwargs: object) -> Feed:
    """A feed whose baseline poll listed these (situation, level) pairs."""
    feed = Feed(**kwargs)  # type: ignore[arg-type]
    baseline = feed.poll(*(obs(s, lv) for s, lv in situations_levels))
    assert baseline.baseline and baseline.changes == []
    return feed


# -- baseline ---------------------------------------------------------------------------------


def test_baseline_records_states_silently() -> None:
    feed = Feed()
    detection = feed.poll(obs(NK, "imminent-risk"), obs(SUDAN, "current-crisis"), ps("gcr2p:mali"))
    assert detection.baseline is True
    assert detection.changes == []
    assert detection.pending == []
    assert detection.skipped == []
    assert {s.situation: (s.level, s.status) for s in detection.states} == {
        NK: ("imminent-risk", Status.ASSESSED),
        SUDAN: ("current-crisis", Status.ASSESSED),
        "gcr2p:mali": (None, Status.PREVIOUSLY_STUDIED),
    }
    nk = feed.states[NK]
    assert nk.name == NK_NAME
    assert nk.url == NK_URL
    assert nk.date == D2
    assert nk.summary == "The blockade continues."
    assert nk.risk_factors == ("Blockade",)
    assert nk.content_hash == obs(NK, "imminent-risk").content_hash
    assert nk.source_id == SOURCE
    assert not nk.has_pending
    # the same page next poll: nothing at all
    again = feed.poll(obs(NK, "imminent-risk"), obs(SUDAN, "current-crisis"), ps("gcr2p:mali"))
    assert again.baseline is False
    assert again.changes == []
    assert again.pending == []


def test_baseline_ignores_missing_situations() -> None:
    previous = listed((NK, "serious-concern")).states
    detection = detect_changes(
        previous,
        [obs(SUDAN, "imminent-risk")],
        scale=GCR2P_SCALE,
        source_id=SOURCE,
        authoritative=True,
        baseline=True,
        policy=DetectionPolicy(confirmations=1),
        now=NOW,
    )
    assert detection.changes == []
    assert [s.situation for s in detection.states] == [SUDAN]


def test_announce_initial_lists_after_confirmation() -> None:
    feed = Feed(announce_initial=True)
    first = feed.poll(obs(NK, "imminent-risk"))
    assert first.baseline is False
    assert first.changes == []
    assert first.pending == [NK]
    second = feed.poll(obs(NK, "imminent-risk"))
    assert kinds(second) == [(EventType.LISTED, NK)]
    assert second.changes[0].level == IR
    assert second.changes[0].previous_level is None


def test_announce_initial_with_one_confirmation_lists_at_once() -> None:
    feed = Feed(announce_initial=True, confirmations=1)
    detection = feed.poll(obs(NK, "imminent-risk"), ps(SUDAN))
    assert detection.baseline is False
    assert kinds(detection) == [(EventType.LISTED, NK)]
    assert feed.states[SUDAN].status is Status.PREVIOUSLY_STUDIED


# -- confirmed level changes --------------------------------------------------------------------


def test_listed_after_two_observations() -> None:
    feed = listed((SUDAN, "current-crisis"))
    first = feed.poll(obs(SUDAN, "current-crisis"), obs(NK, "imminent-risk"))
    assert first.changes == []
    assert first.pending == [NK]
    pending = feed.states[NK]
    assert pending.status is Status.DELISTED  # not listed yet: a placeholder
    assert pending.level is None
    assert pending.content_hash == ""
    assert (pending.pending_level, pending.pending_status) == ("imminent-risk", Status.ASSESSED)
    assert pending.pending_count == 1
    assert pending.pending_since == NOW + timedelta(minutes=1)

    second = feed.poll(obs(SUDAN, "current-crisis"), obs(NK, "imminent-risk"))
    assert second.pending == []
    assert second.changes == [
        Change(
            type=EventType.LISTED,
            situation=NK,
            name=NK_NAME,
            url=NK_URL,
            level=IR,
            previous_level=None,
            status=Status.ASSESSED,
            previous_status=Status.DELISTED,
            date=D2,
            summary="The blockade continues.",
            risk_factors=("Blockade",),
        )
    ]
    state = feed.states[NK]
    assert (state.level, state.status) == ("imminent-risk", Status.ASSESSED)
    assert not state.has_pending
    assert state.pending_count == 0
    assert state.pending_since is None
    assert state.content_hash == obs(NK, "imminent-risk").content_hash


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("serious-concern", "imminent-risk", EventType.ESCALATED),
        ("serious-concern", "current-crisis", EventType.ESCALATED),
        ("imminent-risk", "current-crisis", EventType.ESCALATED),
        ("current-crisis", "imminent-risk", EventType.DEESCALATED),
        ("current-crisis", "serious-concern", EventType.DEESCALATED),
        ("imminent-risk", "serious-concern", EventType.DEESCALATED),
    ],
)
def test_level_change_after_two_observations(old: str, new: str, kind: EventType) -> None:
    feed = listed((NK, old))
    first = feed.poll(obs(NK, new, day=D3, summary="New analysis."))
    assert first.changes == []
    assert first.pending == [NK]
    waiting = feed.states[NK]
    assert (waiting.level, waiting.status) == (old, Status.ASSESSED)
    assert waiting.date == D2  # the confirmed state keeps its details while it waits
    assert waiting.summary == "The blockade continues."
    assert (waiting.pending_level, waiting.pending_status, waiting.pending_count) == (
        new,
        Status.ASSESSED,
        1,
    )

    second = feed.poll(obs(NK, new, day=D3, summary="New analysis."))
    assert second.pending == []
    [change] = second.changes
    assert change.type is kind
    assert change.situation == NK
    assert change.level == GCR2P_SCALE.get(new)
    assert change.previous_level == GCR2P_SCALE.get(old)
    assert change.status is Status.ASSESSED
    assert change.previous_status is Status.ASSESSED
    assert change.date == D3
    assert change.summary == "New analysis."
    state = feed.states[NK]
    assert (state.level, state.date, state.summary) == (new, D3, "New analysis.")
    assert not state.has_pending

    third = feed.poll(obs(NK, new, day=D3, summary="New analysis."))
    assert third.changes == []
    assert third.pending == []


def test_one_confirmation_emits_at_once() -> None:
    feed = listed((NK, "serious-concern"), confirmations=1)
    detection = feed.poll(obs(NK, "current-crisis"), obs(SUDAN, "imminent-risk"))
    assert detection.pending == []
    assert [(c.type, c.situation, c.level, c.previous_level) for c in detection.changes] == [
        (EventType.ESCALATED, NK, CC, SC),
        (EventType.LISTED, SUDAN, IR, None),
    ]
    assert feed.states[NK].level == "current-crisis"
    assert feed.states[SUDAN].status is Status.ASSESSED


def test_three_confirmations_need_three_polls() -> None:
    feed = listed((NK, "serious-concern"), confirmations=3)
    assert feed.poll(obs(NK, "imminent-risk")).changes == []
    assert feed.states[NK].pending_count == 1
    assert feed.poll(obs(NK, "imminent-risk")).changes == []
    assert feed.states[NK].pending_count == 2
    assert feed.states[NK].pending_since == NOW + timedelta(minutes=1)  # the first sighting
    assert kinds(feed.poll(obs(NK, "imminent-risk"))) == [(EventType.ESCALATED, NK)]


def test_glitch_that_flips_back_emits_nothing_and_clears_pending() -> None:
    feed = listed((NK, "serious-concern"))
    assert feed.poll(obs(NK, "current-crisis")).pending == [NK]
    back = feed.poll(obs(NK, "serious-concern"))
    assert back.changes == []
    assert back.pending == []
    state = feed.states[NK]
    assert state.level == "serious-concern"
    assert (state.pending_level, state.pending_status, state.pending_count) == (None, None, 0)
    assert state.pending_since is None
    # a later single sighting starts again from one
    assert feed.poll(obs(NK, "current-crisis")).changes == []
    assert feed.states[NK].pending_count == 1


def test_glitch_listing_that_disappears_is_forgotten() -> None:
    feed = listed((SUDAN, "current-crisis"))
    feed.poll(obs(SUDAN, "current-crisis"), obs(NK, "imminent-risk"))
    gone = feed.poll(obs(SUDAN, "current-crisis"))
    assert gone.changes == []
    assert gone.pending == []
    assert feed.states[NK].status is Status.DELISTED
    assert not feed.states[NK].has_pending
    # it comes back: one sighting is not enough
    assert feed.poll(obs(SUDAN, "current-crisis"), obs(NK, "imminent-risk")).changes == []


def test_different_candidate_restarts_the_count() -> None:
    feed = listed((NK, "serious-concern"))
    feed.poll(obs(NK, "imminent-risk"))
    switched = feed.poll(obs(NK, "current-crisis"))
    assert switched.changes == []
    assert switched.pending == [NK]
    state = feed.states[NK]
    assert (state.pending_level, state.pending_count) == ("current-crisis", 1)
    assert state.pending_since == NOW + timedelta(minutes=2)
    confirmed = feed.poll(obs(NK, "current-crisis"))
    assert [(c.type, c.level, c.previous_level) for c in confirmed.changes] == [
        (EventType.ESCALATED, CC, SC)
    ]


# -- delisting ----------------------------------------------------------------------------------


def test_delisted_by_moving_to_previously_studied() -> None:
    feed = listed((NK, "imminent-risk"), (SUDAN, "current-crisis"))
    first = feed.poll(ps(NK, summary=""), obs(SUDAN, "current-crisis"))
    assert first.changes == []
    assert first.pending == [NK]
    assert feed.states[NK].status is Status.ASSESSED
    assert (feed.states[NK].pending_level, feed.states[NK].pending_status) == (
        None,
        Status.PREVIOUSLY_STUDIED,
    )
    second = feed.poll(ps(NK, summary=""), obs(SUDAN, "current-crisis"))
    assert second.changes == [
        Change(
            type=EventType.DELISTED,
            situation=NK,
            name=NK_NAME,
            url=NK_URL,
            level=None,
            previous_level=IR,
            status=Status.PREVIOUSLY_STUDIED,
            previous_status=Status.ASSESSED,
            date=D2,
            summary="The blockade continues.",  # the last assessment's analysis
            risk_factors=("Blockade",),
        )
    ]
    assert (feed.states[NK].level, feed.states[NK].status) == (None, Status.PREVIOUSLY_STUDIED)
    assert feed.poll(ps(NK, summary=""), obs(SUDAN, "current-crisis")).changes == []


def test_delisted_by_going_missing() -> None:
    feed = listed((NK, "imminent-risk"), (SUDAN, "current-crisis"))
    first = feed.poll(obs(SUDAN, "current-crisis"))
    assert first.changes == []
    assert first.pending == [NK]
    second = feed.poll(obs(SUDAN, "current-crisis"))
    [change] = second.changes
    assert change.type is EventType.DELISTED
    assert change.situation == NK
    assert change.level is None
    assert change.previous_level == IR
    assert change.status is Status.DELISTED
    assert change.previous_status is Status.ASSESSED
    assert change.summary == "The blockade continues."
    state = feed.states[NK]
    assert (state.level, state.status, state.has_pending) == (None, Status.DELISTED, False)
    # still missing: nothing more
    third = feed.poll(obs(SUDAN, "current-crisis"))
    assert third.changes == []
    assert third.states == [feed.states[SUDAN]]
    # and back: listed again, after confirmation
    assert feed.poll(obs(SUDAN, "current-crisis"), obs(NK, "serious-concern")).changes == []
    back = feed.poll(obs(SUDAN, "current-crisis"), obs(NK, "serious-concern"))
    assert [(c.type, c.level, c.previous_level) for c in back.changes] == [
        (EventType.LISTED, SC, None)
    ]


def test_missing_for_one_poll_is_a_glitch() -> None:
    feed = listed((NK, "imminent-risk"))
    assert feed.poll().pending == [NK]
    back = feed.poll(obs(NK, "imminent-risk"))
    assert back.changes == []
    assert not feed.states[NK].has_pending


def test_previously_studied_then_missing_restarts_the_count() -> None:
    feed = listed((NK, "imminent-risk"))
    feed.poll(ps(NK))
    detection = feed.poll()
    assert detection.changes == []
    assert (feed.states[NK].pending_status, feed.states[NK].pending_count) == (
        Status.DELISTED,
        1,
    )
    assert kinds(feed.poll()) == [(EventType.DELISTED, NK)]


def test_non_authoritative_source_never_delists_a_missing_situation() -> None:
    feed = listed((NK, "imminent-risk"), authoritative=False)
    for _ in range(3):
        detection = feed.poll()
        assert detection.changes == []
        assert detection.pending == []
    state = feed.states[NK]
    assert (state.level, state.status, state.has_pending) == (
        "imminent-risk",
        Status.ASSESSED,
        False,
    )
    assert (state.date, state.summary) == (D2, "The blockade continues.")
    # a later assessment that is newer is an update
    assert kinds(feed.poll(obs(NK, "imminent-risk", day=D3))) == [(EventType.UPDATED, NK)]


def test_a_page_that_calls_its_situation_previously_studied_delists_it_from_any_source() -> None:
    """What a page says of its own situation counts whatever the source kind (issue 11, item 1):
    a `gcr2p-page` source reading "Previously Studied Situations" delists, and the page's
    return to the list is a listing, not a de-escalation from the level it had before."""
    feed = listed((NK, "imminent-risk"), authoritative=False)
    studied = ps(NK, day=None, summary="Previously studied.")
    first = feed.poll(studied)
    assert (first.changes, first.pending) == ([], [NK])
    delisted = feed.poll(studied)
    assert [(c.type, c.level, c.previous_level, c.status) for c in delisted.changes] == [
        (EventType.DELISTED, None, IR, Status.PREVIOUSLY_STUDIED)
    ]
    assert delisted.changes[0].summary == "The blockade continues."  # the last assessment's
    assert (feed.states[NK].level, feed.states[NK].status) == (None, Status.PREVIOUSLY_STUDIED)
    assert feed.poll(studied).changes == []

    back = obs(NK, "serious-concern", day=D3, summary="Tensions rise again.")
    assert feed.poll(back).pending == [NK]
    returned = feed.poll(back)
    assert [(c.type, c.level, c.previous_level, c.previous_status) for c in returned.changes] == [
        (EventType.LISTED, SC, None, Status.PREVIOUSLY_STUDIED)
    ]
    assert returned.changes[0].summary == "Tensions rise again."


def test_a_previously_studied_page_for_one_poll_is_a_glitch_from_any_source() -> None:
    feed = listed((NK, "imminent-risk"), authoritative=False)
    assert feed.poll(ps(NK)).pending == [NK]
    back = feed.poll(obs(NK, "imminent-risk"))
    assert (back.changes, back.pending) == ([], [])
    assert (feed.states[NK].level, feed.states[NK].has_pending) == ("imminent-risk", False)


def test_non_authoritative_source_records_previously_studied_of_unknown_situation() -> None:
    feed = listed((NK, "imminent-risk"), authoritative=False)
    detection = feed.poll(ps(SUDAN))
    assert detection.changes == []
    assert (feed.states[SUDAN].level, feed.states[SUDAN].status) == (
        None,
        Status.PREVIOUSLY_STUDIED,
    )


# -- updates ------------------------------------------------------------------------------------


def test_updated_when_page_date_is_newer_without_confirmation() -> None:
    feed = listed((NK, "imminent-risk"))
    detection = feed.poll(obs(NK, "imminent-risk", day=D3, summary="Shelling resumed."))
    assert detection.pending == []
    assert detection.changes == [
        Change(
            type=EventType.UPDATED,
            situation=NK,
            name=NK_NAME,
            url=NK_URL,
            level=IR,
            previous_level=IR,
            status=Status.ASSESSED,
            previous_status=Status.ASSESSED,
            date=D3,
            summary="Shelling resumed.",
            risk_factors=("Blockade",),
        )
    ]
    assert (feed.states[NK].date, feed.states[NK].summary) == (D3, "Shelling resumed.")
    # the same page polled twice: no duplicate event
    assert feed.poll(obs(NK, "imminent-risk", day=D3, summary="Shelling resumed.")).changes == []


def test_updated_when_analysis_changes_on_the_same_date() -> None:
    feed = listed((NK, "imminent-risk"))
    assert kinds(feed.poll(obs(NK, "imminent-risk", summary="Revised."))) == [
        (EventType.UPDATED, NK)
    ]
    assert feed.poll(obs(NK, "imminent-risk", summary="Revised.")).changes == []


def test_not_updated_when_page_date_is_older() -> None:
    feed = listed((NK, "imminent-risk"))
    older = feed.poll(obs(NK, "imminent-risk", day=D1, summary="Old analysis."))
    assert older.changes == []
    state = feed.states[NK]
    assert (state.date, state.summary) == (D2, "The blockade continues.")


def test_stale_page_in_between_gives_no_duplicate_update() -> None:
    feed = listed((NK, "imminent-risk"))
    assert kinds(feed.poll(obs(NK, "imminent-risk", day=D3))) == [(EventType.UPDATED, NK)]
    # a cache serves the older page once, then the current one again
    assert feed.poll(obs(NK, "imminent-risk", day=D2)).changes == []
    assert feed.poll(obs(NK, "imminent-risk", day=D3)).changes == []
    assert feed.states[NK].date == D3


def test_page_without_date_in_between_gives_no_update() -> None:
    feed = listed((NK, "imminent-risk"))
    assert feed.poll(obs(NK, "imminent-risk", day=None)).changes == []
    assert feed.states[NK].date == D2
    assert feed.poll(obs(NK, "imminent-risk", day=D2)).changes == []


def test_undated_pages_update_on_new_analysis() -> None:
    feed = Feed()
    feed.poll(obs(NK, "imminent-risk", day=None))
    assert feed.poll(obs(NK, "imminent-risk", day=None)).changes == []
    assert kinds(feed.poll(obs(NK, "imminent-risk", day=None, summary="New."))) == [
        (EventType.UPDATED, NK)
    ]


def test_update_clears_a_pending_change() -> None:
    feed = listed((NK, "imminent-risk"))
    feed.poll(obs(NK, "current-crisis"))
    detection = feed.poll(obs(NK, "imminent-risk", day=D3))
    assert kinds(detection) == [(EventType.UPDATED, NK)]
    assert not feed.states[NK].has_pending


def test_previously_studied_page_is_never_an_update() -> None:
    feed = listed((NK, "imminent-risk"))
    feed.poll(ps(NK), baseline=True)
    assert feed.states[NK].status is Status.PREVIOUSLY_STUDIED
    assert feed.poll(ps(NK, day=D3, summary="Still studied.")).changes == []


# -- odd input ----------------------------------------------------------------------------------


def test_observation_without_situation_is_skipped_with_reason() -> None:
    feed = listed((NK, "imminent-risk"))
    nameless = Observation(
        situation=None,
        name=None,
        level="current-crisis",
        status=Status.ASSESSED,
        url="https://example.org/capture",
    )
    detection = feed.poll(nameless, obs(NK, "imminent-risk"))
    assert detection.changes == []
    assert detection.pending == []
    assert detection.skipped == [
        "an observation names no situation (url https://example.org/capture)"
    ]
    assert [s.situation for s in detection.states] == [NK]


def test_duplicate_observation_in_one_poll_counts_once() -> None:
    feed = listed((NK, "serious-concern"))
    detection = feed.poll(obs(NK, "current-crisis"), obs(NK, "current-crisis"))
    assert detection.changes == []
    assert feed.states[NK].pending_count == 1


# -- events -------------------------------------------------------------------------------------


def test_build_event_payload_shape() -> None:
    feed = listed((NK, "serious-concern"))
    feed.poll(obs(NK, "imminent-risk", risk_factors=("Blockade", "Shelling")))
    [change] = feed.poll(obs(NK, "imminent-risk", risk_factors=("Blockade", "Shelling"))).changes
    event = build_event(
        change,
        event_id="evt_0001",
        source_id=SOURCE,
        source_name=SOURCE_NAME,
        scale=GCR2P_SCALE,
        now=NOW,
    )
    assert event.occurred_at == datetime(2023, 8, 31, tzinfo=UTC)
    assert event.detected_at == NOW
    assert event.payload() == {
        "id": "evt_0001",
        "type": "risk.escalated",
        "occurred_at": "2023-08-31T00:00:00Z",
        "detected_at": "2023-09-01T09:15:02Z",
        "source": {"id": "gcr2p", "name": SOURCE_NAME},
        "situation": {"id": NK, "name": NK_NAME, "url": NK_URL},
        "scale": "gcr2p",
        "level": {"id": "imminent-risk", "name": "Imminent Risk", "rank": 2},
        "previous_level": {"id": "serious-concern", "name": "Serious Concern", "rank": 1},
        "status": "assessed",
        "summary": "The blockade continues.",
        "risk_factors": ["Blockade", "Shelling"],
    }


def _change(kind: EventType, day: date | None) -> Change:
    return Change(
        type=kind,
        situation=NK,
        name=NK_NAME,
        url=None,
        level=None if kind is EventType.DELISTED else IR,
        previous_level=IR if kind is EventType.DELISTED else None,
        status=Status.DELISTED if kind is EventType.DELISTED else Status.ASSESSED,
        previous_status=Status.ASSESSED if kind is EventType.DELISTED else Status.DELISTED,
        date=day,
        summary="",
        risk_factors=(),
    )


@pytest.mark.parametrize(
    ("kind", "day", "occurred"),
    [
        (EventType.LISTED, D2, datetime(2023, 8, 31, tzinfo=UTC)),
        (EventType.LISTED, None, NOW),
        (EventType.LISTED, date(2023, 9, 2), NOW),  # a page dated tomorrow: never the future
        (EventType.DELISTED, D2, NOW),  # the delisting happened now, not on the last page date
    ],
)
def test_build_event_occurred_at(kind: EventType, day: date | None, occurred: datetime) -> None:
    event = build_event(
        _change(kind, day),
        event_id="evt_x",
        source_id=SOURCE,
        source_name=SOURCE_NAME,
        scale=GCR2P_SCALE,
        now=NOW,
    )
    assert event.occurred_at == occurred
    assert event.detected_at == NOW
    payload = event.payload()
    assert payload["type"] == kind.value
    assert payload["situation"] == {"id": NK, "name": NK_NAME, "url": None}
    if kind is EventType.DELISTED:
        assert (payload["level"], payload["status"]) == (None, "delisted")
        assert payload["previous_level"] == IR.to_json()
    else:
        assert (payload["level"], payload["previous_level"]) == (IR.to_json(), None)


# -- properties ---------------------------------------------------------------------------------

LEVEL_IDS = tuple(lv.id for lv in GCR2P_SCALE.levels)
STUDIED = "previously-studied"
MISSING = "missing"
OFF = "off"  # the reference model's "not listed", whichever way
SITUATIONS = ("gcr2p:a", "gcr2p:b", "gcr2p:c")
RANK = {lv.id: lv.rank for lv in GCR2P_SCALE.levels}

Poll = Mapping[str, str]
polls_strategy = st.lists(
    st.fixed_dictionaries({s: st.sampled_from((*LEVEL_IDS, STUDIED, MISSING)) for s in SITUATIONS}),
    min_size=1,
    max_size=14,
)
confirmations_strategy = st.integers(min_value=1, max_value=3)
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def changes_of(
    detections: Sequence[Detection], situation: str
) -> list[tuple[EventType, str | None, str | None] | None]:
    """Per poll, the one change of ``situation`` (type, level, previous level), or None."""
    found: list[tuple[EventType, str | None, str | None] | None] = []
    for detection in detections:
        mine = [c for c in detection.changes if c.situation == situation]
        assert len(mine) <= 1
        change = mine[0] if mine else None
        found.append(
            (
                change.type,
                change.level.id if change.level else None,
                change.previous_level.id if change.previous_level else None,
            )
            if change
            else None
        )
    return found


def observations_of(poll: Poll) -> list[Observation]:
    found = []
    for situation, value in poll.items():
        if value == MISSING:
            continue
        if value == STUDIED:
            found.append(ps(situation, day=None, summary=""))
        else:
            found.append(obs(situation, value, day=None, summary="same"))
    return found


def reference(
    values: Sequence[str], confirmations: int, *, baseline: bool
) -> list[tuple[EventType, str | None, str | None] | None]:
    """A run-length filter: a value becomes current after N consecutive sightings.

    "Previously studied" and "missing" both mean not listed; they count as different
    candidates, but moving between them while not listed is silent.
    """
    confirmed = OFF
    candidate: str | None = None
    count = 0
    out: list[tuple[EventType, str | None, str | None] | None] = []
    for i, value in enumerate(values):
        if i == 0 and baseline:
            confirmed = value if value in RANK else OFF
            out.append(None)
            continue
        if value == confirmed or (value not in RANK and confirmed == OFF):
            candidate, count = None, 0
            out.append(None)
            continue
        count = count + 1 if value == candidate else 1
        candidate = value
        if count < confirmations:
            out.append(None)
            continue
        new = value if value in RANK else OFF
        if confirmed == OFF:
            kind = EventType.LISTED
        elif new == OFF:
            kind = EventType.DELISTED
        elif RANK[new] > RANK[confirmed]:
            kind = EventType.ESCALATED
        else:
            kind = EventType.DEESCALATED
        out.append(
            (
                kind,
                None if new == OFF else new,
                None if confirmed == OFF else confirmed,
            )
        )
        confirmed, candidate, count = new, None, 0
    return out


def run(
    polls: Sequence[Poll], confirmations: int, *, baseline: bool
) -> tuple[Feed, list[Detection]]:
    feed = Feed(confirmations=confirmations)
    detections: list[Detection] = []
    for i, poll in enumerate(polls):
        detections.append(feed.poll(*observations_of(poll), baseline=baseline and i == 0))
    return feed, detections


@PROPERTY
@given(polls=polls_strategy, confirmations=confirmations_strategy, baseline=st.booleans())
def test_confirmed_changes_follow_the_run_length_reference(
    polls: list[Poll], confirmations: int, baseline: bool
) -> None:
    _, detections = run(polls, confirmations, baseline=baseline)
    for situation in SITUATIONS:
        expected = reference([p[situation] for p in polls], confirmations, baseline=baseline)
        actual = changes_of(detections, situation)
        assert actual == expected


@PROPERTY
@given(polls=polls_strategy, confirmations=confirmations_strategy, baseline=st.booleans())
def test_no_change_for_a_value_seen_in_fewer_than_n_consecutive_polls(
    polls: list[Poll], confirmations: int, baseline: bool
) -> None:
    _, detections = run(polls, confirmations, baseline=baseline)
    for i, detection in enumerate(detections):
        for change in detection.changes:
            assert i + 1 >= confirmations + (1 if baseline else 0)
            recent = [p[change.situation] for p in polls[i + 1 - confirmations : i + 1]]
            if change.type is EventType.DELISTED:
                assert len(set(recent)) == 1
                assert recent[0] in (STUDIED, MISSING)
            else:
                assert change.level is not None
                assert recent == [change.level.id] * confirmations


@PROPERTY
@given(polls=polls_strategy, confirmations=confirmations_strategy, baseline=st.booleans())
def test_escalation_and_deescalation_follow_rank(
    polls: list[Poll], confirmations: int, baseline: bool
) -> None:
    _, detections = run(polls, confirmations, baseline=baseline)
    for detection in detections:
        for change in detection.changes:
            if change.type is EventType.ESCALATED:
                assert change.level is not None and change.previous_level is not None
                assert change.level.rank > change.previous_level.rank
            elif change.type is EventType.DEESCALATED:
                assert change.level is not None and change.previous_level is not None
                assert change.level.rank < change.previous_level.rank
            elif change.type is EventType.LISTED:
                assert change.level is not None and change.previous_level is None
            else:
                assert change.type is EventType.DELISTED
                assert change.level is None and change.previous_level is not None


@PROPERTY
@given(polls=polls_strategy, confirmations=confirmations_strategy)
def test_replaying_a_poll_after_a_confirmation_emits_nothing(
    polls: list[Poll], confirmations: int
) -> None:
    feed = Feed(confirmations=confirmations)
    for i, poll in enumerate(polls):
        detection = feed.poll(*observations_of(poll), baseline=i == 0)
        if not detection.changes:
            continue
        changed = {c.situation for c in detection.changes}
        before = {s: feed.states[s] for s in changed}
        replay = feed.poll(*observations_of(poll), baseline=False)
        assert [c for c in replay.changes if c.situation in changed] == []
        assert {s: feed.states[s] for s in changed} == before


def reference_without_authority(
    values: Sequence[str], confirmations: int, *, baseline: bool
) -> list[tuple[EventType, str | None, str | None] | None]:
    """The run-length reference for a source that is not authoritative: a situation missing
    from a poll is simply not observed (no change, no sighting), while a page that says
    "previously studied" counts as it does from the index."""
    seen = [i for i, value in enumerate(values) if value != MISSING]
    found = reference(
        [values[i] for i in seen], confirmations, baseline=baseline and seen[:1] == [0]
    )
    out: list[tuple[EventType, str | None, str | None] | None] = [None] * len(values)
    for i, result in zip(seen, found, strict=True):
        out[i] = result
    return out


@PROPERTY
@given(polls=polls_strategy, confirmations=confirmations_strategy, baseline=st.booleans())
def test_non_authoritative_source_delists_only_what_its_pages_call_previously_studied(
    polls: list[Poll], confirmations: int, baseline: bool
) -> None:
    feed = Feed(confirmations=confirmations, authoritative=False)
    detections = [
        feed.poll(*observations_of(poll), baseline=baseline and i == 0)
        for i, poll in enumerate(polls)
    ]
    for situation in SITUATIONS:
        values = [p[situation] for p in polls]
        expected = reference_without_authority(values, confirmations, baseline=baseline)
        actual = changes_of(detections, situation)
        assert actual == expected
        for value, change in zip(values, actual, strict=True):
            if change is not None and change[0] is EventType.DELISTED:
                assert value == STUDIED


@PROPERTY
@given(
    days=st.lists(
        st.one_of(st.none(), st.dates(min_value=date(2023, 1, 1), max_value=date(2023, 1, 10))),
        min_size=1,
        max_size=12,
    )
)
def test_updated_exactly_when_the_page_is_newer_than_any_seen(days: list[date | None]) -> None:
    """Same level throughout, one analysis per date: an update is a date never seen before."""
    feed = Feed()
    newest: date | None = None
    for i, day in enumerate(days):
        summary = f"Analysis of {day}" if day else "Undated analysis"
        detection = feed.poll(obs(NK, "imminent-risk", day=day, summary=summary))
        expected = i > 0 and day is not None and newest is not None and day > newest
        assert kinds(detection) == ([(EventType.UPDATED, NK)] if expected else [])
        assert detection.pending == []
        if day is not None and (newest is None or day > newest):
            newest = day
        assert feed.states[NK].date == newest
