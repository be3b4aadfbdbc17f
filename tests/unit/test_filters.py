"""One filter and one level lookup: an Event and its payload get the same verdict; the
channel registry knows its channels without importing them."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest

from warnsvc.channels.registry import CHANNELS, Entry, get_kind
from warnsvc.config import parse_config
from warnsvc.filters import Filter, Levels
from warnsvc.model import GCR2P_SCALE, Event, EventType, Scale

OTHER = Scale.build("other", "Other", [("green", "Green", []), ("red", "Red", [])])
LEVELS = Levels({"gcr2p": GCR2P_SCALE, "other": OTHER})


def event(
    type_: EventType = EventType.ESCALATED, *, level: str | None, previous: str | None
) -> Event:
    moment = datetime(2023, 8, 31, tzinfo=UTC)
    return Event(
        id="evt_1",
        type=type_,
        source_id="gcr2p",
        source_name="GCR2P",
        situation="gcr2p:sudan",
        situation_name="Sudan",
        situation_url=None,
        scale="gcr2p",
        level=GCR2P_SCALE.get(level) if level else None,
        previous_level=GCR2P_SCALE.get(previous) if previous else None,
        occurred_at=moment,
        detected_at=moment,
    )


def test_levels_know_each_level_id_its_scale_and_rank() -> None:
    assert LEVELS["red"] == ("other", 2)
    assert LEVELS["imminent-risk"][0] == "gcr2p"
    assert LEVELS.at_or_above("imminent-risk", "gcr2p", [LEVELS["imminent-risk"][1]])
    assert not LEVELS.at_or_above("imminent-risk", "gcr2p", [LEVELS["serious-concern"][1]])
    assert not LEVELS.at_or_above("red", "gcr2p", [9])  # another scale's level
    assert not LEVELS.at_or_above("unknown", "gcr2p", [9])
    assert not LEVELS.at_or_above("imminent-risk", "gcr2p", [None])
    assert Levels.of(LEVELS) is LEVELS


@pytest.mark.parametrize(
    ("wanted", "level", "previous", "expected"),
    [
        (Filter(), "imminent-risk", "serious-concern", True),
        (Filter(min_level="imminent-risk"), "imminent-risk", "serious-concern", True),
        (Filter(min_level="imminent-risk"), "serious-concern", "imminent-risk", True),
        (Filter(min_level="current-crisis"), "imminent-risk", "serious-concern", False),
        (Filter(min_level="imminent-risk"), None, "current-crisis", True),  # a delisting
        (Filter(min_level="red"), "current-crisis", None, False),
        (Filter(min_level="nowhere"), "current-crisis", None, False),
        (Filter(situations=("gcr2p:mali",)), "current-crisis", None, False),
        (Filter(sources=("gcr2p",), event_types=("risk.escalated",)), "current-crisis", None, True),
    ],
)
def test_an_event_and_its_payload_get_the_same_verdict(
    wanted: Filter, level: str | None, previous: str | None, expected: bool
) -> None:
    changed = event(level=level, previous=previous)
    assert wanted.matches(changed, LEVELS) is expected
    assert wanted.matches(changed.payload(), LEVELS) is expected
    assert wanted.matches(changed, {"gcr2p": GCR2P_SCALE}) is expected  # scales do as well
    assert Filter.from_json(wanted.to_json()) == wanted


def test_test_pings_pass_no_filter() -> None:
    ping = event(EventType.WEBHOOK_TEST, level=None, previous=None)
    assert not Filter().matches(ping, LEVELS)
    assert not Filter().matches(ping.payload(), LEVELS)


def test_the_stored_json_keeps_its_shape() -> None:
    assert Filter.from_json(None) == Filter.from_json({}) == Filter()
    assert Filter(min_level="imminent-risk").to_json() == {
        "situations": [],
        "sources": [],
        "min_level": "imminent-risk",
        "event_types": [],
    }


def test_the_registry_knows_channels_without_loading_them() -> None:
    settings = parse_config("sources: []\n", filename="t.yaml")
    assert list(CHANNELS)[:3] == ["feeds", "webhooks", "email"]
    assert CHANNELS.wanted("webhooks", settings)
    assert not CHANNELS.wanted("email", settings)  # no section: its module stays unloaded
    with pytest.raises(KeyError, match=r"unknown channel 'pager'.*known: email"):
        get_kind("pager")
    assert get_kind("webhooks").name == "webhooks"


def test_a_registered_entry_must_hold_its_channel_kind() -> None:
    CHANNELS.register("misnamed", Entry("warnsvc.channels.webhooks"))
    try:
        with pytest.raises(TypeError, match="is not the channel 'misnamed'"):
            get_kind("misnamed")
    finally:
        CHANNELS.unregister("misnamed")
    assert "misnamed" not in CHANNELS
    assert "warnsvc.channels.registry" in sys.modules
