"""Pure data of warnsvc: scales and levels, observations, situation state and events.

Nothing here does I/O. Records are frozen dataclasses so they can be shared across tasks.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from warnsvc.errors import UnknownLevelError

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_PARENTHETICAL = re.compile(r"\([^)]*\)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def normalize_name(text: str) -> str:
    """Fold a level or situation name for forgiving comparison.

    Case, accents, spacing and punctuation are ignored: ``"CURRENT  crisis."`` and
    ``"Current-Crisis"`` both become ``"current crisis"``.
    """
    text = text.translate(_APOSTROPHES)  # d’Ivoire and d'Ivoire fold alike
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub(" ", folded.lower()).strip()


def slugify(text: str) -> str:
    """Turn a name into a lower-case hyphenated id: ``Nagorno Karabakh`` -> ``nagorno-karabakh``."""
    return normalize_name(text).replace(" ", "-")


def situation_id(namespace: str, name: str) -> str:
    """The stable id of a situation: ``namespace:slug``, keyed on its name, not its URL.

    A bracketed part that lists the countries concerned is left out, so
    ``"Nagorno-Karabakh (Armenia/Azerbaijan)"`` is ``gcr2p:nagorno-karabakh``. A name that is
    nothing but brackets keeps them.
    """
    bare = _PARENTHETICAL.sub(" ", name)
    slug = slugify(bare) or slugify(name)
    return f"{namespace}:{slug}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Level:
    """One step on a scale. ``rank`` starts at 1 for the lowest level."""

    id: str
    name: str
    rank: int
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "rank": self.rank}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scale:
    """An ordered set of levels, lowest first. Names are matched forgivingly, never guessed."""

    id: str
    name: str
    levels: tuple[Level, ...]
    _by_key: Mapping[str, Level] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key: dict[str, Level] = {}
        for level in self.levels:
            for key in (level.id, level.name, *level.aliases):
                by_key[normalize_name(key)] = level
        object.__setattr__(self, "_by_key", by_key)

    @classmethod
    def build(cls, id: str, name: str, levels: Iterable[tuple[str, str, Sequence[str]]]) -> Scale:
        """Build a scale from ``(id, display name, aliases)`` triples, lowest first."""
        return cls(
            id=id,
            name=name,
            levels=tuple(
                Level(id=lid, name=lname, rank=rank, aliases=tuple(aliases))
                for rank, (lid, lname, aliases) in enumerate(levels, start=1)
            ),
        )

    def find(self, text: str) -> Level | None:
        """The level whose id, name or alias matches ``text`` (forgivingly), or None."""
        return self._by_key.get(normalize_name(text))

    def match(self, text: str) -> Level:
        """The level named by ``text``; :class:`UnknownLevelError` if there is none."""
        level = self.find(text)
        if level is None:
            raise UnknownLevelError(text.strip(), self.id, [lv.name for lv in self.levels])
        return level

    def get(self, level_id: str) -> Level:
        """The level with this exact id."""
        for level in self.levels:
            if level.id == level_id:
                return level
        raise UnknownLevelError(level_id, self.id, [lv.id for lv in self.levels])

    def names_pattern(self) -> str:
        """A regular expression alternative matching every name and alias of the scale."""
        keys = {k for lv in self.levels for k in (lv.name, *lv.aliases)}
        words = sorted(keys, key=len, reverse=True)
        return "|".join(r"[\s\-_]*".join(map(re.escape, w.split())) for w in words)


GCR2P_SCALE = Scale.build(
    "gcr2p",
    "GCR2P populations at risk",
    [
        ("serious-concern", "Serious Concern", ()),
        ("imminent-risk", "Imminent Risk", ()),
        ("current-crisis", "Current Crisis", ()),
    ],
)


GDACS_SCALE = Scale.build(
    "gdacs",
    "GDACS alert level",
    [("green", "Green", ()), ("orange", "Orange", ()), ("red", "Red", ())],
)

CAP_SEVERITY_SCALE = Scale.build(
    "cap-severity",
    "CAP severity",
    [
        ("minor", "Minor", ()),
        ("moderate", "Moderate", ()),
        ("severe", "Severe", ()),
        ("extreme", "Extreme", ()),
    ],
)

BUILTIN_SCALES: tuple[Scale, ...] = (GCR2P_SCALE, GDACS_SCALE, CAP_SEVERITY_SCALE)
"""Scales every configuration has; a configured scale with the same id replaces one."""


class Status(StrEnum):
    """Whether a source currently assesses a situation."""

    ASSESSED = "assessed"
    PREVIOUSLY_STUDIED = "previously-studied"
    """Listed by the source as no longer assessed (GCR2P's "Previously Studied Situations")."""
    DELISTED = "delisted"
    """No longer on the source's authoritative list (state only; never parsed from a page)."""
    SEVERITY_UNKNOWN = "severity-unknown"
    """Listed, but without a level on the scale (a CAP alert of ``Unknown`` severity)."""
    CANCELLED = "cancelled"
    """Ended by its publisher (a CAP ``Cancel`` message): ends the situation from any source."""
    EXPIRED = "expired"
    """Past its own end time (a CAP ``expires``): ends the situation from any source."""


ENDING_STATUSES = frozenset({Status.CANCELLED, Status.EXPIRED})
"""Statuses a message gives itself to end a situation; any source may report them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """What a source says right now about one situation.

    ``situation`` and ``name`` are None only when a page names no situation at all (a bare
    text capture without title or URL); such an observation can be printed but never stored.
    """

    situation: str | None
    name: str | None
    level: str | None
    status: Status
    date: date | None = None
    url: str | None = None
    summary: str = ""
    risk_factors: tuple[str, ...] = ()
    key_figure: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific fields (CAP's ``msg_type``, ``urgency`` ...), printed after the others."""
    problem: str | None = None
    """Why this item could not be read (with the offending value). Such an observation is
    skipped and reported in source health; its situation, if known, keeps its stored state."""

    @property
    def content_hash(self) -> str:
        """A digest of the analysis (date, summary, risk factors), not of the level."""
        digest = hashlib.sha256()
        for part in (
            self.date.isoformat() if self.date else "",
            self.summary,
            *self.risk_factors,
        ):
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
        return digest.hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {
            "situation": self.situation,
            "name": self.name,
            "level": self.level,
            "status": self.status.value,
            "date": self.date.isoformat() if self.date else None,
            "url": self.url,
            "summary": self.summary,
            "risk_factors": list(self.risk_factors),
            "key_figure": self.key_figure,
            **{key: value for key, value in self.extra.items() if key not in _OBSERVATION_KEYS},
            **({"problem": self.problem} if self.problem is not None else {}),
        }


_OBSERVATION_KEYS = frozenset(
    {"situation", "name", "level", "status", "date", "url", "summary", "risk_factors"}
    | {"key_figure", "problem"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SituationState:
    """What the store knows of a situation: its confirmed state and any unconfirmed change."""

    situation: str
    source_id: str
    name: str
    level: str | None
    status: Status
    date: date | None = None
    url: str | None = None
    summary: str = ""
    risk_factors: tuple[str, ...] = ()
    content_hash: str = ""
    pending_level: str | None = None
    pending_status: Status | None = None
    pending_count: int = 0
    pending_since: datetime | None = None
    revision: int = 0
    """How many events the situation has had; an event records the revision it moved on from,
    and the store refuses a second event from the same revision (one change, one event)."""

    @property
    def has_pending(self) -> bool:
        return self.pending_status is not None


class EventType(StrEnum):
    LISTED = "situation.listed"
    ESCALATED = "risk.escalated"
    DEESCALATED = "risk.deescalated"
    DELISTED = "situation.delisted"
    UPDATED = "situation.updated"
    RETRACTED = "event.retracted"
    """An operator's correction: the event named in ``retracts`` was wrong."""
    WEBHOOK_TEST = "webhook.test"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A confirmed change. Immutable; written with its outbox rows in one transaction."""

    id: str
    type: EventType
    source_id: str
    source_name: str
    situation: str
    situation_name: str
    situation_url: str | None
    scale: str
    level: Level | None
    previous_level: Level | None
    occurred_at: datetime
    detected_at: datetime
    summary: str = ""
    risk_factors: tuple[str, ...] = ()
    status: Status = Status.ASSESSED
    previous_status: Status | None = None
    manual: bool = False
    """Announced by an operator (``warnsvc publish``/``retract``), not read from the source."""
    note: str | None = None
    retracts: str | None = None
    cap: Mapping[str, str] | None = None
    """A CAP source's own ``urgency`` and ``certainty`` for this alert (see
    :func:`cap_values`), carried to warnsvc's CAP output; None for other sources."""

    def payload(self) -> dict[str, Any]:
        """The public JSON payload (webhook body, JSON Feed extension).

        ``manual``, ``note`` and ``retracts`` appear only on operators' events, ``cap`` only
        on events of CAP sources that stated urgency or certainty.
        """
        operator: dict[str, Any] = {}
        if self.manual:
            operator["manual"] = True
        if self.note is not None:
            operator["note"] = self.note
        if self.retracts is not None:
            operator["retracts"] = self.retracts
        if self.cap:
            operator["cap"] = dict(self.cap)
        return {
            "id": self.id,
            "type": self.type.value,
            "occurred_at": _iso(self.occurred_at),
            "detected_at": _iso(self.detected_at),
            "source": {"id": self.source_id, "name": self.source_name},
            "situation": {
                "id": self.situation,
                "name": self.situation_name,
                "url": self.situation_url,
            },
            "scale": self.scale,
            "level": self.level.to_json() if self.level else None,
            "previous_level": self.previous_level.to_json() if self.previous_level else None,
            "status": self.status.value,
            "summary": self.summary,
            "risk_factors": list(self.risk_factors),
            **operator,
        }

    def payload_json(self) -> str:
        return json.dumps(self.payload(), ensure_ascii=False, separators=(",", ":"))


CAP_URGENCY = ("Immediate", "Expected", "Future", "Past", "Unknown")
CAP_CERTAINTY = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")


def cap_values(extra: Mapping[str, Any]) -> dict[str, str] | None:
    """The CAP ``urgency`` and ``certainty`` an observation's source stated (its ``extra``),
    when they are values of CAP 1.2's lists; None when it stated neither."""
    found = {
        key: value
        for key, allowed in (("urgency", CAP_URGENCY), ("certainty", CAP_CERTAINTY))
        if (value := extra.get(key)) in allowed
    }
    return found or None


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def new_event_id(now: datetime) -> str:
    """A unique, time-ordered event id: ``evt_`` + milliseconds (hex) + 64 random bits."""
    return f"evt_{int(now.timestamp() * 1000):012x}{secrets.token_hex(8)}"
