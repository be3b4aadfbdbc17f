"""Paths into JSON documents: ``data.alerts``, ``features[0].properties.alertlevel``.

Keys are separated by dots; list positions are numbers or bracketed (``[0]``, ``[-1]``); a key
with a dot in it is quoted (``"a.b".c``); ``""`` or ``$`` is the document itself. No I/O and no
dependencies, so the config can validate paths without importing the sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_PATH_PART = re.compile(r'\s*(?:"(?P<quoted>[^"]*)"|\[(?P<index>-?\d+)\]|(?P<key>[^.\[\]"]+))\s*')


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A parsed path: keys (str) and list positions (int)."""

    text: str
    parts: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        """Parse ``text``; ValueError for a malformed path."""
        stripped = text.strip()
        if stripped in ("", "$"):
            return cls(text, ())
        parts: list[str | int] = []
        source = stripped[2:] if stripped.startswith("$.") else stripped
        position = 0
        while position < len(source):
            match = _PATH_PART.match(source, position)
            if match is None or match.end() == position:
                raise ValueError(f"malformed path {text!r} at position {position}")
            if match["index"] is not None:
                parts.append(int(match["index"]))
            else:
                key = match["quoted"] if match["quoted"] is not None else match["key"]
                parts.append(int(key) if key.isdigit() else key)
            position = match.end()
            if position < len(source) and source[position] == ".":
                position += 1
                if position == len(source):
                    raise ValueError(f"malformed path {text!r}: ends with a dot")
        return cls(text, tuple(parts))

    def find(self, document: Any) -> tuple[bool, Any]:
        """(True, value) where the path leads, else (False, None)."""
        current = document
        for part in self.parts:
            if isinstance(part, int) and isinstance(current, list):
                if not -len(current) <= part < len(current):
                    return False, None
                current = current[part]
            elif isinstance(current, dict) and str(part) in current:
                current = current[str(part)]
            else:
                return False, None
        return True, current
