"""Pieces shared by the declarative source kinds (feed, cap, page, json).

Those kinds read *items*: entries of a feed, alerts of a CAP index, blocks of a page, objects of
a JSON list. An item that cannot be read (no id, a level word outside the mapping, a format
change) does not fail the poll: it becomes an observation whose ``problem`` says why, with the
offending value; the pipeline skips it, keeps its situation's stored state and reports the
problem in source health. A document in which *no* item can be read fails the poll instead,
since that is a format change, not a bad item.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

from warnsvc.errors import NoRiskInformationError
from warnsvc.model import Level, Observation, Scale, Status, normalize_name, slugify
from warnsvc.model import situation_id as make_situation_id

_MAX_SHOWN = 80
_MONTHS = {
    m: n
    for n, names in enumerate(
        (
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
            ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
            ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for m in names
}  # fmt: skip
_DAY_MONTH_YEAR = re.compile(r"(\d{1,2})\s+([a-z]+)\.?,?\s+(\d{4})", re.I)
_MONTH_DAY_YEAR = re.compile(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", re.I)
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def shown(value: object) -> str:
    """A value for a message: quoted, on one line, clipped."""
    text = " ".join(str(value).split())
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return repr(text)


class LevelMap:
    """Source level words -> levels of a scale.

    The explicit ``words`` mapping (``{"Orange": "orange"}``, matched forgivingly) comes first,
    then the scale's own level ids, names and aliases. Nothing is guessed.
    """

    def __init__(self, scale: Scale, words: Mapping[str, str] | None = None) -> None:
        self.scale = scale
        self._words = {normalize_name(k): v for k, v in (words or {}).items()}

    def find(self, word: str) -> Level | None:
        target = self._words.get(normalize_name(word))
        return self.scale.find(target if target is not None else word)

    def problem(self, word: str) -> str:
        """The message for a word that names no level."""
        target = self._words.get(normalize_name(word))
        if target is not None:
            return (
                f"levels maps {shown(word)} to {target!r}, which is not a level of scale "
                f"{self.scale.id!r}"
            )
        known = sorted({*self._words, *(normalize_name(lv.name) for lv in self.scale.levels)})
        return f"level word {shown(word)} is not mapped onto scale {self.scale.id!r} " + (
            f"(known: {', '.join(known)})"
        )


def situation_key(namespace: str, raw_id: str) -> str | None:
    """``gdacs`` + ``DR1012728`` -> ``gdacs:dr1012728``; None when the id has no letters or
    digits that make a slug."""
    if not slugify(raw_id):
        return None
    return make_situation_id(namespace, raw_id)


def parse_when(value: object) -> datetime | None:
    """A moment from ISO 8601, RFC 822 (``Mon, 30 Dec 2019 00:17:00 GMT``), a day like
    ``1 June 2022`` / ``June 1, 2022``, or a Unix time (seconds, or milliseconds). Naive
    times are taken as UTC. None when ``value`` is none of these."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    moment = _iso(text) or _rfc822(text) or _written_day(text)
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def day_of(moment: datetime | None) -> date | None:
    """The day of ``moment`` as its publisher wrote it (in its own time zone)."""
    return moment.date() if moment is not None else None


def _from_epoch(seconds: float) -> datetime | None:
    if seconds > 1e11:  # milliseconds
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso(text: str) -> datetime | None:
    candidate = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        return datetime.fromisoformat(candidate)
    except ValueError:
        pass
    match = _ISO_DATE.match(text)
    if match:
        try:
            return datetime(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
    return None


def _rfc822(text: str) -> datetime | None:
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _written_day(text: str) -> datetime | None:
    if match := _DAY_MONTH_YEAR.fullmatch(text):
        day, month, year = match[1], _MONTHS.get(match[2].lower()), match[3]
    elif match := _MONTH_DAY_YEAR.fullmatch(text):
        month, day, year = _MONTHS.get(match[1].lower()), match[2], match[3]
    else:
        return None
    if month is None:
        return None
    try:
        return datetime(int(year), month, int(day))
    except ValueError:
        return None


def skipped_item(
    namespace: str, raw_id: str | None, problem: str, *, name: str | None = None
) -> Observation:
    """The observation of an item that could not be read: skipped and reported, never a change."""
    situation = situation_key(namespace, raw_id) if raw_id else None
    label = f"item {shown(raw_id)}" if raw_id else "an item"
    return Observation(
        situation=situation,
        name=name,
        level=None,
        status=Status.ASSESSED,
        problem=f"{label}: {problem}",
    )


def require_readable(observations: Sequence[Observation], what: str) -> list[Observation]:
    """Fail when a document had items but none of them could be read (a format change)."""
    if observations and all(o.problem is not None for o in observations):
        first = observations[0].problem
        raise NoRiskInformationError(
            f"none of the {len(observations)} {what} could be read; the first: {first}"
        )
    return list(observations)
