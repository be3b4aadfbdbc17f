"""Which events a recipient wants, and where a level stands on its scale: pure, no I/O.

One :class:`Filter` serves every channel that lets its recipients choose (webhook endpoints,
email subscribers, Apprise targets) and one :class:`Levels` lookup serves them and the feeds'
per-level feeds. A filter is four optional keys; an empty one lets everything through, and the
keys combine with AND:

- ``situations``: situation ids (``gcr2p:sudan``);
- ``sources``: source ids (``gcr2p``);
- ``min_level``: a level id; the event passes if its level or its previous level is at least
  that high on that level's scale (so a de-escalation from Imminent Risk still reaches an
  ``imminent-risk`` recipient, as on the per-level feeds); events on other scales, and every
  event when the level is unknown, do not pass;
- ``event_types``: event types (``risk.escalated``, ...).

Test pings (``webhook.test``) pass no filter: they go only to the endpoint that asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from warnsvc.model import Event, EventType, Level, Scale

__all__ = ["EVENT_TYPES", "Filter", "Levels"]

EVENT_TYPES = tuple(t.value for t in EventType if t is not EventType.WEBHOOK_TEST)
"""The event types a filter can let through (every type but test pings)."""


class Levels(Mapping[str, tuple[str, int]]):
    """Every level id of the scales -> (scale id, rank); level ids are unique across scales
    (the config refuses a repeated one)."""

    def __init__(self, scales: Mapping[str, Scale] | Iterable[Scale]) -> None:
        found = scales.values() if isinstance(scales, Mapping) else scales
        self._levels: dict[str, tuple[str, Level]] = {
            level.id: (scale.id, level) for scale in found for level in scale.levels
        }

    @classmethod
    def of(cls, scales: Levels | Mapping[str, Scale]) -> Levels:
        """``scales`` as a lookup (itself when it is one already)."""
        return scales if isinstance(scales, Levels) else cls(scales)

    def __getitem__(self, level_id: str) -> tuple[str, int]:
        scale, level = self._levels[level_id]
        return scale, level.rank

    def __iter__(self) -> Iterator[str]:
        return iter(self._levels)

    def __len__(self) -> int:
        return len(self._levels)

    def level(self, level_id: str) -> Level | None:
        """The level with this id, on whichever scale it is."""
        found = self._levels.get(level_id)
        return found[1] if found else None

    def rank(self, scale: str, level_id: str) -> int | None:
        """The rank of ``level_id`` if it is a level of ``scale``."""
        found = self._levels.get(level_id)
        return found[1].rank if found is not None and found[0] == scale else None

    def at_or_above(self, minimum: str, scale: str, ranks: Iterable[int | None]) -> bool:
        """Whether any of ``ranks`` (on ``scale``) is at least as high as level ``minimum``."""
        found = self._levels.get(minimum)
        if found is None or found[0] != scale:
            return False
        threshold = found[1].rank
        return any(rank is not None and rank >= threshold for rank in ranks)


class FilterKeys(Protocol):
    """The four filter keys as a config section has them (a subscriber, a notify target)."""

    @property
    def situations(self) -> Sequence[str]: ...
    @property
    def sources(self) -> Sequence[str]: ...
    @property
    def min_level(self) -> str | None: ...
    @property
    def event_types(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    """What a recipient receives. Empty means everything; the keys combine with AND."""

    situations: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    min_level: str | None = None
    event_types: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Filter:
        data = data or {}
        return cls(
            situations=tuple(data.get("situations") or ()),
            sources=tuple(data.get("sources") or ()),
            min_level=data.get("min_level") or None,
            event_types=tuple(data.get("event_types") or ()),
        )

    @classmethod
    def of(cls, keys: FilterKeys) -> Filter:
        """The filter a config section declares with the four keys."""
        return cls(
            situations=tuple(keys.situations),
            sources=tuple(keys.sources),
            min_level=keys.min_level or None,
            event_types=tuple(keys.event_types),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "situations": list(self.situations),
            "sources": list(self.sources),
            "min_level": self.min_level,
            "event_types": list(self.event_types),
        }

    def matches(
        self, event: Event | Mapping[str, Any], levels: Levels | Mapping[str, Scale]
    ) -> bool:
        """Whether ``event`` (an :class:`Event` or its :meth:`~Event.payload`) passes."""
        facts = _facts(event) if isinstance(event, Event) else _payload_facts(event)
        kind, source, situation, scale, ranked = facts
        if kind not in EVENT_TYPES:
            return False
        if self.event_types and kind not in self.event_types:
            return False
        if self.sources and source not in self.sources:
            return False
        if self.situations and situation not in self.situations:
            return False
        if self.min_level is None:
            return True
        lookup = Levels.of(levels)
        ranks = [lookup.rank(scale, level_id) or own for level_id, own in ranked]
        return lookup.at_or_above(self.min_level, scale, ranks)


_Facts = tuple[str, object, object, str, list[tuple[str, int | None]]]
"""(type, source id, situation id, scale id, [(level id, rank it carries)])."""


def _facts(event: Event) -> _Facts:
    levels: list[tuple[str, int | None]] = [
        (lv.id, lv.rank) for lv in (event.level, event.previous_level) if lv is not None
    ]
    return event.type.value, event.source_id, event.situation, event.scale, levels


def _payload_facts(payload: Mapping[str, Any]) -> _Facts:
    levels: list[tuple[str, int | None]] = []
    for key in ("level", "previous_level"):
        level = payload.get(key)
        if isinstance(level, Mapping) and isinstance(level.get("id"), str):
            levels.append((level["id"], None))  # ranks come from the scale, never the payload
    return (
        str(payload.get("type")),
        _get(payload, "source", "id"),
        _get(payload, "situation", "id"),
        str(payload.get("scale")),
        levels,
    )


def _get(payload: Mapping[str, Any], key: str, field: str) -> Any:
    value = payload.get(key)
    return value.get(field) if isinstance(value, Mapping) else None
