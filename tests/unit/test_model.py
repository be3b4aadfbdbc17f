"""Scales and level matching: forgiving about spelling, never guessing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warnsvc.errors import UnknownLevelError
from warnsvc.model import GCR2P_SCALE, Scale, normalize_name, situation_id

NAMES = {
    "serious-concern": "Serious Concern",
    "imminent-risk": "Imminent Risk",
    "current-crisis": "Current Crisis",
}


def garble(name: str, data: st.DataObject) -> str:
    """Change case, spacing and punctuation of ``name`` without changing its words."""
    out = []
    for char in name:
        if char == " ":
            out.append(data.draw(st.sampled_from([" ", "  ", "-", "_", " - ", ".", "\t"])))
        else:
            out.append(char.upper() if data.draw(st.booleans()) else char.lower())
    pad = st.sampled_from(["", " ", ".", ":", "  ", "\n"])
    return data.draw(pad) + "".join(out) + data.draw(pad)


@given(st.sampled_from(sorted(NAMES)), st.data())
def test_level_names_match_whatever_the_case_spacing_or_punctuation(level_id: str, data) -> None:
    text = garble(NAMES[level_id], data)
    assert GCR2P_SCALE.match(text).id == level_id


@given(st.text(max_size=40))
def test_an_unknown_name_is_an_error_never_a_guess(text: str) -> None:
    known = {normalize_name(n) for n in [*NAMES.values(), *NAMES]}
    if normalize_name(text) in known:
        assert GCR2P_SCALE.match(text).name in NAMES.values()
    else:
        with pytest.raises(UnknownLevelError):
            GCR2P_SCALE.match(text)


@pytest.mark.parametrize("text", ["Current", "Crisis", "Imminent", "Current Crises", "Risk"])
def test_partial_or_misspelt_names_are_refused(text: str) -> None:
    with pytest.raises(UnknownLevelError) as info:
        GCR2P_SCALE.match(text)
    assert "Serious Concern, Imminent Risk, Current Crisis" in str(info.value)


def test_levels_are_ordered_low_to_high_with_aliases() -> None:
    scale = Scale.build(
        "gdacs",
        "GDACS",
        [("green", "Green", ()), ("orange", "Orange", ()), ("red", "Red", ("Red alert",))],
    )
    assert [lv.rank for lv in scale.levels] == [1, 2, 3]
    assert scale.match("RED ALERT").id == "red"
    assert scale.get("orange").name == "Orange"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Nagorno-Karabakh (Armenia/Azerbaijan)", "gcr2p:nagorno-karabakh"),
        ("Venezuela", "gcr2p:venezuela"),
        ("Central Sahel (Burkina Faso, Mali and Niger)", "gcr2p:central-sahel"),
        (
            "Israel and the Occupied Palestinian Territory",
            "gcr2p:israel-and-the-occupied-palestinian-territory",
        ),
        ("Côte d’Ivoire", "gcr2p:cote-d-ivoire"),
    ],
)
def test_situation_ids_are_keyed_on_the_name(name: str, expected: str) -> None:
    assert situation_id("gcr2p", name) == expected
