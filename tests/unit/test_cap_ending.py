"""A CAP message that ends its alert (expired, cancelled): parse prints what it says, detect
decides what that means (issue 11, item 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from warnsvc.cli import main
from warnsvc.detect import DetectionPolicy, detect_changes
from warnsvc.model import CAP_SEVERITY_SCALE, EventType, Observation, SituationState, Status
from warnsvc.sources.cap import parse_cap

FIXTURES = Path(__file__).parents[1] / "fixtures" / "cap"
ALERT = FIXTURES / "written-cap-1.1-alert.xml"  # Severe, expires 2003-06-17T16:00:00-07:00
NOW = datetime(2024, 1, 1, tzinfo=UTC)
SITUATION = "cap:ksto1055887203"


def alert(severity: str = "Severe") -> str:
    return ALERT.read_text(encoding="utf-8").replace(">Severe<", f">{severity}<")


def test_an_expired_alert_keeps_the_severity_it_states() -> None:
    [expired] = parse_cap(alert(), now=NOW)
    assert (expired.situation, expired.level, expired.status) == (
        SITUATION,
        "severe",
        Status.EXPIRED,
    )
    assert expired.problem is None
    assert expired.extra["expires"] == "2003-06-17T16:00:00-07:00"


def test_parse_kind_cap_prints_an_expired_alerts_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_config = tmp_path / "none.yaml"
    assert main(["parse", "-c", str(missing_config), "--kind", "cap", str(ALERT)]) == 0
    [line] = capsys.readouterr().out.splitlines()
    printed = json.loads(line)
    assert (printed["level"], printed["status"]) == ("severe", "expired")


@pytest.mark.parametrize(
    ("severity", "level"),
    [("Extreme", "extreme"), ("Unknown", None), ("Catastrophic", None)],
)
def test_an_expired_alert_is_read_whatever_its_severity(severity: str, level: str | None) -> None:
    """Expiry ends the alert whatever it says of its severity: an unknown one or a word off
    the scale prints no level, and is no reason to skip the message."""
    [expired] = parse_cap(alert(severity), now=NOW)
    assert (expired.level, expired.status, expired.problem) == (level, Status.EXPIRED, None)


def test_a_cancel_keeps_the_severity_it_states() -> None:
    cancel = alert().replace("<msgType>Alert</msgType>", "<msgType>Cancel</msgType>")
    [cancelled] = parse_cap(cancel, now=datetime(2003, 6, 17, 22, 0, tzinfo=UTC))
    assert (cancelled.level, cancelled.status) == ("severe", Status.CANCELLED)
    without_info = (FIXTURES / "written-cap-1.1-cancel.xml").read_text(encoding="utf-8")
    [bare] = parse_cap(without_info, now=NOW)
    assert (bare.level, bare.status) == (None, Status.CANCELLED)


def _state(level: str) -> SituationState:
    return SituationState(
        situation=SITUATION,
        source_id="alerts",
        name="SEVERE THUNDERSTORM WARNING",
        level=level,
        status=Status.ASSESSED,
        summary="A severe thunderstorm.",
    )


@pytest.mark.parametrize("authoritative", [True, False])
@pytest.mark.parametrize("status", [Status.EXPIRED, Status.CANCELLED])
def test_an_ending_message_that_states_a_level_delists_its_alert(
    status: Status, authoritative: bool
) -> None:
    """The level an expired or cancelled message states is not an assessment: the alert is
    delisted (never escalated or de-escalated), from any source."""
    ending = Observation(
        situation=SITUATION, name="SEVERE THUNDERSTORM WARNING", level="extreme", status=status
    )
    detection = detect_changes(
        {SITUATION: _state("severe")},
        [ending],
        scale=CAP_SEVERITY_SCALE,
        source_id="alerts",
        authoritative=authoritative,
        baseline=False,
        policy=DetectionPolicy(confirmations=1),
        now=NOW,
    )
    [change] = detection.changes
    assert (change.type, change.status, change.level) == (EventType.DELISTED, status, None)
    assert change.previous_level is not None and change.previous_level.id == "severe"
    [state] = detection.states
    assert (state.level, state.status) == (None, status)


def test_an_expired_alert_seen_for_the_first_time_is_not_listed() -> None:
    [expired] = parse_cap(alert(), now=NOW)
    detection = detect_changes(
        {},
        [expired],
        scale=CAP_SEVERITY_SCALE,
        source_id="alerts",
        authoritative=True,
        baseline=False,
        policy=DetectionPolicy(confirmations=1),
        now=NOW,
    )
    assert (detection.changes, detection.pending) == ([], [])
    [state] = detection.states
    assert (state.level, state.status) == (None, Status.EXPIRED)
