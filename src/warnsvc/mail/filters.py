"""Which events a subscriber wants: pure, no I/O.

A filter is four optional lists/values; an empty one lets everything through:

- ``situations``: situation ids (``gcr2p:sudan``);
- ``sources``: source ids (``gcr2p``);
- ``min_level``: a level id; the event passes if its level or its previous level is at least
  that high on that level's scale (so a de-escalation from Imminent Risk still reaches an
  ``imminent-risk`` subscriber, as on the per-level feeds); events on other scales do not pass;
- ``event_types``: event types (``risk.escalated``, ...).

Test pings (``webhook.test``) never reach email subscribers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from warnsvc.model import EventType, Scale

__all__ = ["EMAIL_EVENT_TYPES", "Filters"]

EMAIL_EVENT_TYPES = tuple(t.value for t in EventType if t is not EventType.WEBHOOK_TEST)


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    situations: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    min_level: str | None = None
    event_types: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Filters:
        data = data or {}
        return cls(
            situations=tuple(data.get("situations") or ()),
            sources=tuple(data.get("sources") or ()),
            min_level=data.get("min_level") or None,
            event_types=tuple(data.get("event_types") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "situations": list(self.situations),
            "sources": list(self.sources),
            "min_level": self.min_level,
            "event_types": list(self.event_types),
        }

    def matches(self, payload: Mapping[str, Any], scales: Mapping[str, Scale]) -> bool:
        """Whether an event payload (:meth:`warnsvc.model.Event.payload`) passes."""
        kind = payload.get("type")
        if kind not in EMAIL_EVENT_TYPES:
            return False
        if self.event_types and kind not in self.event_types:
            return False
        if self.sources and _get(payload, "source", "id") not in self.sources:
            return False
        if self.situations and _get(payload, "situation", "id") not in self.situations:
            return False
        return self.min_level is None or self._high_enough(payload, scales)

    def _high_enough(self, payload: Mapping[str, Any], scales: Mapping[str, Scale]) -> bool:
        scale = scales.get(str(payload.get("scale")))
        if scale is None:
            return False
        threshold = next((lv for lv in scale.levels if lv.id == self.min_level), None)
        if threshold is None:
            return False
        ranks = _ranks(scale, (payload.get("level"), payload.get("previous_level")))
        return any(rank >= threshold.rank for rank in ranks)


def _get(payload: Mapping[str, Any], key: str, field: str) -> Any:
    value = payload.get(key)
    return value.get(field) if isinstance(value, Mapping) else None


def _ranks(scale: Scale, levels: Iterable[Any]) -> list[int]:
    by_id = {lv.id: lv.rank for lv in scale.levels}
    return [
        by_id[level["id"]]
        for level in levels
        if isinstance(level, Mapping) and level.get("id") in by_id
    ]
