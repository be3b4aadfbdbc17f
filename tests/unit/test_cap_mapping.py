"""The CAP mapping tables, the operator's overrides and their config checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from warnsvc.cap.mapping import (
    DEFAULT_MAPPING,
    CapOverride,
    level_values,
    severity_levels,
    spread_severity,
)
from warnsvc.config import parse_config
from warnsvc.errors import ConfigError
from warnsvc.model import BUILTIN_SCALES, GCR2P_SCALE, Scale

DOCS = Path(__file__).resolve().parents[2] / "docs" / "feeds.md"


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        (1, ["Extreme"]),
        (2, ["Moderate", "Extreme"]),
        (3, ["Moderate", "Severe", "Extreme"]),
        (4, ["Minor", "Moderate", "Severe", "Extreme"]),
        (5, ["Minor", "Moderate", "Severe", "Extreme", "Extreme"]),
    ],
)
def test_a_scale_without_a_table_spreads_its_ranks(levels: int, expected: list[str]) -> None:
    assert [spread_severity(rank, levels) for rank in range(1, levels + 1)] == expected


def test_an_override_changes_only_what_it_names() -> None:
    imminent = GCR2P_SCALE.levels[1]
    values = level_values(
        GCR2P_SCALE, imminent, {"gcr2p": {"imminent-risk": CapOverride(severity="Extreme")}}
    )
    assert (values.urgency, values.severity, values.certainty) == ("Expected", "Extreme", "Likely")
    custom = Scale.build("own", "Own", [("low", "Low", ()), ("high", "High", ())])
    high = level_values(custom, custom.levels[1], {})
    assert (high.urgency, high.severity, high.certainty) == ("Unknown", "Extreme", "Unknown")
    assert level_values(GCR2P_SCALE, None, {}).severity == "Unknown"


def test_reading_back_maps_each_severity_to_its_level() -> None:
    assert severity_levels(GCR2P_SCALE, {}) == {
        "Moderate": "serious-concern",
        "Severe": "imminent-risk",
        "Extreme": "current-crisis",
    }


def test_the_docs_show_the_built_in_tables() -> None:
    text = DOCS.read_text(encoding="utf-8")
    scales = {scale.id: scale for scale in BUILTIN_SCALES}
    for scale_id, table in DEFAULT_MAPPING.items():
        for level_id, values in table.items():
            cells = (values.urgency, values.severity, values.certainty)
            row = rf"\| `{scale_id}` \| `{level_id}` \| " + r" \| ".join(cells) + r" \|"
            assert re.search(row, text), (scale_id, level_id)
        assert set(table) == {level.id for level in scales[scale_id].levels}


BAD_VALUES = """\
cap:
  sender: "a b"
  mapping:
    gcr2p:
      imminent-risk: {urgency: Soon}
"""
BAD_REFERENCES = """\
service:
  name: x
cap:
  mapping:
    gcr2p:
      nope: {severity: Minor}
    nosuch: {}
feeds:
  websub:
    hub: http://10.1.2.3/hub
"""


def located(text: str) -> tuple[set[str], str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename="w.yaml")
    problems = [str(problem) for problem in caught.value.problems]
    return {":".join(p.split(":")[:3]) for p in problems}, " ".join(problems)


def test_check_config_names_every_bad_cap_and_websub_key() -> None:
    assert located(BAD_VALUES)[0] == {
        "w.yaml:2: cap.sender",
        "w.yaml:5: cap.mapping.gcr2p.imminent-risk.urgency",
    }
    where, messages = located(BAD_REFERENCES)
    assert where == {
        "w.yaml:6: cap.mapping.gcr2p.nope",
        "w.yaml:7: cap.mapping.nosuch",
        "w.yaml:10: feeds.websub.hub",
    }
    assert "set service.base_url" in messages
    assert "not a public address" in messages


def test_a_good_cap_and_websub_section_loads() -> None:
    settings = parse_config(
        "service: {base_url: https://alerts.example.org}\n"
        "cap: {sender: alerts.example.org, category: Security,"
        " mapping: {gcr2p: {imminent-risk: {severity: Extreme}}}}\n"
        "feeds: {websub: {hub: 'http://127.0.0.1:9/hub', allow_networks: [127.0.0.0/8]}}\n",
        filename="ok.yaml",
    )
    assert settings.cap.category == "Security"
    assert settings.feeds.websub is not None and settings.feeds.websub.timeout == 10.0
