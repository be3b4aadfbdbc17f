"""The ``json`` kind: a JSON API that lists situations.

:class:`JsonRules` name, as paths, the list of items (``items``) and, inside each item, its
``id``, ``name``, ``level`` and optionally ``date``, ``summary`` and ``link``. A path is keys
separated by dots, with list positions as numbers or in brackets: ``data.alerts``,
``features``, ``properties.alertlevel``, ``sources[0].url``; ``""`` (or ``$``) is the document
itself. A key that contains a dot is written in quotes: ``"a.b".c``.

The items path must lead to a list (or an object, whose values are then the items): otherwise
the poll fails naming the path and what it found. An item without an id, or with a level outside
the mapping, is skipped and reported; dates may be ISO 8601, RFC 822 or Unix times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from warnsvc.errors import NoRiskInformationError, SourceParseError
from warnsvc.model import Observation, Scale, Status
from warnsvc.sources.base import rules_kind
from warnsvc.sources.items import (
    LevelMap,
    day_of,
    parse_when,
    require_readable,
    situation_key,
    skipped_item,
)
from warnsvc.sources.jsonpath import JsonPath

_DOCUMENT = JsonPath.parse("")
_ID, _NAME, _LEVEL, _DATE = (JsonPath.parse(key) for key in ("id", "name", "level", "date"))


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonRules:
    items: JsonPath = _DOCUMENT
    id: JsonPath = _ID
    name: JsonPath = _NAME
    level: JsonPath = _LEVEL
    date: JsonPath | None = _DATE
    summary: JsonPath | None = None
    link: JsonPath | None = None
    levels: Mapping[str, str] = field(default_factory=dict)


DEFAULT_RULES = JsonRules()
"""For ``warnsvc parse --kind json``: a top-level list of ``{id, name, level, date}``."""


def parse_json(
    body: str,
    *,
    url: str | None = None,
    content_type: str | None = None,
    scale: Scale,
    namespace: str,
    rules: JsonRules = DEFAULT_RULES,
) -> list[Observation]:
    """Every item of a JSON document as an observation (unreadable ones carry a problem)."""
    document = _load(body)
    found, items = rules.items.find(document)
    if not found:
        raise NoRiskInformationError(
            f"items path {rules.items.text!r} matched nothing ({_keys_hint(document)})"
        )
    if isinstance(items, dict):
        items = list(items.values())
    if not isinstance(items, list):
        raise NoRiskInformationError(
            f"items path {rules.items.text!r} leads to {_kind(items)}, not a list"
        )
    levels = LevelMap(scale, rules.levels)
    observations = [_observe(item, rules, levels, namespace) for item in items]
    return require_readable(observations, "JSON items")


def _load(body: str) -> Any:
    try:
        return json.loads(body.lstrip("\ufeff"), parse_constant=_refuse_constant)
    except RecursionError:
        raise SourceParseError("JSON nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise SourceParseError(f"not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _keys_hint(document: Any) -> str:
    if isinstance(document, dict):
        keys = ", ".join(sorted(map(str, document))[:10])
        return f"top-level keys: {keys}" if keys else "the document is an empty object"
    return f"the document is {_kind(document)}"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _scalar(value: Any) -> str | None:
    """A value as text: strings and numbers; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return " ".join(value.split()) or None
    if isinstance(value, int | float):
        return str(value)
    return None


def _get(item: Any, path: JsonPath | None) -> Any:
    if path is None:
        return None
    found, value = path.find(item)
    return value if found else None


def _observe(item: Any, rules: JsonRules, levels: LevelMap, namespace: str) -> Observation:
    if not isinstance(item, dict):
        return skipped_item(namespace, None, f"an item that is {_kind(item)}, not an object")
    raw_id = _scalar(_get(item, rules.id))
    if raw_id is None:
        return skipped_item(namespace, None, f"no id at {rules.id.text!r}")
    situation = situation_key(namespace, raw_id)
    if situation is None:
        return skipped_item(namespace, raw_id, "the id has no letters or digits")
    name = _scalar(_get(item, rules.name)) or raw_id
    word = _scalar(_get(item, rules.level))
    if word is None:
        problem = f"no level at {rules.level.text!r}"
        return skipped_item(namespace, raw_id, problem, name=name)
    level = levels.find(word)
    if level is None:
        return skipped_item(namespace, raw_id, levels.problem(word), name=name)
    raw_date = _get(item, rules.date)
    return Observation(
        situation=situation,
        name=name,
        level=level.id,
        status=Status.ASSESSED,
        date=day_of(parse_when(raw_date if not isinstance(raw_date, bool) else None)),
        url=_scalar(_get(item, rules.link)),
        summary=_scalar(_get(item, rules.summary)) or "",
    )


# -- the polling source ------------------------------------------------------------------------


def rules_from_settings(settings: Any) -> JsonRules:
    fields = settings.fields

    def optional(text: str | None) -> JsonPath | None:
        return JsonPath.parse(text) if text is not None else None

    return JsonRules(
        items=JsonPath.parse(settings.items),
        id=JsonPath.parse(fields.id),
        name=JsonPath.parse(fields.name),
        level=JsonPath.parse(fields.level),
        date=optional(fields.date),
        summary=optional(fields.summary),
        link=optional(fields.link),
        levels=dict(settings.levels),
    )


KIND = rules_kind(
    kind="json",
    description="a JSON API: a path to the list of items, paths to id, name, level and date",
    default_namespace="json",
    parse=parse_json,
    default_rules=DEFAULT_RULES,
    rules_from_settings=rules_from_settings,
)
