"""Which CAP urgency, severity and certainty each level of each scale gives. Pure data, no I/O.

CAP 1.2 wants all three in every ``<info>``. A level of a scale gets them from, in order:

1. the operator's ``cap.mapping.{scale id}.{level id}`` (any of the three; the rest from below);
2. the built-in table of its scale (:data:`DEFAULT_MAPPING`: ``gcr2p``, ``gdacs``,
   ``cap-severity``);
3. for any other scale, its rank spread over the four severities (:func:`spread_severity`),
   with urgency and certainty ``Unknown``: warnsvc cannot know them.

An event without a level (a CAP alert of unknown severity, a delisting) has severity
``Unknown``; a delisting has urgency ``Past``. The ``cap-severity`` scale is the one that
warnsvc's ``cap`` sources read: its levels *are* the source's own severities, so they go out
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal, get_args

from warnsvc.model import Level, Scale

Urgency = Literal["Immediate", "Expected", "Future", "Past", "Unknown"]
Severity = Literal["Extreme", "Severe", "Moderate", "Minor", "Unknown"]
Certainty = Literal["Observed", "Likely", "Possible", "Unlikely", "Unknown"]
Category = Literal[
    "Geo",
    "Met",
    "Safety",
    "Security",
    "Rescue",
    "Fire",
    "Health",
    "Env",
    "Transport",
    "Infra",
    "CBRNE",
    "Other",
]
"""The twelve values of CAP 1.2's ``<category>``."""

URGENCIES: tuple[str, ...] = get_args(Urgency)
SEVERITIES: tuple[str, ...] = get_args(Severity)
CERTAINTIES: tuple[str, ...] = get_args(Certainty)
CATEGORIES: tuple[str, ...] = get_args(Category)
DEFAULT_CATEGORY: Category = "Safety"

_RISING_SEVERITIES = ("Minor", "Moderate", "Severe", "Extreme")


@dataclass(frozen=True, slots=True, kw_only=True)
class CapValues:
    """The three qualifiers of one CAP ``<info>``."""

    urgency: str = "Unknown"
    severity: str = "Unknown"
    certainty: str = "Unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class CapOverride:
    """An operator's values for one level; None keeps the default."""

    urgency: str | None = None
    severity: str | None = None
    certainty: str | None = None

    def apply(self, values: CapValues) -> CapValues:
        return replace(
            values,
            urgency=self.urgency or values.urgency,
            severity=self.severity or values.severity,
            certainty=self.certainty or values.certainty,
        )


DEFAULT_MAPPING: Mapping[str, Mapping[str, CapValues]] = {
    "gcr2p": {
        "serious-concern": CapValues(urgency="Future", severity="Moderate", certainty="Possible"),
        "imminent-risk": CapValues(urgency="Expected", severity="Severe", certainty="Likely"),
        "current-crisis": CapValues(urgency="Immediate", severity="Extreme", certainty="Observed"),
    },
    "gdacs": {
        "green": CapValues(urgency="Expected", severity="Minor", certainty="Likely"),
        "orange": CapValues(urgency="Expected", severity="Severe", certainty="Likely"),
        "red": CapValues(urgency="Immediate", severity="Extreme", certainty="Likely"),
    },
    "cap-severity": {
        "minor": CapValues(severity="Minor"),
        "moderate": CapValues(severity="Moderate"),
        "severe": CapValues(severity="Severe"),
        "extreme": CapValues(severity="Extreme"),
    },
}
"""The built-in tables (documented in docs/feeds.md; a test keeps the two in step)."""

Overrides = Mapping[str, Mapping[str, CapOverride]]
"""The operator's ``cap.mapping``: scale id -> level id -> override."""


def spread_severity(rank: int, levels: int) -> str:
    """A rank spread evenly over Minor < Moderate < Severe < Extreme; the top level is Extreme.

    Three levels give Moderate, Severe, Extreme; two give Moderate, Extreme; five give Minor,
    Moderate, Severe, Extreme, Extreme.
    """
    if levels < 1 or rank < 1:
        return "Unknown"
    index = -(-rank * len(_RISING_SEVERITIES) // levels)  # ceil(rank * 4 / levels)
    return _RISING_SEVERITIES[min(max(index, 1), len(_RISING_SEVERITIES)) - 1]


def level_values(scale: Scale | None, level: Level | None, overrides: Overrides) -> CapValues:
    """The values of ``level`` on ``scale`` (the scale may be unknown to the config now)."""
    if level is None:
        return CapValues()
    scale_id = scale.id if scale is not None else ""
    builtin = DEFAULT_MAPPING.get(scale_id, {}).get(level.id)
    if builtin is not None:
        values = builtin
    elif scale is not None:
        values = CapValues(severity=spread_severity(level.rank, len(scale.levels)))
    else:
        values = CapValues()
    override = overrides.get(scale_id, {}).get(level.id)
    return override.apply(values) if override is not None else values


def mapping_table(scale: Scale, overrides: Overrides) -> list[tuple[Level, CapValues]]:
    """Every level of ``scale`` with its values, lowest first (for docs and ``cap`` sources)."""
    return [(level, level_values(scale, level, overrides)) for level in scale.levels]


def severity_levels(scale: Scale, overrides: Overrides) -> dict[str, str]:
    """Severity word -> level id, for a ``cap`` source reading warnsvc's own alerts back
    (its ``levels`` setting); a severity that two levels share goes to the lower one."""
    found: dict[str, str] = {}
    for level, values in mapping_table(scale, overrides):
        if values.severity != "Unknown":
            found.setdefault(values.severity, level.id)
    return found
